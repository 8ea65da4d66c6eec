"""The async path's driver faults against a real redis-server: lost replies, silent servers.

The same reply-dropping proxy as ``test_redis_faults``: a command runs on the server, its reply
is lost, ``redis.asyncio`` times out and the operation sends it again on a new connection.
Every async operation must come out of that as if the reply had arrived, as the sync ones do.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import StateManagerUnavailableError
from chat_orchestrator.state_managers.base import StateRecord, StateUpdate
from chat_orchestrator.state_managers.redis import RedisStateManager
from tests.servers import RedisServer, free_port
from tests.state_managers.test_redis_faults import (
    TIMEOUT,
    ReplyDroppingProxy,
    assert_no_secret,
    url_shapes,
)

Scenario = Callable[[RedisStateManager, ReplyDroppingProxy, redis.Redis], Awaitable[None]]


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[ReplyDroppingProxy]:
    server_proxy = ReplyDroppingProxy(redis_server.port)
    yield server_proxy
    server_proxy.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def run_proxied(proxy: ReplyDroppingProxy, direct: redis.Redis, scenario: Scenario) -> None:
    """Run ``scenario`` on one loop after warming the loop's async client up."""
    manager = RedisStateManager(
        "127.0.0.1", proxy.port, socket_timeout=TIMEOUT, lock_lease=30, lock_timeout=3
    )

    async def main() -> None:
        # Every script loaded (EVALSHA runs, no NOSCRIPT) and a server seen answering.
        await manager.claim_async("warm-up", 60)
        await manager.save_async("warm-up", "s", {}, expected_version=0)
        await manager.set_state_async("warm-up", "s", {})
        await manager.compare_and_set_async("warm-up", "s", {}, expected_version=2)
        try:
            await scenario(manager, proxy, direct)
        finally:
            await manager.close_async()

    asyncio.run(main())


def assert_one_reply_lost(proxy: ReplyDroppingProxy, connections_before: int) -> None:
    assert proxy.dropped == 1
    assert proxy.connections == connections_before + 1  # sent again, on a new connection


async def claim(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    before = proxy.connections
    proxy.drop_one()
    assert await m.claim_async("wamid.1", 60) is True  # not a "duplicate" of itself
    assert_one_reply_lost(proxy, before)
    assert RedisStateManager(client=direct).claim("wamid.1", 60) is False  # really claimed


async def lease(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    before = proxy.connections
    proxy.drop_one()  # the lease is taken, the client never hears
    turn = await m.begin_turn_async("c")  # the repeat sees its own lease: no wait
    assert_one_reply_lost(proxy, before)
    assert turn.record is None
    await turn.commit(StateUpdate("s", {"n": 1}, encode_context({"n": 1})))
    assert await m.load_async("c") == StateRecord("s", {"n": 1}, 1)
    assert direct.exists(m.keys_for("c")[1]) == 0


async def save(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    proxy.drop_one()
    assert await m.save_async("c", "s", {"n": 1}, expected_version=0) == 1
    assert proxy.dropped == 1
    assert direct.exists(m.keys_for("c")[1]) == 0


async def cas(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    assert await m.compare_and_set_async("c", "a", {"n": 1}, expected_version=0) == 1
    before = proxy.connections
    proxy.drop_one()  # the write happened; its repeat must recognise it, not call it a conflict
    assert await m.compare_and_set_async("c", "b", {"n": 2}, expected_version=1) == 2
    assert_one_reply_lost(proxy, before)
    assert await m.load_async("c") == StateRecord("b", {"n": 2}, 2)


async def commit(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    await m.set_state_async("c", "a", {})
    turn = await m.begin_turn_async("c")
    proxy.drop_one()
    await turn.commit(StateUpdate("b", {"x": 1}, encode_context({"x": 1})))
    assert proxy.dropped == 1
    assert await m.load_async("c") == StateRecord("b", {"x": 1}, 2)
    assert direct.exists(m.keys_for("c")[1]) == 0


async def set_once(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    await m.set_state_async("c", "a", {})
    proxy.drop_one()
    await m.set_state_async("c", "b", {})
    assert proxy.dropped == 1
    assert await m.load_async("c") == StateRecord("b", {}, 2)  # bumped once, not twice


async def release(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    turn = await m.begin_turn_async("c")
    proxy.drop_one()
    await turn.close()  # the unlock ran; its repeat finds nothing to unlock and must not fail
    assert proxy.dropped == 1
    assert direct.exists(m.keys_for("c")[1]) == 0
    assert await m.claim_async("k", 60) is True
    proxy.drop_one()
    await m.release_claim_async("k")
    assert proxy.dropped == 2
    assert await m.claim_async("k", 60) is True


async def delete(m: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis) -> None:
    await m.set_state_async("c", "a", {})
    proxy.drop_one()
    await m.delete_state_async("c")
    assert proxy.dropped == 1
    assert await m.load_async("c") is None


SCENARIOS = [claim, lease, save, cas, commit, set_once, release, delete]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_async_operations_survive_a_lost_reply(
    proxy: ReplyDroppingProxy, direct: redis.Redis, scenario: Scenario
) -> None:
    run_proxied(proxy, direct, scenario)


# -- a silent server fails within about socket_timeout, on the async path too --------------------
@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel completes them from the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize("operation", ["load", "claim", "turn", "save"])
def test_a_silent_server_fails_the_async_path_within_about_socket_timeout(
    silent_port: int, operation: str
) -> None:
    manager = RedisStateManager("127.0.0.1", silent_port, socket_timeout=TIMEOUT)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "load": lambda: manager.load_async("c"),
        "claim": lambda: manager.claim_async("k", 60),
        "turn": lambda: manager.begin_turn_async("c"),
        "save": lambda: manager.save_async("c", "s", {}, expected_version=0),
    }

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError, match="TimeoutError"):
            await calls[operation]()
        assert time.monotonic() - started < 3 * TIMEOUT
        await manager.close_async()

    asyncio.run(main())


def test_a_server_that_goes_silent_costs_the_async_path_at_most_one_retry(
    proxy: ReplyDroppingProxy, direct: redis.Redis
) -> None:
    async def scenario(m: RedisStateManager, proxy: ReplyDroppingProxy, _: redis.Redis) -> None:
        proxy.black_hole = True
        before = proxy.connections
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError):
            await m.load_async("c")  # it was answering: one retry on a new connection
        assert time.monotonic() - started < 3 * TIMEOUT
        assert proxy.connections == before + 1
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError):
            await m.load_async("c")  # known silent now: one attempt, one timeout
        assert time.monotonic() - started < 3 * TIMEOUT
        assert proxy.connections == before + 2
        proxy.black_hole = False
        assert await m.load_async("c") is None  # and it recovers

    run_proxied(proxy, direct, scenario)


def test_a_refused_port_fails_the_async_path_fast() -> None:
    manager = RedisStateManager("127.0.0.1", free_port(), socket_timeout=5)

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError, match="ConnectionError"):
            await manager.load_async("c")
        assert time.monotonic() - started < 1

    asyncio.run(main())


def test_async_errors_and_logs_never_show_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        for url, address in url_shapes(free_port(), tmp_path):
            manager = RedisStateManager.from_url(url, socket_timeout=TIMEOUT)
            for call in (manager.load_async("c"), manager.claim_async("k", 1)):
                with pytest.raises(StateManagerUnavailableError) as caught:
                    await call
                assert address in str(caught.value)
                assert_no_secret(str(caught.value))
                assert isinstance(caught.value.__cause__, redis.ConnectionError)  # chained
                assert_no_secret(str(caught.value.__cause__))
            await manager.close_async()

    asyncio.run(main())
    assert_no_secret(caplog.text)


def test_an_authenticated_server_on_the_async_path(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    password = "hu@nter2"
    try:
        redis.Redis(port=server.port).config_set("requirepass", password)
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"

        async def main() -> None:
            manager = RedisStateManager.from_url(url, socket_timeout=TIMEOUT)
            assert await manager.save_async("c", "s", {"n": 1}, expected_version=0) == 1
            assert manager.load("c") == StateRecord("s", {"n": 1}, 1)  # the sync side agrees
            await manager.close_async()
            wrong = RedisStateManager.from_url(url.replace("nter2", "nter3"))
            with pytest.raises(StateManagerUnavailableError) as caught:
                await wrong.load_async("c")
            shown = f"{caught.value} {caught.value.__cause__}"
            assert "AuthenticationError" in shown
            assert_no_secret(shown)
            assert "nter3" not in shown
            await wrong.close_async()

        asyncio.run(main())
    finally:
        server.stop()
