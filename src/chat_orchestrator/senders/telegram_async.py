"""Telegram Bot API sender for ``async`` code, on ``httpx.AsyncClient``.

The same requests, limits, errors and retries as ``TelegramSender``: both drive one
``http_core.HttpCall``; this one awaits the request and the sleep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.senders.http_drivers import AsyncHttpDriver
from chat_orchestrator.senders.telegram_base import BotSender
from chat_orchestrator.senders.whatsapp_core import httpx

__all__ = ["AsyncTelegramSender"]


class AsyncTelegramSender(
    BotSender[httpx.AsyncClient, Callable[[float], Awaitable[None]]],
    AsyncHttpDriver,
    AsyncMessageSender,
):
    """``TelegramSender`` for event loops: the same constructor, options and errors."""

    async def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str:
        """Send ``text`` (options: see ``telegram_payloads``); returns the message id."""
        return await self._run(self._api.message(chat_id, text, options))

    async def send_typing(self, chat_id: str, action: str = "typing") -> None:
        """Show "typing..." (or another ``sendChatAction`` action) for about 5 seconds."""
        await self._run(self._api.chat_action(chat_id, action))

    async def answer_callback_query(self, callback_query_id: str, text: str | None = None) -> None:
        """Stop the button's spinner (``answerCallbackQuery``), optionally with a notice."""
        await self._run(self._api.answer_callback(callback_query_id, text))

    async def get_updates(
        self,
        offset: int | None = None,
        *,
        timeout: int = 30,
        allowed_updates: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """``getUpdates``: long-poll up to ``timeout`` s for updates from ``offset`` on."""
        return await self._run(self._api.get_updates(offset, timeout, allowed_updates, limit))

    async def set_webhook(
        self,
        url: str,
        *,
        secret_token: str | None = None,
        allowed_updates: Sequence[str] | None = None,
        drop_pending_updates: bool = False,
    ) -> None:
        """``setWebhook``: Telegram posts every update to ``url`` with the secret header."""
        await self._run(
            self._api.set_webhook(url, secret_token, allowed_updates, drop_pending_updates)
        )

    async def delete_webhook(self, *, drop_pending_updates: bool = False) -> None:
        """``deleteWebhook``: back to ``getUpdates`` (long polling)."""
        await self._run(self._api.delete_webhook(drop_pending_updates))

    async def get_me(self) -> dict[str, Any]:
        """``getMe``: the bot's own user (checks the token)."""
        return await self._run(self._api.get_me())
