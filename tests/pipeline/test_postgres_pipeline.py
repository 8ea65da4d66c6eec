"""The PostgreSQL pipeline store beyond the contract: its schema step, one round trip per
worker step, racing takes, dedup expiry, LISTEN/NOTIFY wake-ups and their reconnection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from chat_orchestrator.errors import InvalidClaimKeyError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.postgres import PostgresPipelineStore
from chat_orchestrator.pipeline.store import now_ms
from chat_orchestrator.state_managers import _postgres_sql as sql
from chat_orchestrator.state_managers.postgres import PostgresStateManager
from tests.servers import PostgresServer


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


@pytest.fixture
def manager(url: str, postgres_schema: str) -> Iterator[PostgresStateManager]:
    made = PostgresStateManager(url, schema=postgres_schema, lock_lease=5)
    yield made
    made.close()


@pytest.fixture
def store(manager: PostgresStateManager) -> PostgresPipelineStore:
    return manager.pipeline_store()


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()


def ev(key: str, chat: str = "c1") -> Event:
    return Event(key, chat, f"text {key}")


class Counting:
    """Counts the statements a store sends (sync and async)."""

    def __init__(self, store: PostgresPipelineStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        manager: Any = store._manager
        sync, async_ = manager._execute, manager._execute_async

        def counted(command: Any) -> Any:
            self.sent += 1
            return sync(command)

        async def counted_async(command: Any) -> Any:
            self.sent += 1
            return await async_(command)

        monkeypatch.setattr(manager, "_execute", counted)
        monkeypatch.setattr(manager, "_execute_async", counted_async)

    def take(self) -> int:
        sent, self.sent = self.sent, 0
        return sent


# -- schema ----------------------------------------------------------------------------------
def test_a_version_1_store_gains_the_pipeline_tables_and_keeps_its_chats(
    url: str, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(sql, "MIGRATIONS", sql.MIGRATIONS[:1])
        old = PostgresStateManager(url, schema=postgres_schema)
        old.set_state("c1", "s", {"n": 1})
        assert old.setup() == 1
        old.close()
    new = PostgresStateManager(url, schema=postgres_schema)
    assert new.setup() == len(sql.MIGRATIONS) == 2
    assert new.get_state("c1") == ("s", {"n": 1})
    store = new.pipeline_store()
    assert store.add([ev("a")]) == [True]
    assert [e.key for e in store.pending("c1")] == ["a"]
    new.close()


def test_two_prefixes_have_two_pipelines(url: str, postgres_schema: str) -> None:
    one = PostgresStateManager(url, schema=postgres_schema, table_prefix="a_")
    two = PostgresStateManager(url, schema=postgres_schema, table_prefix="b_")
    one.pipeline_store().add([ev("k")])
    assert two.pipeline_store().add([ev("k")]) == [True]  # another inbox: not a duplicate
    taken = two.pipeline_store().take("w", 30)
    assert taken is not None
    assert one.pipeline_store().take("w", 30) is not None  # b_'s take left a_'s chat alone
    one.close()
    two.close()


def test_take_is_served_by_the_ready_at_index(url: str, store: PostgresPipelineStore) -> None:
    store.schedule("c", time.time() + 3600)  # creates the tables too
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: ask what it could use
        found = conn.execute(f"EXPLAIN {_take_with(store._sql.take)}").fetchall()
    plan = "\n".join(row[0] for row in found)
    assert f"{store._manager._names.prefix}pipe_ready" in plan, plan


def _take_with(statement: str) -> str:
    # The take's four parameters as literals: now 0, lease end 0, owner 'w', limit 0.
    return (
        statement.replace("%s::bigint AS at", "0::bigint AS at")
        .replace("%s::bigint AS until", "0::bigint AS until")
        .replace("%s::text AS owner", "'w'::text AS owner")
        .replace("%s::int AS lim", "0::int AS lim")
    )


# -- one round trip per worker step ---------------------------------------------------------
def test_add_take_pending_and_finish_release_are_one_statement_each(
    store: PostgresPipelineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.next_ready()  # the tables' set-up, before counting
    count = Counting(store, monkeypatch)
    assert store.add([ev("a"), ev("b"), ev("a")]) == [True, True, False]
    assert count.take() == 1
    got = store.take_pending("w", 30)
    assert count.take() == 1
    assert got is not None
    taken, events = got
    assert [e.key for e in events] == ["a", "b"]
    store.finish_release(taken, ["a", "b"], None)
    assert count.take() == 1
    assert store.pending("c1") == []
    assert store.next_ready() is None
    count.take()

    async def main() -> None:
        await store.add_async([ev("c")])
        got = await store.take_pending_async("w", 30)
        assert got is not None
        await store.finish_release_async(got[0], [got[1][0].key], None)

    asyncio.run(main())
    assert count.take() == 3
    assert store.pending("c1") == []


def test_news_between_take_and_release_is_kept(store: PostgresPipelineStore) -> None:
    store.add([ev("a")])
    got = store.take_pending("w1", 30)
    assert got is not None
    store.add([ev("b")])
    store.finish_release(got[0], ["a"], None)
    again = store.take_pending("w2", 30)
    assert again is not None
    assert [e.key for e in again[1]] == ["b"]


def test_racing_takes_take_each_chat_once(url: str, postgres_schema: str) -> None:
    managers = [PostgresStateManager(url, schema=postgres_schema) for _ in range(4)]
    stores = [m.pipeline_store() for m in managers]
    for n in range(200):
        stores[0].add([ev(f"k{n}", f"chat{n}")])
    taken: list[str] = []
    lock = threading.Lock()

    def work(store: PostgresPipelineStore, name: str) -> None:
        while (got := store.take(name, 30)) is not None:
            with lock:
                taken.append(got.chat_id)

    threads = [threading.Thread(target=work, args=(stores[n % 4], f"w{n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(f"chat{n}" for n in range(200))
    for made in managers:
        made.close()


# -- dedup: kept for the retention, then deleted --------------------------------------------
def test_done_events_keep_only_their_key_and_expired_keys_are_swept(
    url: str, store: PostgresPipelineStore
) -> None:
    inbox = store._manager._names.table("pipe_inbox")
    store.add([ev("a"), ev("b")], retention=0.2)
    store.finish("c1", ["a"])
    assert rows(url, f"SELECT key, body IS NULL FROM {inbox} ORDER BY key") == [
        ("a", True),
        ("b", False),
    ]
    assert store.add([ev("a")], retention=0.2) == [False]  # within the retention
    time.sleep(0.3)
    store.add([ev("z", "c2")])  # an add sweeps expired done keys ("a"), never pending ones
    assert rows(url, f"SELECT key FROM {inbox} ORDER BY key") == [("b",), ("z",)]
    assert store.add([ev("b")], retention=0.2) == [False]  # pending: still deduplicates
    store.finish("c1", ["b"])
    time.sleep(0.3)
    assert store.add([ev("b")]) == [True]  # expired and done: the key is new again
    assert [e.key for e in store.pending("c1")] == ["b"]


def test_a_refused_key_in_a_batch_stores_nothing(store: PostgresPipelineStore) -> None:
    with pytest.raises(InvalidClaimKeyError):
        store.add([ev("ok"), ev("bad\x00")])
    assert store.pending("c1") == []
    assert store.next_ready() is None
    assert store.add([ev("ok")]) == [True]


# -- LISTEN/NOTIFY ----------------------------------------------------------------------------
def _waits(store: PostgresPipelineStore, timeout: float) -> threading.Thread:
    thread = threading.Thread(target=store.wait, args=(timeout,), daemon=True)
    thread.start()
    return thread


def _settle(store: PostgresPipelineStore) -> None:
    """Start the listener and take the wake-up its first connection gives."""
    store.wait(0.01)
    deadline = time.monotonic() + 10
    while store._listener.connections == 0:
        assert time.monotonic() < deadline, "the listener never connected"
        time.sleep(0.01)
    store.wait(0.01)


def test_an_idle_wait_returns_on_news_from_another_process(
    url: str, postgres_schema: str, store: PostgresPipelineStore
) -> None:
    _settle(store)
    other = PostgresStateManager(url, schema=postgres_schema)
    waiter = _waits(store, 60)
    time.sleep(0.2)
    assert waiter.is_alive()
    other.pipeline_store().add([ev("a")])
    waiter.join(10)
    assert not waiter.is_alive(), "wait() did not return on the NOTIFY of an add"
    # An earlier timer (schedule) and a release with a due time wake it too.
    pokes: list[Callable[[], None]] = [
        lambda: other.pipeline_store().schedule("c9", time.time() + 5),
        lambda: _release_later(other.pipeline_store()),
    ]
    for poke in pokes:
        store.wait(0.01)
        waiter = _waits(store, 60)
        time.sleep(0.1)
        poke()
        waiter.join(10)
        assert not waiter.is_alive()
    other.close()


def _release_later(store: PostgresPipelineStore) -> None:
    taken = store.take("w", 30)
    assert taken is not None
    store.release(taken, time.time() + 1)


def test_news_while_busy_is_not_lost_before_the_wait(store: PostgresPipelineStore) -> None:
    _settle(store)
    store.schedule("c1", time.time() + 100)  # NOTIFY with no one waiting
    time.sleep(0.3)
    started = time.monotonic()
    store.wait(30)
    assert time.monotonic() - started < 10


def test_wait_async_returns_on_news(url: str, postgres_schema: str) -> None:
    manager = PostgresStateManager(url, schema=postgres_schema)
    store = manager.pipeline_store()
    other = PostgresStateManager(url, schema=postgres_schema)

    async def main() -> float:
        await store.wait_async(0.01)  # a new loop looks once
        deadline = time.monotonic() + 10
        while store._listener.connections == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await store.wait_async(0.01)
        waiters = [asyncio.create_task(store.wait_async(60)) for _ in range(8)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.to_thread(other.pipeline_store().add, [ev("a")])
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
        return time.monotonic() - started

    assert asyncio.run(main()) < 10
    manager.close()
    other.close()


def test_the_listener_reconnects_after_its_backend_is_killed(
    url: str, postgres_schema: str, store: PostgresPipelineStore
) -> None:
    _settle(store)
    channel = store._sql.channel
    killed = rows(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE query = 'LISTEN \"{channel}\"'",
    )
    assert killed == [(True,)]
    deadline = time.monotonic() + 15
    while store._listener.connections < 2:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.05)
    store.wait(0.01)
    other = PostgresStateManager(url, schema=postgres_schema)
    waiter = _waits(store, 60)
    time.sleep(0.2)
    other.pipeline_store().add([ev("a")])
    waiter.join(10)
    assert not waiter.is_alive()
    other.close()


def test_close_stops_the_listening_connection(url: str, postgres_schema: str) -> None:
    manager = PostgresStateManager(url, schema=postgres_schema)
    store = manager.pipeline_store()
    _settle(store)
    channel = store._sql.channel
    query = f"SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"{channel}\"'"
    assert rows(url, query) == [(1,)]
    manager.close()
    deadline = time.monotonic() + 10
    while rows(url, query) != [(0,)]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_now_ms_is_the_clock_of_the_index(store: PostgresPipelineStore) -> None:
    store.schedule("c1", (now_ms() + 60_000) / 1000)
    nxt = store.next_ready()
    assert nxt is not None
    assert 50 < nxt - time.time() <= 60
