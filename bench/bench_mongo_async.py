"""MongoDB turns: async (``AsyncMongoClient``, 64 chats at once on one loop) vs sync (one thread).

Run by hand: ``uv run python bench/bench_mongo_async.py`` (``--quick`` for a smoke run). It
starts its own nx-27017 on a free loopback port; with MONGODB_URI set it measures that server
instead. Both contenders run the same turns (lease + read, conditional write + release: two
round trips) on 64 chats through one ``MongoDBStateManager``; the sync loop sends them one
after another from one thread, the async one keeps 64 turns in flight on one event loop.
Rounds interleave, so all share the machine's noise; every counter is checked at the end.
Two raw pymongo loops doing the same two round trips per turn (``find_one_and_update`` then
``update_one``), one thread and 64 at once on ``AsyncMongoClient``, show what the server
itself allows: nx-27017 answers one command at a time, so concurrency buys little there.
The sync turns run in ``asyncio.to_thread`` (what the async path did before it had its own
client) are the other way to serve 64 chats from one loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from pymongo import AsyncMongoClient, MongoClient, ReturnDocument  # noqa: E402
from tests.servers import NxServer  # noqa: E402

from chat_orchestrator.orchestrator import ChatOrchestrator  # noqa: E402
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender  # noqa: E402
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager  # noqa: E402
from chat_orchestrator.testing import RecordingSender  # noqa: E402

CHATS = 64


def bots(manager: MongoDBStateManager) -> tuple[ChatOrchestrator, ChatOrchestrator]:
    sync_bot = ChatOrchestrator(manager, RecordingSender())
    async_bot = ChatOrchestrator(manager, RecordingSender())

    @sync_bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {"n": context.get("n", 0) + 1}

    @async_bot.register_step("start")
    async def astart(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {"n": context.get("n", 0) + 1}

    return sync_bot, async_bot


def measure(uri: str, per_chat: int, rounds: int) -> dict[str, float]:
    manager = MongoDBStateManager(uri, database=f"bench_async_{os.getpid()}")
    sync_bot, async_bot = bots(manager)
    chats = [f"chat-{i}" for i in range(CHATS)]
    loop = asyncio.new_event_loop()

    def sync_round() -> None:
        for _ in range(per_chat):
            for chat in chats:
                sync_bot.handle_message(chat, "hi")

    async def one_chat(chat: str) -> None:
        for _ in range(per_chat):
            await async_bot.handle_message_async(chat, "hi")

    async def all_chats() -> None:
        await asyncio.gather(*(one_chat(chat) for chat in chats))

    def async_round() -> None:
        loop.run_until_complete(all_chats())

    async def threaded_chat(chat: str) -> None:
        for _ in range(per_chat):
            await asyncio.to_thread(sync_bot.handle_message, chat, "hi")

    async def threaded_chats() -> None:
        await asyncio.gather(*(threaded_chat(chat) for chat in chats))

    def threaded_round() -> None:
        # What the async path did before the port: the sync client in the loop's thread pool.
        loop.run_until_complete(threaded_chats())

    raw_sync: MongoClient[dict[str, Any]] = MongoClient(uri)
    raw_async: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    sync_raw_docs = raw_sync[manager._collection.database.name]["raw"]
    async_raw_docs = raw_async[manager._collection.database.name]["raw"]
    tokens = itertools.count()
    lease = {"lu": 0}

    def raw_sync_round() -> None:
        for _ in range(per_chat):
            for chat in chats:
                token = next(tokens)
                sync_raw_docs.find_one_and_update(
                    {"_id": chat},
                    {"$set": {"lk": token}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                sync_raw_docs.update_one({"_id": chat, "lk": token}, {"$set": lease})

    async def raw_chat(chat: str) -> None:
        for _ in range(per_chat):
            token = next(tokens)
            await async_raw_docs.find_one_and_update(
                {"_id": chat},
                {"$set": {"lk": token}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            await async_raw_docs.update_one({"_id": chat, "lk": token}, {"$set": lease})

    async def raw_all() -> None:
        await asyncio.gather(*(raw_chat(chat) for chat in chats))

    def raw_async_round() -> None:
        loop.run_until_complete(raw_all())

    contenders = {
        "sync, one thread": sync_round,
        f"async, {CHATS} chats at once": async_round,
        f"sync turns in to_thread, {CHATS} at once": threaded_round,
        "raw pymongo, one thread": raw_sync_round,
        f"raw AsyncMongoClient, {CHATS} at once": raw_async_round,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up (connections, pools)
        fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            fn()
            samples[name].append(CHATS * per_chat / (time.perf_counter() - started))
    expected = (1 + rounds) * 3 * per_chat  # warm-up and rounds of the three turn loops
    for chat in chats:
        record = manager.load(chat)
        if record is None or record.context != {"n": expected}:
            raise AssertionError(f"{chat}: {record} (expected n={expected}): a lost update")
    manager._collection.database.client.drop_database(manager._collection.database.name)
    loop.run_until_complete(manager.close_async())
    loop.run_until_complete(raw_async.close())
    raw_sync.close()
    loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    quick = "--quick" in sys.argv
    per_chat, rounds = (2, 2) if quick else (10, 5)
    uri = os.environ.get("MONGODB_URI")
    server = None
    if uri is None:
        server = NxServer(Path(tempfile.mkdtemp(prefix="bench-nx-"))).start()
        uri = server.uri
    try:
        label = "MONGODB_URI" if server is None else "nx-27017"
        results = measure(uri, per_chat, rounds)
    finally:
        if server is not None:
            server.stop()
    print(f"\nMongoDB ({label}): turns/s, median of {rounds} rounds of {CHATS * per_chat} turns")
    base = results["sync, one thread"]
    for name, rate in results.items():
        print(f"  {name:<36} {rate:10.0f} turns/s  {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
