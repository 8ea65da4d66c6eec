"""Issue 8: contexts through the class API on every backend; a failed release hides nothing."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from chat_orchestrator._jsonctx import MAX_CONTEXT_DEPTH
from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import (
    ContextSerializationError,
    StateManagerUnavailableError,
    StepError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager, TurnLease
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import ConversationTester, RecordingSender
from chat_orchestrator.testing.conformance import nested_context


class Bag(BaseModel):
    n: int = 0
    extra: Any = None


CLASS_API_BAD: dict[str, Any] = {
    "too deep": nested_context(MAX_CONTEXT_DEPTH),  # the model itself is one more level
    "depth 2000": nested_context(2000),
    "lone surrogate": "\ud800",
}


class Stash(Conversation[Bag]):
    @state(initial=True)
    def start(self, turn: Turn[Bag]) -> Literal["start"]:
        turn.context.n += 1
        if turn.text in CLASS_API_BAD:
            turn.context.extra = CLASS_API_BAD[turn.text]
        elif turn.text == "deepest":
            turn.context.extra = nested_context(MAX_CONTEXT_DEPTH - 1)
        return "start"


@pytest.mark.parametrize("name", sorted(CLASS_API_BAD))
def test_class_api_refuses_contexts_no_backend_may_store(manager: StateManager, name: str) -> None:
    tester = ConversationTester(Stash, state_manager=manager, chat_id="c")
    tester.send(None)
    before = manager.load("c")
    with pytest.raises(ContextSerializationError):
        tester.send(name)
    assert manager.load("c") == before
    tester.send("deepest")  # exactly at the limit: stored and loaded back
    assert tester.context.extra == nested_context(MAX_CONTEXT_DEPTH - 1)


class _FailingRelease(TurnLease):
    def close(self) -> None:
        super().close()
        raise StateManagerUnavailableError("backend gone while trying to unlock")


class FailingCloseManager(InMemoryStateManager):
    def begin_turn(self, chat_id: str) -> TurnLease:
        return _FailingRelease(self, chat_id)


def test_a_failed_release_never_replaces_the_steps_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = FailingCloseManager()
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        raise KeyError("the step's own bug")

    with (
        caplog.at_level(logging.WARNING, logger="chat_orchestrator.orchestrator"),
        pytest.raises(StepError) as raised,
    ):
        orchestrator.handle_message("c", "hi")
    error = raised.value
    assert isinstance(error.__cause__, KeyError), "the step's traceback is kept"
    assert any("backend gone" in note for note in getattr(error, "__notes__", []))
    assert [r for r in caplog.records if "could not release chat 'c'" in r.getMessage()]
    assert manager.load("c") is None


def test_a_failed_release_after_a_good_turn_is_still_raised() -> None:
    """Without a turn error to protect, the release failure is the error."""
    manager = FailingCloseManager()
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {}

    with pytest.raises(StateManagerUnavailableError):
        orchestrator.handle_message("c", "hi")


class Constants(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    x: float = 0.0


class NaNFlow(Conversation[Constants]):
    @state(initial=True)
    def start(self, turn: Turn[Constants]) -> Literal["start"]:
        turn.context.x = float(turn.text or "0")
        return "start"


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_class_api_refuses_nan_constants_that_would_not_load_back(
    manager: StateManager, text: str
) -> None:
    tester = ConversationTester(NaNFlow, state_manager=manager, chat_id="c")
    tester.send("1.5")
    before = manager.load("c")
    with pytest.raises(ContextSerializationError):
        tester.send(text)
    assert manager.load("c") == before
    tester.send("2.5")
    assert tester.context.x == 2.5
