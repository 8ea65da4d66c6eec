"""PostgreSQL: a turn vs raw psycopg, async vs sync, every store side by side, list at scale.

Run by hand: ``uv run python bench/bench_postgres.py [--quick] [--list N]`` (starts its own
PostgreSQL cluster and redis-server on free loopback ports, as the tests do). Reports:

1. a sync turn (``handle_message``) against raw psycopg doing the same two round trips on
   one autocommit connection: the manager's own lease+load and conditional-write statements
   (target: >= 0.85x the raw loop's throughput);
2. 64 chats in flight with ``handle_message_async`` on one loop against the sync
   single-thread loop (target: >= 3x);
3. one row per store (memory, file, SQLite, Redis, PostgreSQL): the same trivial turn, one
   run, so a user can choose;
4. ``iter_chats`` over N chats (default 1,000,000; bulk-inserted with ``generate_series``):
   seconds and peak traced memory at N and N/10 (streaming: the peak must not grow).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import psycopg  # noqa: E402
from tests.servers import PostgresServer, RedisServer  # noqa: E402

from _timing import compare, report  # noqa: E402
from chat_orchestrator._jsonctx import encode_context  # noqa: E402
from chat_orchestrator.orchestrator import ChatOrchestrator  # noqa: E402
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender  # noqa: E402
from chat_orchestrator.state_managers._leased import new_token  # noqa: E402
from chat_orchestrator.state_managers.base import StateManager  # noqa: E402
from chat_orchestrator.state_managers.file import FileStateManager  # noqa: E402
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager  # noqa: E402
from chat_orchestrator.state_managers.postgres import PostgresStateManager  # noqa: E402
from chat_orchestrator.state_managers.redis import RedisStateManager  # noqa: E402
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager  # noqa: E402
from chat_orchestrator.testing import RecordingSender  # noqa: E402

CONTEXT: dict[str, Any] = {"name": "Bob", "age": 42, "step": 3, "tags": ["a", "b"], "ok": True}
CONCURRENCY = 64


def trivial(manager: StateManager) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, RecordingSender())

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    manager.set_state("bench", "start", CONTEXT)
    return bot


def async_trivial(manager: StateManager) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, RecordingSender())

    @bot.register_step("start")
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    return bot


def bench_raw(url: str, ops: int) -> float:
    """Our turn against raw psycopg sending the same two statements; throughput ratio."""
    manager = PostgresStateManager(url, table_prefix="raw_")
    bot = trivial(manager)
    statements = manager._sql
    conn = psycopg.connect(url, autocommit=True)
    lease = manager._lease_ms

    def raw() -> None:
        token = new_token()
        row = conn.execute(statements.acquire, ("bench", token, lease)).fetchone()
        assert row is not None
        text = encode_context(CONTEXT)
        conn.execute(
            statements.write_in_turn, ("start", text, token, "bench", row[2], token, "bench")
        ).fetchone()

    medians = compare(
        {
            "raw psycopg: lease+load, conditional write": raw,
            "PostgresStateManager handle_message": lambda: bot.handle_message("bench", "x"),
        },
        ops,
    )
    report(
        "PostgreSQL turn vs raw psycopg (2 round trips each)",
        medians,
        "raw psycopg: lease+load, conditional write",
    )
    conn.close()
    manager.close()
    return (
        medians["raw psycopg: lease+load, conditional write"]
        / medians["PostgresStateManager handle_message"]
    )


def bench_async(url: str, turns: int, rounds: int = 5) -> float:
    """64 chats in flight on one loop vs the sync loop; throughput ratio (median of rounds)."""
    manager = PostgresStateManager(url, table_prefix="async_", max_size=20)
    sync_bot = trivial(manager)
    async_bot = async_trivial(manager)
    chats = [f"chat-{n}" for n in range(CONCURRENCY)]
    for chat_id in chats:
        manager.set_state(chat_id, "start", CONTEXT)

    def sync_round() -> float:
        start = time.perf_counter()
        for n in range(turns):
            sync_bot.handle_message(chats[n % CONCURRENCY], "x")
        return turns / (time.perf_counter() - start)

    async def async_round() -> float:
        per_chat = turns // CONCURRENCY

        async def one(chat_id: str) -> None:
            for _ in range(per_chat):
                await async_bot.handle_message_async(chat_id, "x")

        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in chats))
        return per_chat * CONCURRENCY / (time.perf_counter() - start)

    async def main() -> list[tuple[float, float]]:
        await async_round()  # warm the async pool up
        results = []
        for _ in range(rounds):
            sync_rate = await asyncio.to_thread(sync_round)
            results.append((sync_rate, await async_round()))
        await manager.close_async()
        return results

    results = asyncio.run(main())
    sync_rate = statistics.median(r[0] for r in results)
    async_rate = statistics.median(r[1] for r in results)
    print("\nPostgreSQL: 64 concurrent async chats on one loop vs the sync single-thread loop")
    print(f"  sync loop  {sync_rate:10.0f} turns/s")
    print(f"  async x64  {async_rate:10.0f} turns/s  ({async_rate / sync_rate:.2f}x)")
    manager.close()
    return async_rate / sync_rate


def bench_stores(pg_url: str, redis_url: str, directory: Path, ops: int) -> None:
    """The same trivial turn on every store, one run, interleaved rounds."""
    stores: dict[str, StateManager] = {
        "memory": InMemoryStateManager(),
        "file (fsync)": FileStateManager(directory / "files"),
        "SQLite (FULL)": SQLiteStateManager(directory / "chats.db"),
        "SQLite (NORMAL)": SQLiteStateManager(directory / "normal.db", synchronous="NORMAL"),
        "Redis": RedisStateManager(url=redis_url),
        "PostgreSQL": PostgresStateManager(pg_url, table_prefix="stores_"),
    }
    bots = {name: trivial(store) for name, store in stores.items()}
    medians = compare(
        {name: partial(bot.handle_message, "bench", "x") for name, bot in bots.items()},
        ops,
        rounds=5,
    )
    report(
        "One turn per store (same run; loopback servers, fsync=off PostgreSQL)", medians, "memory"
    )
    for store in stores.values():
        store.close()


def bench_list(url: str, count: int) -> None:
    for n in (count // 10, count):
        prefix = f"list{n}_"
        manager = PostgresStateManager(url, table_prefix=prefix, statement_timeout=600)
        manager.setup()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{prefix}chats" (id, state, context, version, updated) '  # noqa: S608
                "SELECT 'chat-' || g, 's', '{}', 1, 0 FROM generate_series(1, %s) AS g",
                (n,),
            )
        tracemalloc.start()
        start = time.perf_counter()
        listed = sum(1 for _ in manager.iter_chats())
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert listed == n
        print(
            f"  iter_chats over {n:>9,} chats: {seconds:6.2f} s ({n / seconds:,.0f} chats/s), "
            f"peak traced memory {peak / 1024:,.0f} KiB"
        )
        manager.close()


def main() -> None:
    quick = "--quick" in sys.argv
    count = 1_000_000
    if "--list" in sys.argv:
        count = int(sys.argv[sys.argv.index("--list") + 1])
    elif quick:
        count = 20_000
    server = PostgresServer().init()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        redis_server = RedisServer(Path(root) / "redis").start()
        try:
            raw = bench_raw(server.url, 300 if quick else 3_000)
            concurrent = bench_async(server.url, 640 if quick else 6_400)
            bench_stores(
                server.url,
                f"redis://127.0.0.1:{redis_server.port}/0",
                Path(root),
                100 if quick else 1_000,
            )
            print("\nPostgreSQL chat list through a server-side cursor")
            bench_list(server.url, count)
        finally:
            redis_server.stop()
            server.destroy()
    print(f"\nturn throughput vs raw psycopg: {raw:.2f}x (target >= 0.85x)")
    print(f"async x64 vs sync loop: {concurrent:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
