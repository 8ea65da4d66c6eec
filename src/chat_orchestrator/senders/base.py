"""The message sender contracts: a user's sender needs only ``send_message`` (sync or async)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = ["AsyncMessageSender", "MessageSender", "Pacing"]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How fast a channel lets one sender send; the outbox's delivery loop enforces it.

    ``per_chat_interval``: seconds between two messages to the same chat (0: no limit).
    ``per_second``: messages per second across all chats of this sender (account, bot).
    """

    per_chat_interval: float
    per_second: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_chat_interval) and self.per_chat_interval >= 0):
            raise ValueError("per_chat_interval must be a finite number of seconds >= 0")
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise ValueError("per_second must be a finite number > 0")


class MessageSender(ABC):
    """Sends a bot's reply to a chat on some channel.

    ``options`` carries channel features such as reply buttons (``{"buttons": [...]}``);
    a sender ignores options it cannot show. The return value is the channel's message id,
    when it has one.
    """

    @abstractmethod
    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        """Send ``text`` to ``chat_id``; raise a SenderError if it cannot be sent."""


class AsyncMessageSender(ABC):
    """:class:`MessageSender` for event loops: ``send_message`` is a coroutine.

    The same contract: ``options`` as for MessageSender, the channel's message id returned,
    a SenderError raised when the message cannot be sent.
    """

    @abstractmethod
    async def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        """Send ``text`` to ``chat_id``; raise a SenderError if it cannot be sent."""
