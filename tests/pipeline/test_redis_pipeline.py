"""What is special to the Redis pipeline store: key layout, cluster slots, retries, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from chat_orchestrator._io import run_sync
from chat_orchestrator.errors import (
    InvalidChatIdError,
    InvalidClaimKeyError,
    PipelineError,
    StateManagerUnavailableError,
)
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.redis import RedisPipelineStore
from chat_orchestrator.pipeline.store import DeadLetter, Taken, now_ms
from chat_orchestrator.state_managers.base import MAX_CHAT_ID_LENGTH
from chat_orchestrator.state_managers.redis import RedisStateManager
from tests.servers import free_port

HOSTILE = [
    "a",
    "a:q:a",
    "a\x00b",
    "a\x00",
    "{pipeline}",
    "}{",
    "{a}",
    "$where",
    "a.b",
    "emoji \U0001f600",
    ",1,2,3,",
    "x" * MAX_CHAT_ID_LENGTH,
]


@pytest.fixture
def manager(redis_url: str) -> Iterator[RedisStateManager]:
    made = RedisStateManager(url=redis_url, lock_lease=5)
    yield made
    made.close()


@pytest.fixture
def store(manager: RedisStateManager) -> RedisPipelineStore:
    return manager.pipeline_store()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_hostile_chat_ids_and_keys_round_trip_and_stay_apart(store: RedisPipelineStore) -> None:
    for n, chat in enumerate(HOSTILE):
        # The same odd keys in every chat: dedup is per chat, nothing leaks across.
        events = [Event(key, chat, f"{n}:{key}") for key in HOSTILE[:6]]
        assert store.add(events) == [True] * 6
    for n, chat in enumerate(HOSTILE):
        assert [(e.key, e.user_input) for e in store.pending(chat)] == [
            (key, f"{n}:{key}") for key in HOSTILE[:6]
        ]
    store.finish("a", HOSTILE[:6])
    assert store.pending("a") == []
    assert len(store.pending("a:q:a")) == 6
    taken = set()
    while (got := store.take("w", 30)) is not None:
        taken.add(got.chat_id)
    assert taken == set(HOSTILE)
    for chat in HOSTILE:
        store.park(DeadLetter(f"event:{chat}", chat, "event", "{}", "boom", 1.0))
    assert [d.chat_id for d in store.dead_letters(chat_id="a\x00")] == ["a\x00"]
    assert store.drop_dead("event:a\x00")
    assert store.dead_letters(chat_id="a\x00") == []
    assert len(store.dead_letters()) == len(HOSTILE) - 1


def test_bad_arguments_are_refused_and_nothing_changes(
    store: RedisPipelineStore, raw: redis.Redis
) -> None:
    store.add([Event("k", "c1", "x")])
    before = sorted(raw.keys())
    with pytest.raises(InvalidChatIdError):
        store.pending(1)  # type: ignore[arg-type]
    with pytest.raises(InvalidChatIdError):
        store.pending("c\ud800")
    with pytest.raises(InvalidClaimKeyError):
        store.finish("c1", [1])  # type: ignore[list-item]
    with pytest.raises(PipelineError):
        store.pending("c1", limit="2")  # type: ignore[arg-type]
    with pytest.raises(PipelineError):
        store.park(DeadLetter("d", "c1", "event", "{}", "e", float("nan")))
    with pytest.raises(PipelineError):
        store.park(DeadLetter("", "c1", "event", "{}", "e", 1.0))
    with pytest.raises(InvalidChatIdError):
        store.park(DeadLetter("d", "", "event", "{}", "e", 1.0))
    with pytest.raises(InvalidChatIdError):
        store.schedule({"$gt": ""}, time.time())  # type: ignore[arg-type]
    assert sorted(raw.keys()) == before
    assert [e.key for e in store.pending("c1")] == ["k"]
    assert store.pending("c1", limit=0) == []


def test_every_script_touches_one_cluster_slot(store: RedisPipelineStore) -> None:
    from redis.crc import key_slot

    for chat in HOSTILE:
        slots = {key_slot(key.encode()) for key in store._inbox_keys(chat)}
        assert len(slots) == 1, chat
    names = [store._ready, store._work, store._stamps, store._dead, store._dead_order]
    names += [store._dead_chat + chat for chat in HOSTILE]
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_done_events_keep_only_their_dedup_mark_which_expires(
    store: RedisPipelineStore, raw: redis.Redis
) -> None:
    store.add([Event("a", "c1", "x" * 1000), Event("b", "c1", "y")], retention=0.3)
    queue, bodies, seen = store._inbox_keys("c1")
    assert 0 < raw.pttl(seen) <= 300
    store.finish("c1", ["a", "b"])
    assert not raw.exists(queue, bodies)  # no event text is kept once done
    assert store.add([Event("a", "c1", "again")], retention=0.3) == [False]
    time.sleep(0.35)
    # The marks expired: a redelivery now is a new event (the retention is the promise).
    assert store.add([Event("a", "c1", "late")], retention=60) == [True]
    assert raw.zcard(seen) == 1  # the expired mark of "b" went with that add
    assert 59_000 < raw.pttl(seen) <= 60_000


def test_every_operation_is_safe_when_its_reply_is_lost(
    manager: RedisStateManager, store: RedisPipelineStore
) -> None:
    def twice(command: Any) -> Any:
        # The manager's retry resends a command whose reply was lost: run each one twice.
        manager._execute(command)
        return manager._execute(command)

    def run(op: Any) -> Any:
        return run_sync(op, twice)

    events = [("a", Event("a", "c1", "1").to_json()), ("b", Event("b", "c1", "2").to_json())]
    run(store._add_op("c1", events, 60_000, now_ms()))
    assert [e.key for e in store.pending("c1")] == ["a", "b"]
    got = run(store._take_op(now_ms(), 30_000, "w1"))
    assert got is None  # the repeat found c1 leased (to w1): only a lease's delay, nothing lost
    assert store.take("w2", 30) is None
    entry: bytes = manager._execute(("HGET", store._work, "c1"))
    assert entry.endswith(b",w1")  # ready,stamp,until,owner
    taken = Taken("c1", "w1", int(entry.split(b",")[1]))
    assert run(store._renew_op("c1", "w1", now_ms() + 30_000))
    run(store._finish_op("c1", ["a"]))
    assert [e.key for e in store.pending("c1")] == ["b"]
    run(store._release_op("c1", "w1", taken.stamp, now_ms() - 1))
    again = store.take("w2", 30)
    assert again is not None
    assert again.chat_id == "c1"
    letter = DeadLetter("event:b", "c1", "event", "{}", "boom", 1.0)
    run(store._park_op(letter))
    assert store.dead_letters() == [letter]


def test_a_stale_release_keeps_the_new_owners_lease(store: RedisPipelineStore) -> None:
    store.add([Event("a", "c1", "x")])
    first = store.take("w1", 0.1)
    assert first is not None
    time.sleep(0.15)
    second = store.take("w2", 0.3)  # w1's lease ended: w2 takes over (same stamp)
    assert second is not None
    store.release(first, None)  # w1 wakes up late and releases
    assert store.take("w3", 30) is None  # still w2's
    time.sleep(0.35)  # w2 died without a release: its chat comes back
    back = store.take("w3", 30)
    assert back is not None
    assert back.chat_id == "c1"


def test_take_skips_nothing_with_many_leased_chats_and_timers(store: RedisPipelineStore) -> None:
    now = time.time()
    for n in range(300):
        store.add([Event(f"e{n}", f"busy{n}", "x")])
    leased = [store.take("w", 60) for _ in range(300)]
    assert all(leased)
    for n in range(300):
        store.add([Event(f"news{n}", f"busy{n}", "x")])  # news for every leased chat
    for n in range(2000):
        store.schedule(f"timer{n}", now + 3600 + n)
    store.add([Event("x", "free", "x")])
    got = store.take("w", 60)
    assert got is not None
    assert got.chat_id == "free"
    # An idle worker's next look is the first lease's end, not the leased chats' news.
    nxt = store.next_ready()
    assert nxt is not None
    assert nxt > now + 30


def test_a_flushed_script_cache_is_reloaded(store: RedisPipelineStore, raw: redis.Redis) -> None:
    store.add([Event("a", "c1", "x")])
    raw.script_flush()
    assert store.add([Event("b", "c1", "x")]) == [True]
    assert store.take("w", 30) is not None


def test_pipeline_keys_are_not_listed_as_chats(
    manager: RedisStateManager, store: RedisPipelineStore
) -> None:
    manager.set_state("real", "start", {})
    store.add([Event("a", "inbox-only", "x")])
    store.park(DeadLetter("d", "inbox-only", "event", "{}", "e", 1.0))
    assert [info.chat_id for info in manager.iter_chats()] == ["real"]


def test_a_server_that_is_down_is_a_clear_error() -> None:
    manager = RedisStateManager(port=free_port(), socket_timeout=0.5)
    with pytest.raises(StateManagerUnavailableError, match="inbox of 'c1'"):
        manager.pipeline_store().add([Event("a", "c1", "x")])
    with pytest.raises(StateManagerUnavailableError):
        manager.pipeline_store().take("w", 30)


def test_the_same_store_from_racing_threads(manager: RedisStateManager) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        stores = set(map(id, pool.map(lambda _: manager.pipeline_store(), range(64))))
    assert len(stores) == 1


@pytest.mark.slow
def test_a_cluster_with_the_native_async_client(cluster_ports: list[int]) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    client = RedisCluster("127.0.0.1", cluster_ports[0])
    chats = [f"user-{n}" for n in range(40)] + HOSTILE

    async def main() -> set[str]:
        twin = AsyncRedisCluster("127.0.0.1", cluster_ports[0], driver_info=None)
        manager = RedisStateManager(client=client, async_client=twin)
        store = manager.pipeline_store()
        await asyncio.gather(
            *(store.add_async([Event(f"k{n}", chat, "x")]) for n, chat in enumerate(chats))
        )
        taken = set()
        while (got := await store.take_async("w", 30)) is not None:
            events = await store.pending_async(got.chat_id)
            assert [e.chat_id for e in events] == [got.chat_id]
            await store.finish_async(got.chat_id, [e.key for e in events])
            await store.release_async(got, None)
            taken.add(got.chat_id)
        assert await store.next_ready_async() is None
        await manager.close_async()
        return taken

    assert asyncio.run(main()) == set(chats)
    manager = RedisStateManager(client=client)
    inbox_nodes = {
        client.get_node_from_key(manager.pipeline_store()._inbox_keys(chat)[0]).port  # type: ignore[no-untyped-call]
        for chat in chats
    }
    assert inbox_nodes == set(cluster_ports)  # inboxes spread over every master
    client.close()
