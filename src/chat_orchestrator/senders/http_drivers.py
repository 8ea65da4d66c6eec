"""The two I/O drivers every HTTP sender shares: blocking on ``httpx.Client``, awaiting on
``httpx.AsyncClient``. They send an ``http_core.HttpCall``'s bytes, feed it the outcome and
sleep when it says so; they decide nothing. A provider's sender is its API object (payloads,
limits, classification) plus one of these.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.senders.http_core import HttpCall, Retry, RetryPolicy, httpx

__all__ = ["AsyncHttpDriver", "HttpSenderBase", "SyncHttpDriver"]

T = TypeVar("T")
ClientT = TypeVar("ClientT")
SleepT = TypeVar("SleepT")


class _Api(Protocol):
    retry_policy: RetryPolicy


class HttpSenderBase(ABC, Generic[ClientT, SleepT]):
    """The client, the sleep, the pacing and ``without_retries``, whatever the provider.

    ``client`` is an ``httpx.Client`` (sync) or ``httpx.AsyncClient`` (async) to share a
    connection pool or add transport settings; the sender closes only a client it created.
    ``sleep`` waits between retries (tests pass a recorder). ``pacing`` is what the channel
    allows (the outbox's delivery loop enforces it; the sender itself never waits for it).
    """

    _api: _Api
    pacing: Pacing

    def _init_io(self, client: ClientT | None, sleep: SleepT | None, pacing: Pacing) -> None:
        if not isinstance(pacing, Pacing):
            raise TypeError("pacing must be a chat_orchestrator.senders.base.Pacing")
        self.pacing = pacing
        self._owns_client = client is None
        self._client: ClientT = client if client is not None else self._new_client()
        self._sleep: SleepT = sleep if sleep is not None else self._default_sleep()

    @abstractmethod
    def _new_client(self) -> ClientT: ...

    @abstractmethod
    def _default_sleep(self) -> SleepT: ...

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._api.retry_policy

    def without_retries(self) -> Self:
        """The same sender on the same HTTP client, making exactly one attempt per send.

        It raises the classified error at once (``permanent``, ``retry_after``): a delivery
        loop that does its own retries with backoff wants this one. Closing it never closes
        the shared client.
        """
        clone = copy.copy(self)
        clone._api = copy.copy(self._api)
        clone._api.retry_policy = replace(self._api.retry_policy, max_retries=0)
        clone._owns_client = False
        return clone


class SyncHttpDriver(HttpSenderBase[httpx.Client, Callable[[float], None]]):
    """Blocking I/O: thread-safe (one pooled client)."""

    def _new_client(self) -> httpx.Client:
        return httpx.Client()

    def _default_sleep(self) -> Callable[[float], None]:
        return time.sleep

    def _run(self, call: HttpCall[T]) -> T:
        while True:
            try:
                response = self._client.post(
                    call.url, content=call.content, headers=call.headers, timeout=call.timeout
                )
            except httpx.RequestError as exc:
                outcome: T | Retry = call.failed(exc)
            else:
                outcome = call.answered(response.status_code, response.content)
            if not isinstance(outcome, Retry):
                return outcome
            self._sleep(outcome.delay)

    def close(self) -> None:
        """Close the HTTP client if this sender created it (an injected one is the caller's)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncHttpDriver(HttpSenderBase[httpx.AsyncClient, Callable[[float], Awaitable[None]]]):
    """Awaiting I/O: concurrent sends share the pool; runs under asyncio and trio alike."""

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    def _default_sleep(self) -> Callable[[float], Awaitable[None]]:
        # Imported here, behind the core's httpx guard: anyio is httpx's own dependency, and a
        # module-level import would fail with a bare ModuleNotFoundError before that guard.
        import anyio

        return anyio.sleep

    async def _run(self, call: HttpCall[T]) -> T:
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
