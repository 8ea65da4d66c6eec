"""``@state(timeout=..., on_timeout=...)``: checked at class definition, fired by workers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel

from chat_orchestrator import Conversation, RecordingSender, Turn, state
from chat_orchestrator._migrations import Migration
from chat_orchestrator.errors import ConversationDefinitionError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.state_managers.base import StateManager


class Order(BaseModel):
    item: str | None = None
    nudges: int = 0


class Shop(Conversation[Order]):
    @state(initial=True, timeout=timedelta(seconds=0.2), on_timeout="nudge")
    def ask(self, turn: Turn[Order]) -> Literal["ask", "done"]:
        if turn.text:
            turn.context.item = turn.text
            turn.send(f"ordered {turn.text}")
            return "done"
        turn.send("what would you like?")
        return "ask"

    @state(to=["ask"])
    def nudge(self, turn: Turn[Order]) -> str:
        assert turn.timed_out
        assert turn.text is None
        assert turn.event is not None
        assert turn.event.data["state"] == "ask"
        turn.context.nudges += 1
        turn.send("still there?")
        return "ask"

    @state(final=True)
    def done(self, turn: Turn[Order]) -> Literal["done"]:
        turn.send("already ordered")
        return "done"


def test_a_state_timeout_runs_its_step_once_per_silence(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    shop = Shop(pipe_manager, sender)
    store = pipe_manager.pipeline_store()
    worker = Worker(shop)
    store.add([Event("m1", "c1", None)])
    worker.drain()
    assert sender.texts() == ["what would you like?"]
    time.sleep(0.3)
    worker.drain()
    assert sender.texts() == ["what would you like?", "still there?"]
    # The nudge returned to "ask", which re-arms the timeout; an answer in time disarms it.
    store.add([Event("m2", "c1", "tea")])
    worker.drain()
    time.sleep(0.3)
    worker.drain()
    assert sender.texts()[-1] == "ordered tea"
    context = shop.context_of("c1")
    assert context is not None
    assert context.nudges == 1
    assert context.item == "tea"
    assert shop.state_of("c1") == "done"


def test_the_step_itself_may_not_return_the_timeout_state_unless_declared(
    pipe_manager: StateManager,
) -> None:
    shop = Shop(pipe_manager, RecordingSender())
    assert shop.orchestrator.states["ask"] == frozenset({"ask", "done"})
    assert shop.orchestrator.timeouts == {"ask": (0.2, "nudge")}


def test_an_unknown_timeout_target_is_a_definition_error() -> None:
    with pytest.raises(ConversationDefinitionError, match="nowhere"):

        class Bad(Conversation[Order]):
            @state(initial=True, timeout=5, on_timeout="nowhere")
            def ask(self, turn: Turn[Order]) -> Literal["ask"]:
                return "ask"


@pytest.mark.parametrize(
    ("timeout", "on_timeout", "problem"),
    [
        (5, None, "go together"),
        (None, "ask", "go together"),
        (-1, "ask", "positive"),
        (float("nan"), "ask", "positive"),
        ("soon", "ask", "timedelta or seconds"),
    ],
)
def test_bad_timeouts_are_definition_errors(
    timeout: Any, on_timeout: str | None, problem: str
) -> None:
    with pytest.raises(ConversationDefinitionError, match=problem):

        class Bad(Conversation[Order]):
            @state(initial=True, timeout=timeout, on_timeout=on_timeout)
            def ask(self, turn: Turn[Order]) -> Literal["ask"]:
                return "ask"


def test_direct_turns_do_not_arm_timeouts(pipe_manager: StateManager) -> None:
    shop = Shop(pipe_manager, RecordingSender())
    shop.handle_message("c1", None)
    record = pipe_manager.load("c1")
    assert record is not None
    assert "__pipeline__" not in record.context


class StrictOrder(BaseModel, extra="forbid"):
    item: str | None = None


class StrictShop(Conversation[StrictOrder]):
    schema_version = 2
    migrations: ClassVar[Mapping[int, Migration]] = {1: lambda old: {"item": old.get("thing")}}

    @state(initial=True, timeout=60, on_timeout="ask")
    def ask(self, turn: Turn[StrictOrder]) -> Literal["ask"]:
        turn.send("hello")
        return "ask"


def test_a_strict_context_never_sees_the_section_and_migration_keeps_it(
    pipe_manager: StateManager,
) -> None:
    shop = StrictShop(pipe_manager, RecordingSender())
    pipe_manager.pipeline_store().add([Event("m1", "c1", None)])
    Worker(shop).drain()
    assert shop.context_of("c1") == StrictOrder()
    record = pipe_manager.load("c1")
    assert record is not None
    # Pretend the record predates schema 2: the upgrade keeps the armed timeout.
    old = {k: v for k, v in record.context.items() if k != "__schema_version__"}
    pipe_manager.set_state("c1", "ask", {**old, "thing": "tea"})
    stale = pipe_manager.load("c1")
    assert stale is not None
    update = StrictShop.upgrade_record(stale, chat_id="c1")
    assert update is not None
    assert update.context["item"] == "tea"
    assert "__timeout__" in update.context["__pipeline__"]["timers"]
