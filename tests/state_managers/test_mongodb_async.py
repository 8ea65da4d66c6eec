"""MongoDB on the async path: pymongo's ``AsyncMongoClient`` runs the same operations.

Against the real nx-27017 the fixtures start (and a real MongoDB when ``MONGODB_URI`` is set).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import AsyncMongoClient, monitoring

from chat_orchestrator.errors import StateManagerUnavailableError, StepError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from chat_orchestrator.testing import RecordingSender
from tests.async_workers import async_counter_orchestrator
from tests.conftest import mongo_uri
from tests.helpers import counter_orchestrator, run_together
from tests.servers import NxServer

KINDS = ["mongo"] + (["mongo-real"] if os.environ.get("MONGODB_URI") else [])


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(uri, database name), the database dropped afterwards."""
    uri = mongo_uri(request, real=request.param == "mongo-real")
    database = f"async_{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    yield uri, database
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


def counter(manager: MongoDBStateManager, chat_id: str) -> object:
    record = manager.load(chat_id)
    return None if record is None else record.context.get("n")


class Threads(monitoring.CommandListener):
    """The thread every command was sent from, by command name."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append((event.command_name, threading.current_thread().name))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# -- the async path is pymongo's AsyncMongoClient, not threads ----------------------------------
def test_async_turns_go_through_the_async_client_on_the_loop(server: tuple[str, str]) -> None:
    uri, database = server
    listener = Threads()
    async_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, event_listeners=[listener]
    )
    manager = MongoDBStateManager(uri, database=database, async_client=async_client)
    bot = async_counter_orchestrator(manager)

    async def main() -> None:
        for _ in range(3):
            await bot.handle_message_async("c", "x")
        assert await manager.claim_async("k", 60) is True
        assert await manager.claim_async("k", 60) is False
        await manager.release_claim_async("k")
        assert await manager.claim_async("k", 60) is True
        await manager.delete_state_async("gone")
        await manager.close_async()

    asyncio.run(main())
    names = [name for name, _ in listener.seen]
    assert names.count("findAndModify") >= 3 + 1  # three leases, one claim retaken
    assert names.count("update") >= 3  # three writes
    assert "insert" in names
    assert "delete" in names
    # Every command left from the event loop's thread: none ran in a worker thread.
    assert {thread for _, thread in listener.seen} == {threading.main_thread().name}
    assert counter(MongoDBStateManager(uri, database=database), "c") == 3


def test_injected_sync_client_and_collection_serve_the_async_path_on_any_loop(
    server: tuple[str, str],
) -> None:
    uri, database = server
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    by_client = MongoDBStateManager(client=client, database=database)
    by_collection = MongoDBStateManager(collection=client[database]["chat_states"])
    for manager in (by_client, by_collection):
        bot = async_counter_orchestrator(manager)
        # Two event loops one after another: an async client is bound to its loop, so the
        # manager makes one per loop (one shared client failed on the second loop).
        for _ in range(2):
            asyncio.run(bot.handle_message_async("c", "x"))
    assert counter(by_client, "c") == 4
    client.close()


def test_sync_and_async_turns_on_one_manager_interleave(server: tuple[str, str]) -> None:
    uri, database = server
    manager = MongoDBStateManager(uri, database=database, lock_timeout=60)
    sync_bot = counter_orchestrator(manager, RecordingSender())
    async_bot = async_counter_orchestrator(manager)

    def sync_worker() -> None:
        for _ in range(50):
            sync_bot.handle_message("one", "x")

    async def main() -> None:
        thread = threading.Thread(target=sync_worker)
        thread.start()

        async def loop() -> None:
            for _ in range(50):
                await async_bot.handle_message_async("one", "x")

        await asyncio.gather(loop(), loop())
        await asyncio.to_thread(thread.join)

    asyncio.run(main())
    assert counter(manager, "one") == 150


# -- processes ---------------------------------------------------------------------------------
def _commands(module: str, address: str, count: int, workers: int) -> list[list[str]]:
    return [[sys.executable, "-m", module, "mongo", address, str(count), "1"]] * workers


@pytest.mark.slow
def test_four_async_processes_one_chat_lose_nothing(server: tuple[str, str]) -> None:
    uri, database = server
    run_together(_commands("tests.async_workers", f"{uri}#{database}", 250, 4))
    assert counter(MongoDBStateManager(uri, database=database), "chat-0") == 1000


@pytest.mark.slow
def test_two_sync_and_two_async_processes_one_chat_lose_nothing(
    server: tuple[str, str],
) -> None:
    uri, database = server
    address = f"{uri}#{database}"
    commands = _commands("tests.workers", address, 250, 2)
    commands += _commands("tests.async_workers", address, 250, 2)
    run_together(commands)
    assert counter(MongoDBStateManager(uri, database=database), "chat-0") == 1000


@pytest.mark.slow
def test_thousand_chats_five_messages_sixty_four_at_a_time(server: tuple[str, str]) -> None:
    uri, database = server
    manager = MongoDBStateManager(uri, database=database, lock_timeout=120)
    bot = async_counter_orchestrator(manager)
    chats = 1000

    async def main() -> None:
        gate = asyncio.Semaphore(64)

        async def one(chat: str) -> None:
            async with gate:
                await bot.handle_message_async(chat, "x")

        # Each round sends every chat one message; the 64 in flight mix chats and rounds.
        await asyncio.gather(*(one(f"chat-{i}") for _ in range(5) for i in range(chats)))
        await manager.close_async()

    asyncio.run(main())
    reader = MongoDBStateManager(uri, database=database)
    counts = {i: counter(reader, f"chat-{i}") for i in range(chats)}
    assert {i: n for i, n in counts.items() if n != 5} == {}


# -- faults ------------------------------------------------------------------------------------
def test_nx_stopped_mid_run_async_fails_like_sync_then_recovers(tmp_path: Path) -> None:
    server = NxServer(tmp_path / "nx").start()
    try:
        manager = MongoDBStateManager(server.uri, database="faults", timeout=1, lock_lease=1)
        bot = async_counter_orchestrator(manager)
        sync_bot = counter_orchestrator(manager, RecordingSender())
        outcomes: list[BaseException | None] = []

        async def busy(chat: str, stopped: asyncio.Event) -> None:
            # Turns until one fails; the server stops while these are in flight.
            try:
                while True:
                    await bot.handle_message_async(chat, "x")
                    if stopped.is_set():
                        await asyncio.sleep(0.01)
            except Exception as exc:
                outcomes.append(exc)

        async def main() -> float:
            await bot.handle_message_async("c", "x")
            stopped = asyncio.Event()
            tasks = [asyncio.create_task(busy(f"chat-{i}", stopped)) for i in range(16)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            stopped.set()
            started = time.monotonic()
            # Every task ends on its own, within the 1 s timeout plus slack: none hangs.
            _, pending = await asyncio.wait(tasks, timeout=10)
            assert pending == set()
            one_call = time.monotonic()
            with pytest.raises(StateManagerUnavailableError) as raised:
                await bot.handle_message_async("c", "x")
            assert time.monotonic() - one_call < 1 + 3  # the 1 s timeout, plus a busy machine
            elapsed = time.monotonic() - started
            outcomes.append(raised.value)
            return elapsed

        elapsed = asyncio.run(main())
        assert elapsed < 10
        assert len(outcomes) == 17
        for outcome in outcomes:
            assert isinstance(outcome, StateManagerUnavailableError), repr(outcome)
            assert f"127.0.0.1:{server.port}" in str(outcome)
        # The same error as the sync path's for the same call, word for word but for the
        # driver's exception name (a dead pooled socket or no server to select: timing).
        with pytest.raises(StateManagerUnavailableError) as sync_raised:
            sync_bot.handle_message("c", "x")
        said = str(sync_raised.value).rpartition(": ")
        assert said[0] == str(outcomes[-1]).rpartition(": ")[0]
        assert said[2] in {"AutoReconnect", "ServerSelectionTimeoutError", "NetworkTimeout"}
        server.start()  # an in-memory server comes back empty: new turns work again

        async def after() -> None:
            await bot.handle_message_async("c", "x")
            await bot.handle_message_async("c", "x")
            assert counter(manager, "c") == 2
            # Nothing left running once the manager is closed (pymongo's monitors included).
            await manager.close_async()
            await asyncio.sleep(0.1)
            assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

        asyncio.run(after())
    finally:
        server.stop()


def test_failed_timed_out_and_cancelled_steps_store_nothing_and_release_at_once(
    server: tuple[str, str],
) -> None:
    uri, database = server
    # A lease of 5 s and a wait of 10 s: a lease left behind would cost the next turn 5 s.
    manager = MongoDBStateManager(uri, database=database, lock_lease=5, lock_timeout=10)
    raw_client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    raw = raw_client[database]["chat_states"]
    bot = ChatOrchestrator(manager, RecordingSender())
    mode = {"m": "ok"}

    @bot.register_step("start", to=["start"])
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        if mode["m"] == "raise":
            raise KeyError("boom")
        if mode["m"] == "own-timeout":
            async with asyncio.timeout(0.01):  # the step's own call (an LLM) timing out
                await asyncio.sleep(10)
        if mode["m"] == "hang":
            await asyncio.sleep(10)
        return "start", {"n": context.get("n", 0) + 1}

    def stored() -> dict[str, Any] | None:
        return raw.find_one({"_id": "c"}, {"lk": 0, "at": 0})

    def lease_dropped() -> bool:
        doc = raw.find_one({"_id": "c"})
        assert doc is not None
        return bool(doc["lu"] == 0)  # dropped by the failed turn, not left to expire

    async def main() -> None:
        await bot.handle_message_async("c", None)
        before = stored()
        assert before is not None
        assert before["c"] == '{"n":1}'
        for failing, cause in (("raise", KeyError), ("own-timeout", TimeoutError)):
            mode["m"] = failing
            with pytest.raises(StepError) as raised:
                await bot.handle_message_async("c", "x")
            assert isinstance(raised.value.__cause__, cause)
            assert stored() == before
            assert lease_dropped()
        mode["m"] = "hang"
        with pytest.raises(TimeoutError):  # the caller's own deadline: asyncio's error
            async with asyncio.timeout(0.2):
                await bot.handle_message_async("c", "x")
        assert stored() == before
        assert lease_dropped()
        task = asyncio.create_task(bot.handle_message_async("c", "x"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stored() == before
        assert lease_dropped()
        mode["m"] = "ok"
        started = time.monotonic()
        await bot.handle_message_async("c", "x")
        assert time.monotonic() - started < 1  # released at once: no wait for the 5 s lease

    asyncio.run(main())
    assert counter(manager, "c") == 2
    raw_client.close()
