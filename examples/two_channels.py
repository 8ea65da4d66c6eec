"""One flow, two channels: the same steps served on WhatsApp and on Telegram, unchanged.

The flow asks "Coffee or tea?" with two buttons and answers the choice. On WhatsApp the
buttons are reply buttons, on Telegram an inline keyboard; either way the step receives the
option id (``coffee`` or ``tea``), and chat ids never collide in one store (WhatsApp's are
the user's digits, Telegram's ``tg:<chat id>``).

Environment (see ``examples/whatsapp_bot.py`` for WhatsApp's variables):
  TELEGRAM_BOT_TOKEN        the token from @BotFather                      required (Telegram)
  TELEGRAM_WEBHOOK_SECRET   the secret given to setWebhook (webhook mode)
  TELEGRAM_API_BASE         Bot API base URL (default https://api.telegram.org)
  CHAT_DB                   the SQLite database file (default: chats.db)

Polling (development, no public URL)::

    TELEGRAM_BOT_TOKEN=... chat-orchestrator telegram poll examples/two_channels.py:telegram_bot
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.channels.telegram_app import TelegramBot
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.telegram import TelegramSender
from chat_orchestrator.senders.telegram_payloads import StoredCallbackIds
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

CHOICES = [{"id": "coffee", "title": "Coffee"}, {"id": "tea", "title": "Tea"}]


def menu_orchestrator(state_manager: StateManager, sender: Any) -> ChatOrchestrator:
    """The flow: written once, knows nothing of the channel."""
    orchestrator = ChatOrchestrator(state_manager, sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, "Coffee or tea?", {"buttons": CHOICES})
        return "choose", {}

    @orchestrator.register_step("choose")
    def choose(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if user_input not in ("coffee", "tea"):
            sender.send_message(chat_id, "Please pick one:", {"buttons": CHOICES})
            return "choose", {}
        sender.send_message(chat_id, f"One {user_input} coming up!")
        return "start", {}

    return orchestrator


def telegram_bot_from(
    token: str,
    store: StateManager,
    *,
    secret_token: str | None = None,
    base_url: str = "https://api.telegram.org",
) -> TelegramBot:
    sender = TelegramSender(token, base_url=base_url, callback_ids=StoredCallbackIds(store))
    return TelegramBot(menu_orchestrator(store, sender), secret_token=secret_token)


def whatsapp_bot_from(
    token: str,
    phone_number_id: str,
    verify_token: str,
    app_secret: str,
    store: StateManager,
    *,
    base_url: str = "https://graph.facebook.com",
) -> WhatsAppBot:
    sender = WhatsAppSender(token, phone_number_id, base_url=base_url)
    webhook = WhatsAppWebhook(verify_token, app_secret)
    return WhatsAppBot(menu_orchestrator(store, sender), webhook, phone_number_id=phone_number_id)


def __getattr__(name: str) -> Any:
    # ``telegram_bot`` is built on first use, from the environment (the CLI's target).
    if name == "telegram_bot":
        token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
        if not token:
            raise AttributeError("set TELEGRAM_BOT_TOKEN to serve telegram_bot")
        return telegram_bot_from(
            token,
            SQLiteStateManager(os.environ.get("CHAT_DB") or "chats.db"),
            secret_token=os.environ.get("TELEGRAM_WEBHOOK_SECRET") or None,
            base_url=os.environ.get("TELEGRAM_API_BASE") or "https://api.telegram.org",
        )
    raise AttributeError(name)
