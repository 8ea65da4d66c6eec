"""Inbound channels: parsing and verifying what users send (WhatsApp and Telegram webhooks)."""

from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.whatsapp_app import (
    TurnFailure,
    WhatsAppBot,
    channel_event,
    claim_key,
    inbound_message,
)
from chat_orchestrator.channels.whatsapp_asgi import WhatsAppASGI
from chat_orchestrator.channels.whatsapp_events import (
    InboundMessage,
    Location,
    Media,
    ReplyChoice,
    SkippedEvent,
    StatusEvent,
    WebhookBatch,
    WebhookErrorDetail,
    parse_payload,
)
from chat_orchestrator.channels.whatsapp_webhook import WhatsAppWebhook

__all__ = [
    "ChannelEvent",
    "InboundMessage",
    "Location",
    "Media",
    "ReplyChoice",
    "SkippedEvent",
    "StatusEvent",
    "TurnFailure",
    "WebhookBatch",
    "WebhookErrorDetail",
    "WhatsAppASGI",
    "WhatsAppBot",
    "WhatsAppWebhook",
    "channel_event",
    "claim_key",
    "inbound_message",
    "parse_payload",
]
