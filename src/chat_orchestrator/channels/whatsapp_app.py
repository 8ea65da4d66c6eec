"""A WSGI application that serves a bot on WhatsApp: webhook in, orchestrator turns, replies out.

* GET answers Meta's subscription check; POST verifies the signature over the raw bytes,
  parses every entry/change/message, and runs one turn per new message.
* At most once: each message id is claimed in the state manager's own store (shared across
  workers on Redis/MongoDB, across restarts on files) for ``retention`` seconds (7 days by
  default: Meta redelivers for up to 7 days). The claim is taken before the turn, so a worker
  that crashes mid-turn drops that message rather than risk running it twice.
* Messages of one POST run in timestamp order (stable, so a chat's messages keep their order).
* A failing step is logged and kept in ``failures``; the POST is still answered 200, since
  anything else makes Meta redeliver for days. Only when the message-id store itself is
  unreachable is the answer 503, before any of those messages ran, so Meta retries later.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from chat_orchestrator.channels.whatsapp_events import InboundMessage, StatusEvent, WebhookBatch
from chat_orchestrator.channels.whatsapp_webhook import WhatsAppWebhook
from chat_orchestrator.errors import StateManagerError, WebhookError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.async_base import require_sync

__all__ = ["TurnFailure", "WhatsAppBot", "inbound_message"]

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
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method == "GET":
                params = dict(parse_qsl(environ.get("QUERY_STRING", "")))
                return _reply(start_response, 200, self.webhook.verify_subscription(params))
            if method == "POST":
                body = self._read_body(environ)
                signature = environ.get("HTTP_X_HUB_SIGNATURE_256")
                return _reply(start_response, *self.handle(self.webhook.parse(body, signature)))
            return _reply(start_response, 405, "method not allowed")
        except WebhookError as exc:
            log.warning("webhook request refused (%d): %s", exc.status, exc)
            return _reply(start_response, exc.status, str(exc))

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        limit = self.webhook.max_body_bytes
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise WebhookError("bad Content-Length", status=400) from None
        if declared > limit:
            raise WebhookError(f"body over {limit} bytes", status=413)
        stream = environ["wsgi.input"]
        body: bytes = stream.read(declared) if declared else b""
        return body

    # -- processing -------------------------------------------------------------------------
    def handle(self, batch: WebhookBatch) -> tuple[int, str]:
        """Run the batch's new messages and report its statuses; returns (HTTP status, text)."""
        for status in batch.statuses:
            if self.on_status is not None and self._ours(status.phone_number_id):
                try:
                    self.on_status(status)
                except Exception:
                    log.exception("on_status failed for %s", status.message_id)
        messages = sorted(
            (m for m in batch.messages if self._ours(m.phone_number_id)), key=lambda m: m.timestamp
        )
        manager = require_sync(self.orchestrator.state_manager)
        for message in messages:
            try:
                fresh = manager.claim(f"wa:{message.phone_number_id}:{message.id}", self.retention)
            except StateManagerError as exc:
                log.error("cannot record message ids (%s); asking Meta to retry", exc)
                return 503, "message store unavailable"
            if fresh:
                self._run(message)
        return 200, "OK"

    def _ours(self, phone_number_id: str | None) -> bool:
        return self.phone_number_id is None or phone_number_id == self.phone_number_id

    def _run(self, message: InboundMessage) -> None:
        token = _current.set(message)
        try:
            self.orchestrator.handle_message(message.chat_id, message.user_input)
            with self._lock:
                self.turns += 1
        except Exception as exc:
            log.exception("turn failed for WhatsApp message %s", message.id)
            self.failures.append(
                TurnFailure(message.id, message.chat_id, f"{type(exc).__name__}: {exc}")
            )
        finally:
            _current.reset(token)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


def _reply(start_response: StartResponse, status: int, text: str) -> list[bytes]:
    data = text.encode("utf-8")
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]
