"""A WSGI application that serves a bot on WhatsApp: webhook in, orchestrator turns, replies out.

* GET answers Meta's subscription check; POST verifies the signature over the raw bytes,
  parses every entry/change/message, and runs one turn per new message.
* At most once: each message id is claimed in the state manager's own store (shared across
  workers on Redis/MongoDB, across restarts on files) for ``retention`` seconds (7 days by
  default: Meta redelivers for up to 7 days). The claim is taken before the turn, so a worker
  that crashes mid-turn drops that message rather than risk running it twice.
* Messages of one POST run in timestamp order (stable, so a chat's messages keep their order).
* A failing step is logged and kept in ``failures``; the POST is still answered 200, since
  anything else makes Meta redeliver for days. So is a malformed message inside a good batch
  (skipped, logged, kept in ``failures``); the good messages beside it still run.
* A failure that is not the step's fault (the chat stayed locked, the store went away) gives
  the message's claim back and answers 503, so Meta's redelivery runs it; the batch's later
  messages are left unclaimed too, so a chat's messages keep their order. The same 503 when
  the message-id store itself is unreachable.
* A status (message id + status) reaches ``on_status`` once, however often Meta repeats it.
* Request handling (methods, lengths, limits) lives in ``webhook_http``, free of WSGI; the
  batch's decisions are one sans-I/O operation driven by WSGI and by ``bot.asgi``
  (``whatsapp_asgi``) on an event loop. What the Telegram bot does alike (claims, turns, the
  drivers, the WSGI glue) is theirs in common, ``_bot.WebhookBot``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from chat_orchestrator._io import Op, run_async, run_sync
from chat_orchestrator.channels._bot import (
    SEVEN_DAYS,
    TurnFailure,
    WebhookBot,
    _Turn,
)
from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.webhook_http import HttpReply
from chat_orchestrator.channels.whatsapp_events import (
    InboundMessage,
    StatusEvent,
    WebhookBatch,
    parse_message,
)
from chat_orchestrator.channels.whatsapp_webhook import WhatsAppWebhook
from chat_orchestrator.errors import ChatOrchestratorError, WebhookError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.scope import current_event

__all__ = [
    "CHANNEL",
    "TurnFailure",
    "WhatsAppBot",
    "channel_event",
    "claim_key",
    "inbound_message",
    "to_event",
]

log = logging.getLogger(__name__)
#: ``Event.channel`` of WhatsApp messages.
CHANNEL = "whatsapp"
_current: contextvars.ContextVar[InboundMessage | None] = contextvars.ContextVar(
    "chat_orchestrator_whatsapp_inbound", default=None
)


def inbound_message() -> InboundMessage | None:
    """The WhatsApp message being handled, inside a step (for a reply's title, media, ...).

    In queue mode the worker rebuilds it from the stored event.
    """
    message = _current.get()
    if message is not None:
        return message
    event = current_event()
    if event is None or event.channel != CHANNEL or not isinstance(event.data.get("raw"), dict):
        return None
    data = event.data
    names = {data.get("wa_id") or "": data["contact_name"]} if data.get("contact_name") else {}
    return parse_message(data["raw"], data.get("phone_number_id"), names)


def to_event(message: InboundMessage) -> Event:
    """The inbox event of a WhatsApp message: its :func:`channel_event`, plus the raw message
    (so ``inbound_message()`` works in a worker as in direct mode)."""
    return Event.from_channel(channel_event(message), raw=message.raw, wa_id=message.wa_id)


_DECIMAL = re.compile(r"[0-9]+")


def claim_key(phone_number_id: str | None, message_id: str, status: str | None = None) -> str:
    """The once-only key of a message (or of a status report), unambiguous for any ids.

    Meta's phone number ids are decimal, so ``wa:<phone>:<message>`` cannot be split two ways
    and stays the key used before (claims taken by an older release still count). Anything
    else (a missing id, a colon, a status) is JSON-encoded, which starts with ``[`` and so never
    meets the decimal form.
    """
    if status is None and phone_number_id is not None and _DECIMAL.fullmatch(phone_number_id):
        return f"wa:{phone_number_id}:{message_id}"
    parts = (
        [phone_number_id, message_id] if status is None else [phone_number_id, message_id, status]
    )
    # ensure_ascii=False: ids are valid Unicode (parse_payload checks), and escaping would let a
    # key grow to six times its ids' length.
    return "wa:" + json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


#: WhatsApp kinds that are a tapped choice: the flow sees them as every channel's "button".
_CHOICES = frozenset({"button_reply", "list_reply", "template_button"})


def channel_event(message: InboundMessage) -> ChannelEvent:
    """The generic event of a WhatsApp message: the chat id stays the raw ``wa_id`` digits (or
    the BSUID) and the key ``claim_key(phone_number_id, id)``, so stores written before keep
    their chats and their claims. A reply button, list row or template button is ``button``
    with the option id as ``user_input``, as on every channel."""
    data: dict[str, Any] = {
        "message_id": message.id,
        "phone_number_id": message.phone_number_id,
        "whatsapp_kind": message.kind,
        "timestamp": message.timestamp,
    }
    if message.contact_name is not None:
        data["contact_name"] = message.contact_name
    if message.reply is not None:
        data["title"] = message.reply.title
    if message.media is not None:
        data["media_id"] = message.media.id
    if message.location is not None:
        data["latitude"] = message.location.latitude
        data["longitude"] = message.location.longitude
    return ChannelEvent(
        channel=CHANNEL,
        chat_id=message.chat_id,
        key=claim_key(message.phone_number_id, message.id),
        user_input=message.user_input,
        kind="button" if message.kind in _CHOICES else message.kind,
        data=data,
    )


#: The 503 of a batch that must run again when Meta redelivers it.
_RETRY_REPLY = (503, "message store unavailable, retry later")


class WhatsAppBot(WebhookBot):
    """``WhatsAppBot(orchestrator, webhook)`` is a WSGI app, and ``bot.asgi`` its ASGI twin.

    ``orchestrator`` is a ChatOrchestrator or anything with one (a Conversation instance).
    ``phone_number_id`` keeps only messages for that business number (several numbers can
    share a WABA). ``on_status`` is called with every StatusEvent (sent, delivered, read,
    failed with its errors); it may be an ``async def`` (awaited on the ASGI path).
    """

    _channel, _unit, _redeliverer = "WhatsApp", "message", "Meta"
    _auth_header = "x-hub-signature-256"
    _log = log

    def __init__(
        self,
        orchestrator: ChatOrchestrator | Any,
        webhook: WhatsAppWebhook,
        *,
        retention: float = SEVEN_DAYS,
        phone_number_id: str | None = None,
        on_status: Callable[[StatusEvent], object] | None = None,
        keep_failures: int = 1000,
        mode: str = "direct",
    ) -> None:
        self.webhook = webhook
        self.phone_number_id = phone_number_id
        self.on_status = on_status
        super().__init__(orchestrator, retention=retention, keep_failures=keep_failures, mode=mode)

    @property
    def max_body_bytes(self) -> int:
        return self.webhook.max_body_bytes

    def __repr__(self) -> str:
        return f"WhatsAppBot({self.webhook!r})"

    # -- processing -------------------------------------------------------------------------
    def handle(self, batch: WebhookBatch) -> tuple[int, str]:
        """Run the batch's new messages and report its statuses; returns (HTTP status, text)."""
        return run_sync(self._batch_op(batch), self._execute)

    async def handle_async(self, batch: WebhookBatch) -> tuple[int, str]:
        """``handle`` on the running event loop: turns through ``handle_message_async``."""
        return await run_async(self._batch_op(batch), self._execute_async)

    def _request_op(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Op[HttpReply]:
        try:
            if method == "GET":
                params = dict(parse_qsl(query))
                return HttpReply(200, self.webhook.verify_subscription(params))
            signature = headers.get("x-hub-signature-256") or None
            batch = self.webhook.parse(body, signature)
        except WebhookError as exc:
            return self._refused(exc)
        return HttpReply(*(yield from self._batch_op(batch)))

    # Every decision of a POST (order, keys, what a failure means, when to stop) is here, once;
    # WSGI, ASGI and ``handle`` only drive it.
    def _batch_op(self, batch: WebhookBatch) -> Op[tuple[int, str]]:
        for skipped in batch.skipped:
            log.warning(
                "skipped a malformed %s (%s): %s", skipped.kind, skipped.message_id, skipped.reason
            )
            self.failures.append(
                TurnFailure(
                    skipped.message_id or "", "", f"malformed {skipped.kind}: {skipped.reason}"
                )
            )
        for status in batch.statuses:
            if self.on_status is not None and self._ours(status.phone_number_id):
                key = claim_key(status.phone_number_id, status.message_id, status.status)
                claimed = yield from self._claim_op(key, status.message_id)
                if claimed == "retry":
                    return _RETRY_REPLY
                if claimed == "run":
                    yield from self._callback_op(
                        self.on_status, status, "on_status", status.message_id
                    )
        messages = sorted(
            (m for m in batch.messages if self._ours(m.phone_number_id)),
            key=lambda m: m.timestamp,
        )
        if self._inbox is not None:
            return (yield from self._enqueue_op(messages))
        for message in messages:
            key = claim_key(message.phone_number_id, message.id)
            claimed = yield from self._claim_op(key, message.id, message.chat_id)
            if claimed == "retry":
                return _RETRY_REPLY
            if claimed != "run":
                continue  # a duplicate, or a key the store refused (kept in failures)
            turn = _Turn(message.chat_id, message.user_input, message)
            if not (yield from self._turn_op(turn, key, message.id)):
                # The batch's later messages stay unclaimed: a chat's messages keep their order.
                return _RETRY_REPLY
        return 200, "OK"

    def _enqueue_op(self, messages: list[InboundMessage]) -> Op[tuple[int, str]]:
        """Queue mode: store each chat's messages, in order; 503 if the store cannot.

        No claim: the inbox itself keeps each key once (a redelivery adds nothing)."""
        by_chat: dict[str, list[Event]] = {}
        for message in messages:
            try:
                event = to_event(message)
                event.to_json()  # refused here, alone, rather than failing its chat's batch
            except (ChatOrchestratorError, ValueError) as exc:
                log.warning("skipped WhatsApp message %s: %s", message.id, exc)
                self.failures.append(TurnFailure(message.id, message.chat_id, str(exc)))
                continue
            by_chat.setdefault(event.chat_id, []).append(event)
        for events in by_chat.values():
            added = yield from self._store_op(events)
            if added is None:
                return _RETRY_REPLY
            self._count(sum(1 for new in added if new))
        return 200, "OK"

    def _ours(self, phone_number_id: str | None) -> bool:
        return self.phone_number_id is None or phone_number_id == self.phone_number_id

    def _turn_scope(self, turn: _Turn) -> contextlib.AbstractContextManager[object]:
        assert isinstance(turn.inbound, InboundMessage)
        return _handling(turn.inbound)


@contextlib.contextmanager
def _handling(message: InboundMessage) -> Iterator[None]:
    """``inbound_message()`` is ``message`` for the turn (set in the driver's own context)."""
    token = _current.set(message)
    try:
        yield
    finally:
        _current.reset(token)
