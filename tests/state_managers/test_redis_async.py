"""RedisStateManager on the async path, against real redis-servers (and a 3-master cluster).

Native async (no worker thread per command), many processes mixing sync and async workers on
one chat, many chats on one loop, a server stopped mid-run, failing and cancelled steps, and
the per-loop clients.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from chat_orchestrator.errors import (
    StateManagerUnavailableError,
    StepError,
    VersionConflictError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers._redis_clients import Direct
from chat_orchestrator.state_managers.redis import RedisStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator, run_together
from tests.servers import RedisServer, create_cluster
from tests.state_managers.redis_async_worker import async_counter


def counter_of(manager: RedisStateManager, chat_id: str) -> int | None:
    got = manager.get_state(chat_id)
    return None if got is None else int(got[1]["n"])


class NoThreads(ThreadPoolExecutor):
    """A default executor that refuses work: proves the async path never uses a thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise AssertionError(f"the async path ran {fn!r} in a worker thread")


# -- the async path is native ---------------------------------------------------------------------
def test_the_async_path_uses_redis_asyncio_not_threads(redis_url: str) -> None:
    manager = RedisStateManager.from_url(redis_url)
    orchestrator = async_counter(manager)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(NoThreads())
        for _ in range(3):
            await orchestrator.handle_message_async("c", "tick")
        assert await manager.save_async("d", "s", {}, expected_version=0) == 1
        assert await manager.claim_async("k", 60) is True
        await manager.release_claim_async("k")
        await manager.delete_state_async("d")
        assert await manager.load_async("d") is None
        assert isinstance(manager._async.current(), Direct)  # a redis.asyncio.Redis, driven
        await manager.close_async()

    asyncio.run(main())
    assert counter_of(manager, "c") == 3


def test_each_event_loop_gets_its_own_client(redis_url: str) -> None:
    manager = RedisStateManager.from_url(redis_url)
    orchestrator = async_counter(manager)
    clients: list[object] = []

    async def turns(close: bool) -> None:
        for _ in range(5):
            await orchestrator.handle_message_async("c", "tick")
        clients.append(manager._async.current())
        if close:
            await manager.close_async()

    asyncio.run(turns(close=False))  # a loop that ends without close_async ...
    asyncio.run(turns(close=True))  # ... is dropped when the next loop opens its client
    assert len(manager._async) == 0
    threads = [threading.Thread(target=asyncio.run, args=(turns(True),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter_of(manager, "c") == 30
    assert len({id(client) for client in clients}) == 6


def test_a_given_client_without_an_async_twin_runs_in_threads(redis_url: str) -> None:
    manager = RedisStateManager(client=redis.Redis.from_url(redis_url))

    async def main() -> None:
        for _ in range(3):
            await async_counter(manager).handle_message_async("c", "tick")

    asyncio.run(main())
    assert counter_of(manager, "c") == 3
    with pytest.raises(ValueError, match="async_client= needs client="):
        RedisStateManager(async_client=redis.asyncio.Redis.from_url(redis_url))


# -- processes: async workers, and sync and async workers together --------------------------------
def run_workers(url: str, modes: list[str], count: int, chats: int) -> None:
    worker = [sys.executable, "-m", "tests.state_managers.redis_async_worker"]
    run_together([[*worker, mode, url, str(count), str(chats)] for mode in modes])


@pytest.mark.slow
def test_four_async_processes_one_chat_lose_nothing(redis_url: str) -> None:
    run_workers(redis_url, ["async"] * 4, count=250, chats=1)
    assert counter_of(RedisStateManager.from_url(redis_url), "chat-0") == 1000


@pytest.mark.slow
def test_two_sync_and_two_async_processes_one_chat_lose_nothing(redis_url: str) -> None:
    run_workers(redis_url, ["sync", "async", "sync", "async"], count=250, chats=1)
    assert counter_of(RedisStateManager.from_url(redis_url), "chat-0") == 1000


# -- many chats on one loop ------------------------------------------------------------------------
async def run_concurrently(
    orchestrator: ChatOrchestrator, messages: list[str], concurrency: int
) -> int:
    """Send ``messages`` (chat ids) with ``concurrency`` turns in flight; the peak reached."""
    pending = iter(messages)
    in_flight = peak = 0

    async def worker() -> None:
        nonlocal in_flight, peak
        for chat_id in pending:
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await orchestrator.handle_message_async(chat_id, "tick")
            finally:
                in_flight -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return peak


@pytest.mark.slow
def test_a_thousand_chats_five_messages_64_concurrent_turns(redis_url: str) -> None:
    manager = RedisStateManager.from_url(redis_url)
    orchestrator = async_counter(manager)
    chats = [f"chat-{number}" for number in range(1000)]
    # Each chat's messages close together, so turns of one chat contend for its lease.
    messages = [chat for number in range(0, 1000, 8) for chat in chats[number : number + 8] * 5]

    async def main() -> int:
        peak = await run_concurrently(orchestrator, messages, 64)
        await manager.close_async()
        return peak

    assert asyncio.run(main()) == 64
    with redis.Redis.from_url(redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for chat in chats:
            pipe.hget(manager.keys_for(chat)[0], "c")
        stored = pipe.execute()
    assert stored == [b'{"n":5}'] * 1000


# -- a server stopped mid-run ----------------------------------------------------------------------
def test_redis_stopped_mid_run_under_the_async_path(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendonly=True).start()
    password = "s3cret-Pa55"
    redis.Redis(port=server.port).config_set("requirepass", password)
    timeout = 1.0
    manager = RedisStateManager(
        "127.0.0.1", server.port, password=password, socket_timeout=timeout, lock_lease=2
    )
    orchestrator = async_counter(manager)
    done: list[int] = []
    failures: list[BaseException] = []

    async def keep_sending(task: int) -> None:
        for _ in range(10_000):  # bounded by count; the stop ends it long before
            try:
                await orchestrator.handle_message_async(f"chat-{task % 4}", "tick")
            except StateManagerUnavailableError as exc:
                failures.append(exc)
                return
            done.append(task)

    async def main() -> None:
        tasks = [asyncio.create_task(keep_sending(task)) for task in range(16)]
        while len(done) < 200:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        # Every task ends with the clear error, none hangs: a bound of a few socket timeouts.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=4 * timeout + 5)
        assert time.monotonic() - started < 4 * timeout + 5
        with pytest.raises(StateManagerUnavailableError):
            await orchestrator.handle_message_async("chat-0", "tick")
        await asyncio.to_thread(server.start)  # same port, same AOF: the records come back
        redis.Redis(port=server.port, password=password).ping()
        await orchestrator.handle_message_async("chat-0", "tick")  # and it recovers
        await manager.close_async()

    try:
        asyncio.run(main())
        assert len(failures) == 16
        for failure in failures:
            assert f"127.0.0.1:{server.port}" in str(failure)
            assert password not in str(failure)
            assert failure.__cause__ is not None
        total = sum(counter_of(manager, f"chat-{number}") or 0 for number in range(4))
        # A write whose reply the stop swallowed may have landed: at most one per task.
        assert len(done) + 1 <= total <= len(done) + 1 + 16
    finally:
        server.stop()


# -- a step that raises, times out or is cancelled: nothing stored, the lease free at once --------
@pytest.fixture
def failing(redis_url: str) -> Iterator[tuple[ChatOrchestrator, RedisStateManager]]:
    manager = RedisStateManager.from_url(redis_url, lock_lease=30)  # a held lease would show
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    async def step(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "raise":
            raise ValueError("the payment API said no")
        if text == "inner-timeout":
            async with asyncio.timeout(0.05):
                await asyncio.sleep(60)
        if text == "hang":
            await asyncio.sleep(60)
        return "start", {"n": context.get("n", 0) + 1}

    manager.set_state("c", "start", {"n": 7})
    yield orchestrator, manager
    manager.close()


async def fail_turn(orchestrator: ChatOrchestrator, how: str) -> BaseException:
    try:
        if how == "outer-timeout":
            async with asyncio.timeout(0.1):
                await orchestrator.handle_message_async("c", "hang")
        elif how == "cancel":
            task = asyncio.create_task(orchestrator.handle_message_async("c", "hang"))
            await asyncio.sleep(0.1)
            task.cancel()
            await task
        else:
            await orchestrator.handle_message_async("c", how)
    except BaseException as exc:  # what the caller sees is the point
        return exc
    raise AssertionError("the turn did not fail")


@pytest.mark.parametrize("how", ["raise", "inner-timeout", "outer-timeout", "cancel"])
def test_a_failed_or_cancelled_async_step_stores_nothing_and_frees_the_chat(
    failing: tuple[ChatOrchestrator, RedisStateManager], redis_url: str, how: str
) -> None:
    orchestrator, manager = failing
    before = manager.load("c")

    async def main() -> BaseException:
        error = await fail_turn(orchestrator, how)
        assert manager.load("c") == before  # the record exactly as it was
        with redis.Redis.from_url(redis_url) as client:
            assert client.exists(manager.keys_for("c")[1]) == 0  # the lease is gone already
        started = time.monotonic()
        other = asyncio.create_task(orchestrator.handle_message_async("c", "ok"))
        await other  # another task gets the chat at once, not after the 30 s lease
        assert time.monotonic() - started < 2
        await manager.close_async()
        return error

    error = asyncio.run(main())
    assert counter_of(manager, "c") == 8
    if how in {"raise", "inner-timeout"}:  # a step's own failure: our error, original chained
        assert isinstance(error, StepError)
        expected = ValueError if how == "raise" else TimeoutError
        assert isinstance(error.__cause__, expected)
    elif how == "outer-timeout":  # the caller's deadline keeps asyncio's own contract
        assert isinstance(error, TimeoutError)
        assert isinstance(error.__cause__, asyncio.CancelledError)
    else:
        assert isinstance(error, asyncio.CancelledError)


# -- Redis Cluster on the async path ------------------------------------------------------------
@pytest.mark.slow
def test_redis_cluster_of_three_masters_on_the_async_path(tmp_path: Path) -> None:
    nodes = [RedisServer(tmp_path / f"n{i}", cluster=True).start() for i in range(3)]
    try:
        create_cluster(nodes)
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        ids = [f"user-{i}" for i in range(60)] + ["{a}", "a}", "}", "ünï😀", "x" * 5000]

        async def main() -> RedisStateManager:
            # driver_info=None, as the manager's own clients: redis-py 8.1's async cluster
            # fails connections opened concurrently with its CLIENT SETINFO handshake on.
            async_client = AsyncRedisCluster(host="127.0.0.1", port=nodes[0].port, driver_info=None)
            manager = RedisStateManager(client=client, async_client=async_client)
            asyncio.get_running_loop().set_default_executor(NoThreads())
            await run_concurrently(async_counter(manager), ids * 3, 16)
            counter_orchestrator(manager, RecordingSender()).handle_message("user-1", "sync")
            with pytest.raises(VersionConflictError):
                await manager.save_async("user-2", "s", {}, expected_version=1)
            assert await manager.claim_async("k", 60) is True
            assert await manager.claim_async("k", 60) is False
            await manager.close_async()
            return manager

        manager = asyncio.run(main())
        for chat_id in ids:
            expected = 4 if chat_id == "user-1" else 3
            assert manager.get_state(chat_id) == ("start", {"n": expected}), chat_id
        owners = {client.get_node_from_key(manager.keys_for(c)[0]).port for c in ids}  # type: ignore[no-untyped-call]
        assert owners == {node.port for node in nodes}  # the chats spread over all masters

        async def threaded() -> None:  # a cluster client without an async twin: threads
            await async_counter(RedisStateManager(client=client)).handle_message_async("{a}", "t")

        asyncio.run(threaded())
        assert manager.get_state("{a}") == ("start", {"n": 4})
        client.close()
    finally:
        for node in nodes:
            node.stop()
