"""The PostgreSQL pipeline store's worker steps against raw psycopg doing the same round trips.

Run by hand: ``uv run python bench/bench_pg_pipeline.py [ops]`` (starts its own PostgreSQL
with ``initdb``/``pg_ctl`` on a free loopback port, as the tests do; or give one with the
environment variable the tests read). With 10,000 timers pending and 200 chats leased with
news (the shape the issues name), it times, each against raw psycopg statements of the same
number of round trips on a psycopg_pool pool (one checkout per statement, as the store):

* an idle ``take`` (nothing due; one statement) against a raw indexed ``SELECT ... ORDER BY
  ready_at LIMIT 1``;
* ``add`` of one event (stores, dedups, schedules and NOTIFYs in one statement) against a raw
  ``INSERT ... ON CONFLICT DO NOTHING``;
* a worker's two store steps, ``take_pending`` (``FOR UPDATE SKIP LOCKED`` + the chat's
  events) and ``finish_release``, against a raw ``UPDATE ... WHERE chat = (SELECT ... FOR
  UPDATE SKIP LOCKED LIMIT 1) RETURNING`` and a raw ``DELETE``;
* one event's whole cycle (add, take_pending, finish_release: 3 round trips) against three raw
  statements, sync and async.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from psycopg_pool import AsyncConnectionPool, ConnectionPool  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402

from _timing import compare, report  # noqa: E402
from chat_orchestrator.pipeline.events import Event  # noqa: E402
from chat_orchestrator.state_managers.postgres import PostgresStateManager  # noqa: E402

TIMERS = 10_000
LEASED = 200

RAW_SCHEMA = (
    "DROP TABLE IF EXISTS raw_work, raw_inbox",
    "CREATE TABLE raw_work (chat text PRIMARY KEY, ready_at bigint, owner text)",
    "CREATE INDEX raw_ready ON raw_work (ready_at) WHERE ready_at IS NOT NULL",
    "CREATE TABLE raw_inbox (key text PRIMARY KEY, chat text NOT NULL, body text)",
)
RAW_ADD = "INSERT INTO raw_inbox (key, chat, body) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
RAW_SCHEDULE = (
    "INSERT INTO raw_work (chat, ready_at) VALUES (%s, 0) ON CONFLICT (chat) DO UPDATE "
    "SET ready_at = 0"
)
RAW_READY = "SELECT chat FROM raw_work WHERE ready_at <= %s ORDER BY ready_at LIMIT 1"
RAW_TAKE = """
UPDATE raw_work SET owner = 'w', ready_at = %s WHERE chat = (
    SELECT chat FROM raw_work WHERE ready_at <= %s ORDER BY ready_at LIMIT 1
    FOR UPDATE SKIP LOCKED) RETURNING chat"""
RAW_RELEASE = "DELETE FROM raw_work WHERE chat = %s"


def now_ms() -> int:
    return int(time.time() * 1000)


def main(ops: int = 1000) -> None:
    server = PostgresServer().init()
    try:
        run(server.url, ops)
    finally:
        server.destroy()


def run(url: str, ops: int) -> None:
    manager = PostgresStateManager(url, table_prefix="bench_")
    store = manager.pipeline_store()
    pool = ConnectionPool(url, kwargs={"autocommit": True}, min_size=1, max_size=4)
    pool.wait()
    with pool.connection() as conn:
        for statement in RAW_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO raw_work (chat, ready_at) SELECT 'timer-' || n, %s + n "
            "FROM generate_series(1, %s) AS n",
            (now_ms() + 3_600_000, TIMERS),
        )

    def raw(statement: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with pool.connection() as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    start = time.time()
    for n in range(TIMERS):
        store.schedule(f"timer-{n}", start + 3600 + n)
    for n in range(LEASED):
        store.add([Event(f"first-{n}", f"busy-{n}", "x")])
        assert store.take("busy-worker", 3600) is not None
        store.add([Event(f"news-{n}", f"busy-{n}", "x")])
    counter = itertools.count()

    def idle_take() -> None:
        assert store.take("w", 30) is None

    def raw_ready() -> None:
        raw(RAW_READY, (now_ms() - 3_600_000,))

    base = "raw SELECT ... ORDER BY ready_at LIMIT 1"
    report(
        f"idle take, {TIMERS} timers and {LEASED} leased chats with news (1 round trip)",
        compare({base: raw_ready, "store.take (none due)": idle_take}, ops),
        base,
    )

    def add() -> None:
        n = next(counter)
        store.add([Event(f"k{n}", f"chat-{n % 500}", "hello")])

    def raw_add() -> None:
        n = next(counter)
        raw(RAW_ADD, (f"k{n}", f"chat-{n % 500}", "hello"))

    base = "raw INSERT ... ON CONFLICT DO NOTHING"
    report(
        "add one event (store: dedup + append + schedule + NOTIFY in 1 statement)",
        compare({base: raw_add, "store.add": add}, ops),
        base,
    )
    # The 500 chats the adds made ready: taken and released, so the index is as before.
    while (got := store.take_pending("drain", 30)) is not None:
        store.finish_release(got[0], [e.key for e in got[1]], None)

    def steps() -> None:
        n = next(counter)
        store.schedule(f"due-{n}", 0)
        got = store.take_pending("w", 30)
        assert got is not None
        store.finish_release(got[0], [], None)

    def raw_steps() -> None:
        n = next(counter)
        raw(RAW_SCHEDULE, (f"due-{n}",))
        now = now_ms()
        chat = raw(RAW_TAKE, (now + 30_000, now))[0][0]
        raw(RAW_RELEASE, (chat,))

    base = "raw upsert, UPDATE SKIP LOCKED, DELETE"
    report(
        "schedule + take_pending + finish_release (3 round trips each)",
        compare({base: raw_steps, "store schedule/take_pending/finish_release": steps}, ops),
        base,
    )

    def cycle() -> None:
        n = next(counter)
        store.add([Event(f"c{n}", f"cycle-{n}", "hello")])
        got = store.take_pending("w", 30)
        assert got is not None
        store.finish_release(got[0], [e.key for e in got[1]], None)

    def raw_cycle() -> None:
        n = next(counter)
        raw(RAW_ADD, (f"c{n}", f"cycle-{n}", "hello"))
        raw(RAW_SCHEDULE, (f"cycle-{n}",))
        now = now_ms()
        chat = raw(RAW_TAKE, (now + 30_000, now))[0][0]
        raw(RAW_RELEASE, (chat,))

    base = "raw 4 statements (insert, upsert, take, delete)"
    report(
        "one event's whole cycle: add, take_pending, finish_release (store: 3 round trips)",
        compare({base: raw_cycle, "store add/take_pending/finish_release": cycle}, ops),
        base,
    )
    asyncio.run(run_async(url, store, counter, ops))
    pool.close()
    manager.close()


async def run_async(url: str, store: object, counter: itertools.count[int], ops: int) -> None:
    from chat_orchestrator.pipeline.postgres import PostgresPipelineStore

    assert isinstance(store, PostgresPipelineStore)
    pool = AsyncConnectionPool(url, kwargs={"autocommit": True}, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)

    async def raw(statement: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        async with pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall() if cursor.description else []

    async def cycle() -> None:
        n = next(counter)
        await store.add_async([Event(f"a{n}", f"acycle-{n}", "hello")])
        got = await store.take_pending_async("w", 30)
        assert got is not None
        await store.finish_release_async(got[0], [e.key for e in got[1]], None)

    async def raw_cycle() -> None:
        n = next(counter)
        await raw(RAW_ADD, (f"a{n}", f"acycle-{n}", "hello"))
        await raw(RAW_SCHEDULE, (f"acycle-{n}",))
        now = now_ms()
        chat = (await raw(RAW_TAKE, (now + 30_000, now)))[0][0]
        await raw(RAW_RELEASE, (chat,))

    async def timed(fn: object, count: int) -> float:
        assert callable(fn)
        began = time.perf_counter()
        for _ in range(count):
            await fn()
        return (time.perf_counter() - began) / count

    samples: dict[str, list[float]] = {"raw async 4 statements": [], "store async cycle": []}
    await timed(raw_cycle, ops // 10)
    await timed(cycle, ops // 10)
    for _ in range(5):
        samples["raw async 4 statements"].append(await timed(raw_cycle, ops))
        samples["store async cycle"].append(await timed(cycle, ops))
    medians = {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
    report(
        "async: one event's whole cycle (one loop, sequential)", medians, "raw async 4 statements"
    )
    await pool.close()
    await store._manager.close_async()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
