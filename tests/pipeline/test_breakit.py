"""A hostile reviewer's findings: each test failed on the code it was written against."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator, RecordingSender
from chat_orchestrator.errors import ContextSerializationError, PipelineError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.scope import schedule_timer
from chat_orchestrator.pipeline.section import PIPELINE_KEY
from chat_orchestrator.pipeline.worker import Worker, WorkerSettings
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

FAST = WorkerSettings(
    backoff=0.0, max_backoff=0.0, send_backoff=0.0, max_send_backoff=0.0, max_attempts=2
)


@pytest.fixture(params=["memory", "sqlite"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateManager]:
    built: StateManager = (
        InMemoryStateManager()
        if request.param == "memory"
        else SQLiteStateManager(tmp_path / "chats.db", lock_lease=5)
    )
    yield built
    built.close()


def _nested(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def test_direct_turn_cannot_store_the_reserved_pipeline_key(manager: StateManager) -> None:
    # Break: handle_message stored a step's "__pipeline__" as is when the chat had no section
    # yet; the next worker pass then read it as the pipeline's own and delivered a forged
    # outbox, here a message to another chat.
    sender = RecordingSender()
    bot = ChatOrchestrator(manager, sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {PIPELINE_KEY: {"out": [{"n": 1, "c": "victim", "t": "forged"}]}}

    with pytest.raises(ContextSerializationError):
        bot.handle_message("c", "hi")
    with pytest.raises(ContextSerializationError):
        asyncio.run(bot.handle_message_async("c", "hi"))
    assert manager.get_state("c") is None
    manager.pipeline_store().schedule("c", 0)
    Worker(bot, settings=FAST).drain(max_passes=5)
    assert [m.text for m in sender.sent] == []


HOSTILE_OUTPUTS = [
    "reserved-key",
    "timer-data-object",
    "timer-data-nan",
    "reply-lone-surrogate",
    "options-lone-surrogate",
    "reply-chat-lone-surrogate",
    "timer-name-lone-surrogate",
    "options-deep",
    "timer-data-deep",
]


def hostile_bot(manager: StateManager, sender: RecordingSender, mode: str) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "bad":
            if mode == "reserved-key":
                return "start", {PIPELINE_KEY: {"out": []}}
            if mode == "timer-data-object":
                schedule_timer("t", after=60, data={"x": object()})
            if mode == "timer-data-nan":
                schedule_timer("t", after=60, data={"x": float("nan")})
            if mode == "reply-lone-surrogate":
                sender.send_message(chat_id, "half a pair: \ud800")
            if mode == "options-lone-surrogate":
                sender.send_message(chat_id, "ok", {"k": "\ud800"})
            if mode == "reply-chat-lone-surrogate":
                sender.send_message("other\ud800", "ok")
            if mode == "timer-name-lone-surrogate":
                schedule_timer("t\ud800", after=60)
            if mode == "options-deep":
                sender.send_message(chat_id, "ok", _nested(150))
            if mode == "timer-data-deep":
                schedule_timer("t", after=60, data=_nested(150))
        sender.send_message(chat_id, f"echo:{text}")
        return "start", {"n": context.get("n", 0) + 1}

    return bot


@pytest.mark.parametrize("mode", HOSTILE_OUTPUTS)
def test_a_turn_whose_output_cannot_be_stored_is_parked_and_the_chat_goes_on(
    manager: StateManager, mode: str
) -> None:
    # Break: what a step handed the pipeline (its context, timers, replies) was encoded only
    # after the step's try. Unstorable output escaped the pass (no release; the worker loop
    # retried it forever), or failed the store's write (deferred forever), or, too deep, was
    # written and left the chat's record unreadable for good: never parked, the chat stuck.
    sender = RecordingSender()
    bot = hostile_bot(manager, sender, mode)
    store = manager.pipeline_store()
    store.add([Event("k-bad", "c", "bad"), Event("k-good", "c", "good")])
    Worker(bot, settings=FAST).drain(max_passes=20)
    assert [letter.id for letter in store.dead_letters()] == ["event:k-bad"]
    assert [m.text for m in sender.sent] == ["echo:good"]
    record = manager.get_state("c")
    assert record is not None
    assert record[1]["n"] == 1
    assert store.pending("c") == []


def test_an_event_replay_repeated_after_a_failure_runs_the_event_once(
    manager: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Break: each replay gave the copy a fresh key (the clock's), so an operator repeating a
    # replay whose drop failed (a store error, a killed CLI) queued the event twice, and the
    # conversation changed twice.
    from chat_orchestrator.errors import StateManagerError
    from chat_orchestrator.pipeline.operators import replay_letter

    sender = RecordingSender()
    failing = {"on": True}
    bot = ChatOrchestrator(manager, sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if failing["on"]:
            raise RuntimeError("down")
        return "start", {"n": context.get("n", 0) + 1}

    store = manager.pipeline_store()
    store.add([Event("k1", "c", "hi")])
    Worker(bot, settings=FAST).drain(max_passes=10)
    (letter,) = store.dead_letters()
    failing["on"] = False
    real_drop = type(store).drop_dead
    calls = {"n": 0}

    def drop_fails_once(self: Any, letter_id: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StateManagerError("the store went away")
        return real_drop(self, letter_id)

    monkeypatch.setattr(type(store), "drop_dead", drop_fails_once)
    with pytest.raises(StateManagerError):
        replay_letter(manager, letter.id)
    time.sleep(0.01)  # a later millisecond
    replay_letter(manager, letter.id)  # the operator tries again
    Worker(bot, settings=FAST).drain(max_passes=10)
    record = manager.get_state("c")
    assert record is not None
    assert record[1]["n"] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, True, "1"])
def test_store_times_out_of_range_get_the_librarys_error(manager: StateManager, bad: Any) -> None:
    # Break: NaN, infinities and huge times reached int() or SQLite: ValueError, OverflowError
    # (not of chat_orchestrator.errors); the memory store stored a ready_at of 10**303.
    from chat_orchestrator.errors import PipelineError
    from chat_orchestrator.pipeline.store import Taken

    store = manager.pipeline_store()
    calls: list[Callable[[], object]] = [
        lambda: store.schedule("c", bad),
        lambda: store.take("w", bad),
        lambda: store.take_pending("w", bad),
        lambda: store.add([Event("k", "c", "x")], retention=bad),
        lambda: store.renew(Taken("c", "w", 1), bad),
        lambda: store.release(Taken("c", "w", 1), bad),
        lambda: store.finish_release(Taken("c", "w", 1), [], bad),
    ]
    for call in calls:
        with pytest.raises(PipelineError):
            call()
    with pytest.raises(PipelineError):
        store.pending("c", "x")  # type: ignore[arg-type]
    with pytest.raises(PipelineError):
        store.dead_letters(limit="x")  # type: ignore[arg-type]
    assert store.next_ready() is None
    assert store.pending("c") == []


@pytest.mark.parametrize("when", [{"at": 10**400}, {"after": 10**400}, {"after": -(10**400)}])
def test_timers_beyond_any_float_are_a_pipeline_error(when: dict[str, Any]) -> None:
    from chat_orchestrator.pipeline.scope import TurnScope, open_scope

    with open_scope(TurnScope(Event("k", "c", None), time.time())), pytest.raises(PipelineError):
        schedule_timer("t", **when)
