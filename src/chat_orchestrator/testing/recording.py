"""A sender that records what it was asked to send, for tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from chat_orchestrator.senders.base import MessageSender

__all__ = ["RecordingSender", "SentMessage"]


@dataclass(frozen=True, slots=True)
class SentMessage:
    chat_id: str
    text: str
    options: dict[str, Any] | None = field(default=None)


class RecordingSender(MessageSender):
    """Keeps every message in ``sent`` (thread-safe); returns ids ``"rec-1"``, ``"rec-2"``...

    >>> sender = RecordingSender()
    >>> sender.send_message("u1", "hi")
    'rec-1'
    >>> sender.texts("u1")
    ['hi']
    """

    def __init__(self) -> None:
        self.sent: list[SentMessage] = []
        self._lock = threading.Lock()

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        with self._lock:
            self.sent.append(SentMessage(chat_id, text, options))
            return f"rec-{len(self.sent)}"

    def texts(self, chat_id: str | None = None) -> list[str]:
        """The texts sent, to one chat or to all, in order."""
        with self._lock:
            return [m.text for m in self.sent if chat_id is None or m.chat_id == chat_id]

    def clear(self) -> None:
        with self._lock:
            self.sent.clear()
