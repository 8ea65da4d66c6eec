"""Telegram Bot API sender (sync, on ``httpx.Client``): text, keyboards, photos, typing, callbacks.

Every decision (payloads, limits, error classification, retries) is in ``telegram_core``,
``telegram_payloads`` and ``http_core``; the driver (``http_drivers.SyncHttpDriver``) only sends,
sleeps and loops. ``AsyncTelegramSender`` (``telegram_async``) is its twin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.http_drivers import SyncHttpDriver
from chat_orchestrator.senders.telegram_base import BotSender
from chat_orchestrator.senders.whatsapp_core import httpx

__all__ = ["TelegramSender"]


class TelegramSender(
    BotSender[httpx.Client, Callable[[float], None]], SyncHttpDriver, MessageSender
):
    """Sends through ``POST {base_url}/bot<token>/<method>``; thread-safe (one pooled client)."""

    def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str:
        """Send ``text`` (options: see ``telegram_payloads``); returns the message id."""
        return self._run(self._api.message(chat_id, text, options))

    def send_typing(self, chat_id: str, action: str = "typing") -> None:
        """Show "typing..." (or another ``sendChatAction`` action) for about 5 seconds."""
        self._run(self._api.chat_action(chat_id, action))

    def answer_callback_query(self, callback_query_id: str, text: str | None = None) -> None:
        """Stop the button's spinner (``answerCallbackQuery``), optionally with a notice."""
        self._run(self._api.answer_callback(callback_query_id, text))

    def get_updates(
        self,
        offset: int | None = None,
        *,
        timeout: int = 30,
        allowed_updates: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """``getUpdates``: long-poll up to ``timeout`` s for updates from ``offset`` on."""
        return self._run(self._api.get_updates(offset, timeout, allowed_updates, limit))

    def set_webhook(
        self,
        url: str,
        *,
        secret_token: str | None = None,
        allowed_updates: Sequence[str] | None = None,
        drop_pending_updates: bool = False,
    ) -> None:
        """``setWebhook``: Telegram posts every update to ``url`` with the secret header."""
        self._run(self._api.set_webhook(url, secret_token, allowed_updates, drop_pending_updates))

    def delete_webhook(self, *, drop_pending_updates: bool = False) -> None:
        """``deleteWebhook``: back to ``getUpdates`` (long polling)."""
        self._run(self._api.delete_webhook(drop_pending_updates))

    def get_me(self) -> dict[str, Any]:
        """``getMe``: the bot's own user (checks the token)."""
        return self._run(self._api.get_me())
