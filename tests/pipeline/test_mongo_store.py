"""What is special to the MongoDB pipeline store (on nx-27017): its documents, TTL and races."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest

from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from tests.conftest import _unique, mongo_uri

Factory = Callable[[], MongoDBStateManager]


@pytest.fixture
def factory(request: pytest.FixtureRequest) -> Iterator[Factory]:
    uri = mongo_uri(request, real=False)
    database = f"test_{os.getpid()}_{next(_unique)}"
    yield lambda: MongoDBStateManager(uri, database=database, lock_lease=5)
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


def inbox(manager: MongoDBStateManager) -> Any:
    return manager._targets["pipe_inbox"]


def test_a_done_event_keeps_only_its_key_and_a_ttl_date(factory: Factory) -> None:
    manager = factory()
    store = manager.pipeline_store()
    store.add([Event("a", "c1", "secret"), Event("b", "c1", "other")])
    store.finish("c1", ["a"])
    done = inbox(manager).find_one({"_id": "a"})
    pending = inbox(manager).find_one({"_id": "b"})
    assert done["st"] == "d"
    assert "b" not in done  # the text is gone
    assert "exp" in done  # the TTL index deletes it when the retention ends
    assert "ux" not in done
    assert "exp" not in pending  # a pending event is never deleted by the TTL monitor
    names = {
        tuple(dict(info["key"]))
        for info in inbox(manager).list_indexes()
        if info.get("expireAfterSeconds") == 0
    }
    assert names == {("exp",)}


def test_an_expired_done_key_is_new_again_before_the_ttl_monitor_runs(factory: Factory) -> None:
    store = factory().pipeline_store()
    store.add([Event("a", "c1", "x")], retention=0.05)
    store.finish("c1", ["a"])
    assert store.add([Event("a", "c1", "x")]) == [False]
    time.sleep(0.1)
    assert store.add([Event("a", "c1", "later")]) == [True]
    assert [e.user_input for e in store.pending("c1")] == ["later"]
    # A pending event past its retention still deduplicates (it was never done).
    store.add([Event("p", "c1", "x")], retention=0.01)
    time.sleep(0.05)
    assert store.add([Event("p", "c1", "x")]) == [False]


def test_seqs_keep_arrival_order_across_adds_and_managers(factory: Factory) -> None:
    first, second = factory().pipeline_store(), factory().pipeline_store()
    for n in range(10):
        (first if n % 2 else second).add([Event(f"k{n}", "c1", "x"), Event(f"j{n}", "c1", "y")])
    expected = [key for n in range(10) for key in (f"k{n}", f"j{n}")]
    assert [e.key for e in first.pending("c1", limit=100)] == expected


def test_racing_workers_take_each_ready_chat_once(factory: Factory) -> None:
    setup = factory().pipeline_store()
    chats = [f"c{n}" for n in range(40)]
    for chat in chats:
        setup.add([Event(f"k-{chat}", chat, "x")])
    taken: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        store = factory().pipeline_store()  # own client: as another process
        try:
            while (got := store.take(f"w{n}", 30)) is not None:
                with lock:
                    taken.append(got.chat_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(taken) == sorted(chats)


def test_a_late_release_after_another_worker_took_the_chat(factory: Factory) -> None:
    store = factory().pipeline_store()
    store.add([Event("a", "c1", "x")])
    slow = store.take("slow", 0.05)
    assert slow is not None
    time.sleep(0.1)
    fast = store.take("fast", 30)
    assert fast is not None
    store.add([Event("b", "c1", "y")])  # news while fast works
    store.release(slow, None)  # slow's late release: neither its lease nor its stamp
    assert store.take("w", 30) is None  # still fast's
    store.release(fast, None)  # news arrived: the chat stays ready
    again = store.take("w", 30)
    assert again is not None
    assert again.chat_id == "c1"
    store.release(again, None)
    assert store.next_ready() is None
    assert manager_work_count(store) == 0  # an idle chat leaves no work document behind


def manager_work_count(store: Any) -> int:
    return int(store._manager._targets["pipe_work"].count_documents({}))


def test_the_pipeline_collections_sit_beside_the_records(factory: Factory) -> None:
    manager = factory()
    manager.pipeline_store().add([Event("a", "c1", "x")])
    names = set(manager._collection.database.list_collection_names())
    assert {"chat_states_pipe_inbox", "chat_states_pipe_seq", "chat_states_pipe_work"} <= names
