"""The PipelineStore contract, on every store that holds the pipeline (real servers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat_orchestrator.errors import PipelineError, StoreCapabilityError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.store import DeadLetter, PipelineStore
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from tests.pipeline.conftest import PipeFactory


def ev(key: str, chat: str = "c1", text: str | None = "hi") -> Event:
    return Event(key, chat, text)


@pytest.fixture
def store(pipe_manager: StateManager) -> PipelineStore:
    return pipe_manager.pipeline_store()


def test_the_same_manager_gives_the_same_store(pipe_manager: StateManager) -> None:
    assert pipe_manager.pipeline_store() is pipe_manager.pipeline_store()


def test_events_are_deduplicated_by_key_and_kept_in_order(store: PipelineStore) -> None:
    assert store.add([ev("a"), ev("b"), ev("a")]) == [True, True, False]
    assert store.add([ev("b"), ev("c")]) == [False, True]
    assert [e.key for e in store.pending("c1")] == ["a", "b", "c"]
    store.finish("c1", ["a"])
    assert [e.key for e in store.pending("c1")] == ["b", "c"]
    # A finished key stays seen: Meta's redelivery days later stores nothing.
    assert store.add([ev("a")]) == [False]
    assert [e.key for e in store.pending("c1", limit=1)] == ["b"]


def test_an_event_round_trips_every_field(store: PipelineStore) -> None:
    odd = Event(
        "k\u00e9\U0001f600:1",
        "chat \u00e9\U0001f600 ",
        "t\u00e9xt\n",
        "button",
        "wa",
        {"id": "opt-1", "n": [1, 2.5, None, True]},
    )
    store.add([odd])
    assert store.pending(odd.chat_id) == [odd]


def test_chats_are_independent(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    store.add([ev("a2", "c2")])
    assert [e.key for e in store.pending("c2")] == ["a2"]
    store.finish("c2", ["a2"])
    assert [e.key for e in store.pending("c1")] == ["a"]


def test_bad_events_are_refused_and_nothing_is_stored(store: PipelineStore) -> None:
    for bad in (
        Event("", "c1", "x"),
        Event("k", "", "x"),
        Event("k", "c1", "x\ud800"),
        Event("k", "c1", "x", data={"f": float("nan")}),
        Event("k", "c1", "x", data={"o": object()}),
    ):
        with pytest.raises((PipelineError, ValueError)):
            store.add([bad])
    with pytest.raises(PipelineError):
        store.add([ev("a", "c1"), ev("b", "c2")])
    assert store.pending("c1") == []
    assert store.take("w", 5) is None


def test_take_leases_one_ready_chat_at_a_time(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    taken = store.take("w1", 30)
    assert taken is not None
    assert taken.chat_id == "c1"
    assert store.take("w2", 30) is None  # leased
    store.release(taken, None)
    assert store.take("w2", 30) is None  # nothing left to do
    assert store.next_ready() is None


def test_news_during_a_lease_keeps_the_chat_ready(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    taken = store.take("w1", 30)
    assert taken is not None
    store.add([ev("b", "c1")])  # arrives while w1 works: w1's release must not lose it
    assert store.take("w2", 30) is None  # still leased to w1
    store.release(taken, None)
    again = store.take("w2", 30)
    assert again is not None
    assert again.chat_id == "c1"


def test_a_crashed_workers_chat_comes_back_after_its_lease(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    assert store.take("w1", 0.2) is not None
    assert store.take("w2", 30) is None
    time.sleep(0.3)
    again = store.take("w2", 30)
    assert again is not None
    assert again.chat_id == "c1"


def test_renew_keeps_the_lease_and_only_for_its_owner(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    taken = store.take("w1", 0.3)
    assert taken is not None
    assert store.renew(taken, 30)
    time.sleep(0.4)
    assert store.take("w2", 30) is None
    from chat_orchestrator.pipeline.store import Taken

    assert not store.renew(Taken("c1", "intruder", taken.stamp), 30)


def test_release_with_a_later_time_schedules_the_chat(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    taken = store.take("w1", 30)
    assert taken is not None
    store.release(taken, time.time() + 0.3)
    assert store.take("w2", 30) is None
    nxt = store.next_ready()
    assert nxt is not None
    assert nxt > time.time()
    time.sleep(0.35)
    assert store.take("w2", 30) is not None


def test_schedule_only_moves_a_chat_earlier(store: PipelineStore) -> None:
    store.schedule("c1", time.time() + 100)
    store.schedule("c1", time.time() + 0.1)
    store.schedule("c1", time.time() + 200)
    time.sleep(0.15)
    assert store.take("w", 30) is not None


def test_the_lowest_ready_chat_is_taken_first(store: PipelineStore) -> None:
    now = time.time()
    store.schedule("late", now - 1)
    store.schedule("early", now - 5)
    first = store.take("w", 30)
    second = store.take("w", 30)
    assert first is not None
    assert second is not None
    assert (first.chat_id, second.chat_id) == ("early", "late")


def test_dead_letters_are_listed_replaced_and_dropped(store: PipelineStore) -> None:
    one = DeadLetter("event:a", "c1", "event", ev("a").to_json(), "StepError: boom", 1.0)
    two = DeadLetter("send:c2:1", "c2", "send", '{"n":1}', "permanent", 2.0)
    store.park(one)
    store.park(two)
    store.park(one)  # the same id again (a crash between park and commit) replaces it
    assert [d.id for d in store.dead_letters()] == ["event:a", "send:c2:1"]
    assert store.dead_letters(chat_id="c2") == [two]
    assert store.drop_dead("event:a")
    assert not store.drop_dead("event:a")
    assert store.dead_letters() == [two]


def test_the_async_face_sees_the_same_store(store: PipelineStore) -> None:
    async def main() -> None:
        assert await store.add_async([ev("a")]) == [True]
        assert await store.add_async([ev("a")]) == [False]
        assert [e.key for e in await store.pending_async("c1")] == ["a"]
        taken = await store.take_async("w", 30)
        assert taken is not None
        await store.finish_async("c1", ["a"])
        await store.release_async(taken, None)
        assert await store.next_ready_async() is None

    asyncio.run(main())
    assert store.pending("c1") == []


def test_two_managers_on_one_store_share_the_pipeline(pipe_factory: PipeFactory) -> None:
    first, second = pipe_factory(), pipe_factory()
    first.pipeline_store().add([ev("a")])
    assert second.pipeline_store().add([ev("a")]) == [False]
    taken = second.pipeline_store().take("w", 30)
    assert taken is not None
    assert taken.chat_id == "c1"


def test_the_file_store_declines_naming_the_stores_that_can(tmp_path: object) -> None:
    manager = FileStateManager(state_dir=str(tmp_path))
    with pytest.raises(StoreCapabilityError, match=r"sqlite:.*redis:.*mongodb:"):
        manager.pipeline_store()


def test_a_late_release_never_strands_the_new_holders_chat(store: PipelineStore) -> None:
    store.add([ev("a", "c1")])
    first = store.take("w1", 0.2)
    assert first is not None
    time.sleep(0.3)
    second = store.take("w2", 0.3)  # w1's lease ended: w2 takes the chat over
    assert second is not None
    store.release(first, None)  # w1 comes back late, with an unchanged stamp
    assert store.take("w3", 30) is None  # still w2's
    time.sleep(0.4)  # w2 died without releasing: the chat must come back
    third = store.take("w3", 30)
    assert third is not None
    assert third.chat_id == "c1"
