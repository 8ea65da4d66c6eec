"""Message senders: how replies reach users (console, WhatsApp, Telegram, or your own).

``WhatsAppSender``, ``TelegramSender`` and their async twins (extra ``whatsapp``: httpx) are
imported on first use, so importing this package never needs ``httpx``; without it that first
use raises MissingDependencyError.
"""

from typing import TYPE_CHECKING

from chat_orchestrator._lazy import lazy_attributes
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.senders.console import ConsoleMessageSender

if TYPE_CHECKING:
    from chat_orchestrator.senders.telegram import TelegramSender as TelegramSender
    from chat_orchestrator.senders.telegram_async import (
        AsyncTelegramSender as AsyncTelegramSender,
    )
    from chat_orchestrator.senders.whatsapp import WhatsAppSender as WhatsAppSender
    from chat_orchestrator.senders.whatsapp_async import (
        AsyncWhatsAppSender as AsyncWhatsAppSender,
    )

__all__ = ["AsyncMessageSender", "ConsoleMessageSender", "MessageSender"]

#: Names whose module needs an optional driver, by module.
OPTIONAL = {
    "WhatsAppSender": "chat_orchestrator.senders.whatsapp",
    "AsyncWhatsAppSender": "chat_orchestrator.senders.whatsapp_async",
    "TelegramSender": "chat_orchestrator.senders.telegram",
    "AsyncTelegramSender": "chat_orchestrator.senders.telegram_async",
}
__getattr__, __dir__ = lazy_attributes(__name__, OPTIONAL, __all__)
