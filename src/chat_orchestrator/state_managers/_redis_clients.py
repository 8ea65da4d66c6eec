"""The Redis clients of one manager: a blocking one, and a ``redis.asyncio`` one per event loop.

Both kinds are built from the same parsed options with the same policy (decided once, in
:func:`client_settings`): no driver retries, ``socket_timeout`` for connecting and reading, no
``CLIENT SETINFO`` handshake. A ``redis.asyncio`` client owns connections bound to the loop
that opened them, so it must never serve another loop: :class:`AsyncClients` keeps one per
loop, created on first use. A client whose loop has closed can no longer be closed cleanly; it
is dropped when another loop first needs a client (otherwise its connections, which reference
their loop, would keep the weakly held key alive forever). The manager's own async clients are
driven through :class:`Direct`, one level below ``execute_command``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["AsyncClient", "AsyncClients", "Direct", "InThreads", "build_client", "client_settings"]


class AsyncClient(Protocol):
    """What the async driver needs of a client: ``redis.asyncio.Redis`` or its ``RedisCluster``."""

    async def execute_command(self, *args: Any) -> Any: ...

    async def aclose(self) -> None: ...


def client_settings(socket_timeout: float, asynchronous: bool) -> dict[str, Any]:
    # retry: no driver retries (see the redis module's docstring); the operations retry once
    # themselves. driver_info=None: no CLIENT SETINFO handshake, one round trip less per connect.
    retry = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": retry,
        "driver_info": None,
    }


def build_client(options: dict[str, Any], socket_timeout: float, asynchronous: bool) -> Any:
    """A ``redis.Redis`` (or ``redis.asyncio.Redis``) for ``options`` (``url`` or host/port/...)."""
    kind: Any = redis.asyncio.Redis if asynchronous else redis.Redis
    settings = client_settings(socket_timeout, asynchronous)
    url = options.get("url")
    client = kind(**options, **settings) if url is None else kind.from_url(url, **settings)
    return Direct(client) if asynchronous else client


class Direct:
    """A ``redis.asyncio.Redis`` driven one level down: connection, send, read, release.

    ``Redis.execute_command`` wraps every command in a retry loop (ours is off), metrics
    and response callbacks (our commands have none); at 64 turns in flight that Python
    costs more than the turn's own logic. Errors are the driver's own: a timeout, a
    dropped connection or a cancellation disconnects the connection in ``read_response``,
    exactly as under ``execute_command``.
    """

    __slots__ = ("_client", "_pool")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client, self._pool = client, client.connection_pool

    async def execute_command(self, *args: Any) -> Any:
        pool = self._pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_command(*args)
            return await connection.read_response()
        finally:
            await pool.release(connection)

    async def aclose(self) -> None:
        await self._client.aclose()


class InThreads:
    """The async face of a blocking client passed in without an async twin.

    A client built by the caller carries settings (SSL, credential providers, cluster
    options) that cannot be copied faithfully onto a new ``redis.asyncio`` client, so its
    commands run in worker threads instead: slower, but the very same client and policy.
    """

    __slots__ = ("_execute",)

    def __init__(self, client: redis.Redis | redis.RedisCluster) -> None:
        self._execute = client.execute_command

    async def execute_command(self, *args: Any) -> Any:
        return await asyncio.to_thread(self._execute, *args)

    async def aclose(self) -> None:
        """Nothing of its own to close: ``close()`` closes the blocking client."""


class AsyncClients:
    """One async client per running event loop (or the one the caller passed in)."""

    def __init__(self, factory: Callable[[], AsyncClient] | None, given: AsyncClient | None):
        self._factory, self._given = factory, given
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._guard = threading.Lock()  # loops in several threads may share one manager

    def current(self) -> AsyncClient:
        """The client of the running loop, created on its first command."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        client = self._per_loop.get(loop)
        if client is None:
            assert self._factory is not None
            with self._guard:
                for stale in [other for other in self._per_loop if other.is_closed()]:
                    del self._per_loop[stale]
                client = self._per_loop[loop] = self._factory()
        return client

    def __len__(self) -> int:
        return len(self._per_loop)

    async def close_current(self) -> None:
        """Close the running loop's client (or the given one); the next command opens anew."""
        if self._given is not None:
            await self._given.aclose()
            return
        with self._guard:
            client = self._per_loop.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
