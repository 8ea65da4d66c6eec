"""Connections of the PostgreSQL store: psycopg_pool pools, one command per checkout.

* A connection is checked out for one statement and handed back at once: nothing is held
  across a step, so 500 chats waiting on slow steps need no more connections than the
  statements running at that moment.
* A pooled connection idle for more than ``CHECK_IDLE`` seconds is checked (an empty query)
  before use, so connections the server killed while idle (``idle_session_timeout``, a
  restart, a proxy) are replaced instead of failing a turn; busy connections skip the check,
  so a turn still costs two round trips.
* Connection refused fails fast: the pools we build record each connection attempt's
  outcome, and a checkout gives up as soon as the last attempt failed, instead of waiting the
  whole timeout while the pool retries in the background.
* The async pools are psycopg's own ``AsyncConnectionPool``, one per event loop (a pool
  belongs to the loop that opened it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from chat_orchestrator.errors import StateManagerError, StateManagerUnavailableError

__all__ = [
    "CHECK_IDLE",
    "AsyncPools",
    "Command",
    "Health",
    "SyncPool",
    "address_of",
    "secrets_of",
]

logger = logging.getLogger(__name__)

#: A pooled connection idle longer than this (s) is checked before use.
CHECK_IDLE = 1.0
#: How often a waiting checkout looks at the last connection attempt's outcome (s).
_SLICE = 0.05


@dataclass(frozen=True, slots=True)
class Command:
    """One statement: its SQL, parameters, and what to read back (``rows``/``rowcount``)."""

    sql: str
    params: tuple[Any, ...] = ()
    read: str = "rows"


def run_on(conn: Any, command: Command) -> Any:
    cursor = conn.execute(command.sql, command.params or None)
    return cursor.fetchall() if command.read == "rows" else cursor.rowcount


async def run_on_async(conn: Any, command: Command) -> Any:
    cursor = await conn.execute(command.sql, command.params or None)
    return await cursor.fetchall() if command.read == "rows" else cursor.rowcount


def address_of(params: dict[str, Any]) -> str:
    """``host:port/dbname`` from parsed connection parameters (never the password)."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def parse_conninfo(conninfo: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # psycopg's message quotes the string, password and all: never pass it on.
        raise StateManagerError(
            "not a usable PostgreSQL URL or conninfo string (it could not be parsed)"
        ) from None


def secrets_of(params: dict[str, Any]) -> list[str]:
    return [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]


class Health:
    """The outcome of the last connection attempt of the pools we built."""

    def __init__(self) -> None:
        self.error: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.error = type(exc).__name__

    def ok(self) -> None:
        self.error = None


def _tracked_class(health: Health) -> type[psycopg.Connection[Any]]:
    class Tracked(psycopg.Connection[Any]):
        used = 0.0

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            try:
                conn = super().connect(conninfo, **kwargs)
            except Exception as exc:
                health.failed(exc)
                raise
            health.ok()
            return conn

    return Tracked


def _tracked_async_class(health: Health) -> type[psycopg.AsyncConnection[Any]]:
    class Tracked(psycopg.AsyncConnection[Any]):
        used = 0.0

        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            try:
                conn = await super().connect(conninfo, **kwargs)
            except Exception as exc:
                health.failed(exc)
                raise
            health.ok()
            return conn

    return Tracked


def _check(conn: Any) -> None:
    if time.monotonic() - getattr(conn, "used", 0.0) > CHECK_IDLE:
        ConnectionPool.check_connection(conn)


async def _check_async(conn: Any) -> None:
    if time.monotonic() - getattr(conn, "used", 0.0) > CHECK_IDLE:
        await AsyncConnectionPool.check_connection(conn)


def _unavailable(address: str, why: str) -> StateManagerUnavailableError:
    return StateManagerUnavailableError(f"PostgreSQL at {address} is unavailable: {why}")


class SyncPool:
    """The blocking pool (ours, or the caller's ``ConnectionPool``)."""

    def __init__(
        self,
        address: str,
        wait: float,
        *,
        pool: ConnectionPool[Any] | None = None,
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        max_size: int = 10,
    ) -> None:
        self.address = address
        self.wait = wait
        self.health: Health | None = None
        self.owned = pool is None
        if pool is None:
            self.health = Health()
            pool = ConnectionPool(
                conninfo,
                kwargs=kwargs,
                connection_class=_tracked_class(self.health),
                min_size=1,
                max_size=max_size,
                check=_check,
                timeout=wait,
                open=False,
                name="chat-orchestrator",
            )
            pool.open(wait=False)
        self.pool = pool

    def checkout(self) -> Any:
        deadline = time.monotonic() + self.wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.pool.getconn(timeout=max(0.001, min(_SLICE, remaining)))
            except PoolTimeout:
                error = None if self.health is None else self.health.error
                if error is not None:
                    raise _unavailable(self.address, f"cannot connect ({error})") from None
                if remaining <= _SLICE:
                    raise _unavailable(
                        self.address, f"no connection within {self.wait} s"
                    ) from None
            except PoolClosed:
                raise StateManagerError(
                    f"the pool of PostgreSQL at {self.address} is closed"
                ) from None

    def execute(self, command: Command) -> Any:
        conn = self.checkout()
        try:
            result = run_on(conn, command)
            if not conn.autocommit:
                conn.commit()  # a caller's pool may not be in autocommit mode
            conn.used = time.monotonic()
            return result
        finally:
            self.pool.putconn(conn)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.checkout()
        try:
            yield conn
        finally:
            self.pool.putconn(conn)

    def close(self) -> None:
        if self.owned:
            self.pool.close()


class AsyncPools:
    """One ``AsyncConnectionPool`` per event loop (or the caller's own, on its loop)."""

    def __init__(
        self,
        address: str,
        wait: float,
        factory: Callable[[Health], AsyncConnectionPool[Any]] | None,
        given: AsyncConnectionPool[Any] | None,
    ) -> None:
        self.address = address
        self.wait = wait
        self._factory = factory
        self._given = given
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncConnectionPool[Any], Health, Any]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def current(self) -> tuple[AsyncConnectionPool[Any], Health | None]:
        if self._given is not None:
            return self._given, None
        loop = asyncio.get_running_loop()
        found = self._pools.get(loop)
        if found is None:
            assert self._factory is not None
            health = Health()
            pool = self._factory(health)
            keeper = _close_with_loop(pool)
            with self._lock:
                found = self._pools.setdefault(loop, (pool, health, keeper))
            if found[0] is pool:
                await pool.open(wait=False)
                await keeper.__anext__()
        return found[0], found[1]

    async def execute(self, command: Command) -> Any:
        pool, health = await self.current()
        deadline = time.monotonic() + self.wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                conn = await pool.getconn(timeout=max(0.001, min(_SLICE, remaining)))
                break
            except PoolTimeout:
                error = None if health is None else health.error
                if error is not None:
                    raise _unavailable(self.address, f"cannot connect ({error})") from None
                if remaining <= _SLICE:
                    raise _unavailable(
                        self.address, f"no connection within {self.wait} s"
                    ) from None
        try:
            result = await run_on_async(conn, command)
            if not conn.autocommit:
                await conn.commit()
            conn.used = time.monotonic()
            return result
        finally:
            await pool.putconn(conn)

    async def close_current(self) -> None:
        if self._given is not None:
            return
        found = self._pools.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].close()


async def _close_with_loop(pool: AsyncConnectionPool[Any]) -> AsyncIterator[None]:
    """Closes ``pool`` when its loop shuts down: ``asyncio.run`` and ``asyncio.Runner`` close
    every live async generator (``loop.shutdown_asyncgens``) before closing the loop, so a
    pool never outlives its loop with its connections still open on the server."""
    try:
        yield
    finally:
        await pool.close()


def async_factory(
    conninfo: str, kwargs: dict[str, Any], wait: float, max_size: int
) -> Callable[[Health], AsyncConnectionPool[Any]]:
    def build(health: Health) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            conninfo,
            kwargs=kwargs,
            connection_class=_tracked_async_class(health),
            min_size=1,
            max_size=max_size,
            check=_check_async,
            timeout=wait,
            open=False,
            name="chat-orchestrator-async",
        )

    return build
