"""WhatsApp Cloud API sender for ``async`` code, on ``httpx.AsyncClient``.

The same requests, limits, error classification and retry policy as ``WhatsAppSender``: both
drive one ``http_core.HttpCall``; this one awaits the request and the sleep. It runs under
asyncio and trio alike (httpx and the default ``anyio.sleep`` are backend-neutral).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.senders.http_drivers import AsyncHttpDriver
from chat_orchestrator.senders.whatsapp_base import GraphSender
from chat_orchestrator.senders.whatsapp_core import RetryPolicy, httpx

__all__ = ["AsyncWhatsAppSender", "RetryPolicy"]


class AsyncWhatsAppSender(
    GraphSender[httpx.AsyncClient, Callable[[float], Awaitable[None]]],
    AsyncHttpDriver,
    AsyncMessageSender,
):
    """``WhatsAppSender`` for event loops: the same constructor, options and errors.

    Concurrent sends share the client's connection pool; ``await sender.aclose()`` (or
    ``async with``) releases it.
    """

    async def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str:
        return await self._run(self._api.message(chat_id, text, options))

    async def send_template(
        self,
        chat_id: str,
        name: str,
        language: str = "en_US",
        components: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Send an approved template (the only kind allowed outside the 24 h window)."""
        return await self._run(self._api.template(chat_id, name, language, components))

    async def mark_as_read(self, message_id: str, *, typing: bool = False) -> None:
        """Mark an inbound message (and the ones before it) read; optionally show typing."""
        await self._run(self._api.read_receipt(message_id, typing=typing))
