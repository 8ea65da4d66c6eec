"""The message sender contracts: a user's sender needs only ``send_message`` (sync or async)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["AsyncMessageSender", "MessageSender"]


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
