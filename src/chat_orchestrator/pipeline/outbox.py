"""The outbox: a step's replies, stored with its turn and delivered after it.

In a worker, a step's sender is an :class:`OutboxSender`: ``send_message`` records the reply
and returns None (no channel message id exists yet). The worker stores the recorded replies
in the same write as the turn and delivers them afterwards, in order per chat, through the
real sender. The decisions about a failed delivery (retry when, give up when) are here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from chat_orchestrator.errors import PipelineError, SenderError
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender

__all__ = ["AsyncOutboxSender", "Delivery", "OutboxSender", "RateLimiter", "classify"]

#: An outbound message's options must stay small and JSON (they are stored with the turn).
MAX_OPTIONS_BYTES = 64 * 1024


def _checked(chat_id: object, text: object, options: object) -> tuple[str, str, Any]:
    if type(chat_id) is not str or type(text) is not str:
        raise PipelineError("send_message takes a str chat id and a str text")
    if options is not None:
        if not isinstance(options, dict):
            raise PipelineError(f"options must be a dict or None, not {type(options).__name__}")
        try:
            encoded = json.dumps(options, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PipelineError(f"options cannot be stored with the turn: {exc}") from exc
        if len(encoded) > MAX_OPTIONS_BYTES:
            raise PipelineError(f"options are larger than {MAX_OPTIONS_BYTES} bytes")
        options = json.loads(encoded)  # stored as decoded: a later mutation changes nothing
    return chat_id, text, options


class OutboxSender(MessageSender):
    """Records a step's replies for the turn's commit (what a worker hands a plain step)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any] | None]] = []

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        self.sent.append(_checked(chat_id, text, options))
        return None


class AsyncOutboxSender(AsyncMessageSender):
    """:class:`OutboxSender` for ``async def`` steps, writing into the same list."""

    def __init__(self, outbox: OutboxSender) -> None:
        self.outbox = outbox

    async def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        self.outbox.sent.append(_checked(chat_id, text, options))
        return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a failed send means: give up (permanent) or retry after ``delay`` seconds."""

    permanent: bool
    delay: float
    error: str


def classify(exc: BaseException, tries: int, backoff: float, max_backoff: float) -> Delivery:
    """One place decides what a sender's failure means for the outbox.

    A SenderError says what it is (``permanent``, ``retry_after``: set by each channel's
    classification, e.g. WhatsApp 131026 is permanent, 131056 asks for a pause); anything
    else (a bug, a dropped connection) is retried with exponential backoff, never dropped.
    """
    error = f"{type(exc).__name__}: {exc}"
    permanent = bool(getattr(exc, "permanent", False)) and isinstance(exc, SenderError)
    retry_after = getattr(exc, "retry_after", None)
    delay = min(max_backoff, backoff * (2 ** max(0, tries - 1)))
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        delay = max(delay, min(float(retry_after), 3600.0))
    return Delivery(permanent, delay, error)


class RateLimiter:
    """Messages per second for one worker process (a token bucket shared by its threads)."""

    def __init__(self, per_second: float | None) -> None:
        if per_second is not None and (
            isinstance(per_second, bool)
            or not isinstance(per_second, int | float)
            or not per_second > 0
        ):
            raise ValueError(f"rate must be None or messages per second > 0, not {per_second!r}")
        self.per_second = per_second
        self._lock = threading.Lock()
        self._next = 0.0

    def reserve(self) -> float:
        """Reserve one send; returns how long to wait before making it."""
        if self.per_second is None:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 1.0 / self.per_second
            return start - now
