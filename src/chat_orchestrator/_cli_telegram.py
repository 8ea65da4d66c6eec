"""``chat-orchestrator telegram poll TARGET`` and ``telegram webhook set URL | delete``.

``poll`` loads a TelegramBot (``file.py:name`` or ``module:name``, as ``run`` does) and long-polls
``getUpdates`` with its sender until Ctrl-C (the webhook must be deleted first: Telegram
refuses ``getUpdates`` while one is set). ``webhook`` uses ``$TELEGRAM_BOT_TOKEN`` and, for
``set``, ``$TELEGRAM_WEBHOOK_SECRET`` (the secret the bot checks); neither is ever printed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_telegram_command"]


def add_telegram_command(commands: Any) -> None:
    telegram = commands.add_parser("telegram", help="serve a bot on Telegram by polling; webhooks")
    sub = telegram.add_subparsers(dest="telegram_command", required=True)
    poll = sub.add_parser("poll", help="long-poll getUpdates for a TelegramBot")
    poll.add_argument("target", help="file.py:name or module:name naming a TelegramBot")
    poll.add_argument("--timeout", type=int, default=30, help="long-poll seconds (default 30)")
    poll.set_defaults(handler=_poll)
    webhook = sub.add_parser("webhook", help="set or delete the bot's webhook")
    actions = webhook.add_subparsers(dest="webhook_command", required=True)
    set_ = actions.add_parser("set", help="setWebhook URL (secret from $TELEGRAM_WEBHOOK_SECRET)")
    set_.add_argument("url")
    set_.add_argument("--drop-pending", action="store_true", help="drop waiting updates")
    set_.set_defaults(handler=_set_webhook)
    delete = actions.add_parser("delete", help="deleteWebhook (back to polling)")
    delete.add_argument("--drop-pending", action="store_true", help="drop waiting updates")
    delete.set_defaults(handler=_delete_webhook)


def _poll(args: argparse.Namespace) -> int:
    from chat_orchestrator.channels.telegram_app import TelegramBot
    from chat_orchestrator.channels.telegram_poll import TelegramPoller
    from chat_orchestrator.cli import TargetError, load_target

    bot = load_target(args.target)
    if not isinstance(bot, TelegramBot):
        raise TargetError(f"{args.target} is a {type(bot).__name__}, not a TelegramBot")
    if not hasattr(bot.sender, "get_updates") or not callable(bot.sender.get_updates):
        raise TargetError(f"{args.target}'s sender cannot poll (a TelegramSender is needed)")
    print(f"polling Telegram for bot {bot.bot_id} (Ctrl-C stops)", flush=True)
    TelegramPoller(bot, bot.sender, timeout=args.timeout).run()
    return 0


def _sender() -> Any:
    from chat_orchestrator.cli import TargetError
    from chat_orchestrator.senders.telegram import TelegramSender

    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        raise TargetError("set TELEGRAM_BOT_TOKEN to the token @BotFather gave you")
    try:
        return TelegramSender(
            token, base_url=os.environ.get("TELEGRAM_API_BASE") or "https://api.telegram.org"
        )
    except ValueError as exc:
        raise TargetError(str(exc)) from None


def _set_webhook(args: argparse.Namespace) -> int:
    from chat_orchestrator.channels.telegram_poll import DEFAULT_ALLOWED_UPDATES
    from chat_orchestrator.cli import TargetError

    secret = os.environ.get("TELEGRAM_WEBHOOK_SECRET", "").strip()
    if not secret:
        raise TargetError("set TELEGRAM_WEBHOOK_SECRET (the secret the bot checks)")
    with _sender() as sender:
        sender.set_webhook(
            args.url,
            secret_token=secret,
            allowed_updates=DEFAULT_ALLOWED_UPDATES,
            drop_pending_updates=args.drop_pending,
        )
    print(f"webhook set to {args.url}")
    return 0


def _delete_webhook(args: argparse.Namespace) -> int:
    with _sender() as sender:
        sender.delete_webhook(drop_pending_updates=args.drop_pending)
    print("webhook deleted")
    return 0
