"""WhatsApp Cloud API sender for ``async`` code, on ``httpx.AsyncClient``.

The same requests, limits, error classification and retry policy as ``WhatsAppSender``: both
drive one ``whatsapp_core.GraphCall``; this one awaits the request and the sleep. It runs under
asyncio and trio alike (httpx and the default ``anyio.sleep`` are backend-neutral).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.senders.whatsapp_base import GraphSender
from chat_orchestrator.senders.whatsapp_core import GraphCall, Retry, RetryPolicy, httpx

__all__ = ["AsyncWhatsAppSender", "RetryPolicy"]

T = TypeVar("T")


class AsyncWhatsAppSender(
    GraphSender[httpx.AsyncClient, Callable[[float], Awaitable[None]]], AsyncMessageSender
):
    """``WhatsAppSender`` for event loops: the same constructor, options and errors.

    Concurrent sends share the client's connection pool; ``await sender.aclose()`` (or
    ``async with``) releases it.
    """

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    def _default_sleep(self) -> Callable[[float], Awaitable[None]]:
        # Imported here, behind the core's httpx guard: anyio is httpx's own dependency, and a
        # module-level import would fail with a bare ModuleNotFoundError before that guard.
        import anyio

        return anyio.sleep

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

    async def _run(self, call: GraphCall[T]) -> T:
        while True:
            try:
                response = await self._client.post(
                    call.url, content=call.content, headers=call.headers, timeout=call.timeout
                )
            except httpx.RequestError as exc:
                outcome: T | Retry = call.failed(exc)
            else:
                outcome = call.answered(response.status_code, response.content)
            if not isinstance(outcome, Retry):
                return outcome
            await self._sleep(outcome.delay)

    async def aclose(self) -> None:
        """Close the HTTP client if this sender created it (an injected one is the caller's)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
