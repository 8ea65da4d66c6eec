"""Message senders: how replies reach users (console, WhatsApp, or your own)."""

from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.console import ConsoleMessageSender

__all__ = ["ConsoleMessageSender", "MessageSender"]
