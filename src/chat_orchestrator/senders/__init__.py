"""Message senders: how replies reach users (console, WhatsApp, or your own)."""

from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.senders.console import ConsoleMessageSender

__all__ = ["AsyncMessageSender", "ConsoleMessageSender", "MessageSender"]
