"""WhatsApp Cloud API sender (sync, on ``httpx.Client``): text, buttons, lists, templates, reads.

Every decision (payloads, limits, error classification, retries) is in ``whatsapp_core`` and
``http_core``; the driver (``http_drivers.SyncHttpDriver``) only sends, sleeps and loops.
``AsyncWhatsAppSender`` (``whatsapp_async``) is its twin on ``httpx.AsyncClient``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.http_drivers import SyncHttpDriver
from chat_orchestrator.senders.whatsapp_base import GraphSender
from chat_orchestrator.senders.whatsapp_core import RetryPolicy, httpx

__all__ = ["RetryPolicy", "WhatsAppSender"]


class WhatsAppSender(
    GraphSender[httpx.Client, Callable[[float], None]], SyncHttpDriver, MessageSender
):
    """Sends through ``POST {base_url}/{api_version}/{phone_number_id}/messages``.

    ``send_message(chat_id, text, options)`` options: ``buttons`` (up to 3 ``{"id", "title"}``
    or plain titles), ``list`` (``{"button": label, "sections": [{"title", "rows": [{"id",
    "title", "description"}]}]}``), ``header``/``footer`` (with buttons or a list),
    ``preview_url`` (bool), ``reply_to`` (a wamid to quote), ``callback_data`` (echoed in status
    webhooks). Every send returns the WhatsApp message id. Thread-safe (one pooled client).
    """

    def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str:
        return self._run(self._api.message(chat_id, text, options))

    def send_template(
        self,
        chat_id: str,
        name: str,
        language: str = "en_US",
        components: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Send an approved template (the only kind allowed outside the 24 h window)."""
        return self._run(self._api.template(chat_id, name, language, components))

    def mark_as_read(self, message_id: str, *, typing: bool = False) -> None:
        """Mark an inbound message (and the ones before it) read; optionally show typing."""
        self._run(self._api.read_receipt(message_id, typing=typing))
