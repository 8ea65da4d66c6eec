"""Inbound channels: parsing and verifying what users send (WhatsApp webhooks)."""

from chat_orchestrator.channels.whatsapp_app import TurnFailure, WhatsAppBot, inbound_message
from chat_orchestrator.channels.whatsapp_events import (
    InboundMessage,
    Location,
    Media,
    ReplyChoice,
    StatusEvent,
    WebhookBatch,
    WebhookErrorDetail,
    parse_payload,
)
from chat_orchestrator.channels.whatsapp_webhook import WhatsAppWebhook

__all__ = [
    "InboundMessage",
    "Location",
    "Media",
    "ReplyChoice",
    "StatusEvent",
    "TurnFailure",
    "WebhookBatch",
    "WebhookErrorDetail",
    "WhatsAppBot",
    "WhatsAppWebhook",
    "inbound_message",
    "parse_payload",
]
