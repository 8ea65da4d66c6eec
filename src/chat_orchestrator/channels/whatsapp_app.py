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
* Request handling (methods, lengths, limits) lives in ``webhook_http``, free of WSGI.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from chat_orchestrator.channels.webhook_http import HttpReply, admit, read_body, reply_for_error
from chat_orchestrator.channels.whatsapp_events import InboundMessage, StatusEvent, WebhookBatch
from chat_orchestrator.channels.whatsapp_webhook import WhatsAppWebhook
from chat_orchestrator.errors import (
    ChatOrchestratorError,
    LockTimeoutError,
    StateManagerError,
    StateManagerUnavailableError,
    WebhookError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator

__all__ = ["TurnFailure", "WhatsAppBot", "claim_key", "inbound_message"]

log = logging.getLogger(__name__)
SEVEN_DAYS = 7 * 24 * 3600.0
_current: contextvars.ContextVar[InboundMessage | None] = contextvars.ContextVar(
    "chat_orchestrator_whatsapp_inbound", default=None
)


def inbound_message() -> InboundMessage | None:
    """The WhatsApp message being handled, inside a step (for a reply's title, media, ...)."""
    return _current.get()


@dataclass(frozen=True, slots=True)
class TurnFailure:
    message_id: str
    chat_id: str
    error: str


StartResponse = Callable[[str, list[tuple[str, str]]], Any]
#: Not the step's fault: the message must run again when Meta redelivers it.
_RETRY_LATER = (LockTimeoutError, StateManagerUnavailableError)
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


class _RetryLaterError(Exception):
    """Stop the batch and answer 503: Meta redelivers it, and unclaimed messages run then."""


class WhatsAppBot:
    """``WhatsAppBot(orchestrator, webhook)`` is a WSGI app; mount it at your callback URL.

    ``orchestrator`` is a ChatOrchestrator or anything with one (a Conversation instance).
    ``phone_number_id`` keeps only messages for that business number (several numbers can
    share a WABA). ``on_status`` is called with every StatusEvent (sent, delivered, read,
    failed with its errors).
    """

    def __init__(
        self,
        orchestrator: ChatOrchestrator | Any,
        webhook: WhatsAppWebhook,
        *,
        retention: float = SEVEN_DAYS,
        phone_number_id: str | None = None,
        on_status: Callable[[StatusEvent], None] | None = None,
        keep_failures: int = 1000,
    ) -> None:
        self.orchestrator: ChatOrchestrator = (
            orchestrator
            if isinstance(orchestrator, ChatOrchestrator)
            else orchestrator.orchestrator
        )
        self.webhook = webhook
        self.retention = retention
        self.phone_number_id = phone_number_id
        self.on_status = on_status
        self.failures: deque[TurnFailure] = deque(maxlen=keep_failures)
        self._lock = threading.Lock()
        self.turns = 0

    # -- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Thin WSGI glue: every decision is in respond() and webhook_http, shared with ASGI.
        headers = {
            "content-length": environ.get("CONTENT_LENGTH", ""),
            "transfer-encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
            "x-hub-signature-256": environ.get("HTTP_X_HUB_SIGNATURE_256", ""),
        }
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            length = admit(method, headers, self.webhook.max_body_bytes)
            body = read_body(environ["wsgi.input"].read, length) if length else b""
        except WebhookError as exc:
            reply = self._refused(exc)
        else:
            reply = self.respond(method, str(environ.get("QUERY_STRING", "")), headers, body)
        start_response(f"{reply.status} {reply.reason}", reply.headers())
        return [reply.body]

    def respond(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        """Answer one admitted request (see ``webhook_http.admit``); headers in lower case."""
        try:
            if method == "GET":
                params = dict(parse_qsl(query))
                return HttpReply(200, self.webhook.verify_subscription(params))
            signature = headers.get("x-hub-signature-256") or None
            return HttpReply(*self.handle(self.webhook.parse(body, signature)))
        except WebhookError as exc:
            return self._refused(exc)

    @staticmethod
    def _refused(exc: WebhookError) -> HttpReply:
        log.warning("webhook request refused (%d): %s", exc.status, exc)
        return reply_for_error(exc)

    # -- processing -------------------------------------------------------------------------
    def handle(self, batch: WebhookBatch) -> tuple[int, str]:
        """Run the batch's new messages and report its statuses; returns (HTTP status, text)."""
        for skipped in batch.skipped:
            log.warning(
                "skipped a malformed %s (%s): %s", skipped.kind, skipped.message_id, skipped.reason
            )
            self.failures.append(
                TurnFailure(
                    skipped.message_id or "", "", f"malformed {skipped.kind}: {skipped.reason}"
                )
            )
        try:
            for status in batch.statuses:
                if self.on_status is not None and self._ours(status.phone_number_id):
                    key = claim_key(status.phone_number_id, status.message_id, status.status)
                    if self._claim(key, status.message_id):
                        self._report(status)
            messages = sorted(
                (m for m in batch.messages if self._ours(m.phone_number_id)),
                key=lambda m: m.timestamp,
            )
            for message in messages:
                key = claim_key(message.phone_number_id, message.id)
                if self._claim(key, message.id, message.chat_id):
                    self._run(message, key)
        except _RetryLaterError:
            return 503, "message store unavailable, retry later"
        return 200, "OK"

    def _claim(self, key: str, message_id: str, chat_id: str = "") -> bool:
        try:
            return self.orchestrator.state_manager.claim(key, self.retention)
        except StateManagerError as exc:
            log.error("cannot record message ids (%s); asking Meta to retry", exc)
            raise _RetryLaterError from exc
        except (ChatOrchestratorError, ValueError) as exc:
            # The store refuses the key itself (a custom manager's rule): retrying cannot help.
            log.warning(
                "skipped WhatsApp event %s: its claim key was refused (%s)", message_id, exc
            )
            self.failures.append(TurnFailure(message_id, chat_id, f"claim key refused: {exc}"))
            return False

    def _report(self, status: StatusEvent) -> None:
        assert self.on_status is not None
        try:
            self.on_status(status)
        except Exception:
            log.exception("on_status failed for %s", status.message_id)

    def _ours(self, phone_number_id: str | None) -> bool:
        return self.phone_number_id is None or phone_number_id == self.phone_number_id

    def _run(self, message: InboundMessage, key: str) -> None:
        token = _current.set(message)
        try:
            self.orchestrator.handle_message(message.chat_id, message.user_input)
            with self._lock:
                self.turns += 1
        except _RETRY_LATER as exc:
            # Not the step's fault: give the claim back so Meta's redelivery runs the message.
            log.warning(
                "turn for WhatsApp message %s deferred (%s); asking Meta to retry", message.id, exc
            )
            try:
                self.orchestrator.state_manager.release_claim(key)
            except StateManagerError as release_failed:
                log.error("could not give back the claim of %s: %s", message.id, release_failed)
            raise _RetryLaterError from exc
        except Exception as exc:
            log.exception("turn failed for WhatsApp message %s", message.id)
            self.failures.append(
                TurnFailure(message.id, message.chat_id, f"{type(exc).__name__}: {exc}")
            )
        finally:
            _current.reset(token)
