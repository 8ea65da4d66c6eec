"""The turn loop: what a step may return, and that a failed turn stores nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from chat_orchestrator.errors import (
    ChatOrchestratorError,
    ContextSerializationError,
    InvalidChatIdError,
    InvalidStepResultError,
    StateManagerError,
    StepError,
    TransitionError,
    TurnError,
    UnknownStateError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager, StateRecord
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import DictSeedManager

Ctx = dict[str, Any]


def build(manager: StateManager, sender: MessageSender, bad_result: object) -> ChatOrchestrator:
    """start -> ask (stores {"step": 1}); ask returns ``bad_result``."""
    orchestrator = ChatOrchestrator(manager, sender)

    @orchestrator.register_step("start")
    def start(chat_id: str, text: str | None, context: Ctx, sender: MessageSender) -> Any:
        sender.send_message(chat_id, "hello")
        return "ask", {"step": 1, "nested": {"list": [1, 2.5, "x", None, True]}}

    @orchestrator.register_step("ask")
    def ask(chat_id: str, text: str | None, context: Ctx, sender: MessageSender) -> Any:
        context["step"] = 999  # mutating the loaded dict must not leak into storage
        if isinstance(bad_result, Exception):
            raise bad_result
        return bad_result

    return orchestrator


class Opaque:
    pass


BAD_RESULTS: list[tuple[str, object, type[TurnError]]] = [
    ("raises", RuntimeError("boom"), StepError),
    ("none", None, InvalidStepResultError),
    ("list", ["start", {}], InvalidStepResultError),
    ("one-tuple", ("start",), InvalidStepResultError),
    ("three-tuple", ("start", {}, 1), InvalidStepResultError),
    ("int-state", (1, {}), InvalidStepResultError),
    ("none-context", ("start", None), InvalidStepResultError),
    ("unknown-state", ("nowhere", {}), UnknownStateError),
    ("set", ("start", {"s": {1, 2}}), ContextSerializationError),
    ("object", ("start", {"o": Opaque()}), ContextSerializationError),
    ("nan", ("start", {"x": math.nan}), ContextSerializationError),
    ("inf", ("start", {"x": [math.inf]}), ContextSerializationError),
    ("int-key", ("start", {1: "a"}), ContextSerializationError),
    ("nested-int-key", ("start", {"a": [{"b": {2: 3}}]}), ContextSerializationError),
    ("tuple", ("start", {"t": (1, 2)}), ContextSerializationError),
    ("bytes", ("start", {"b": b"x"}), ContextSerializationError),
]


@pytest.mark.parametrize(
    ("bad_result", "error"),
    [(value, error) for _, value, error in BAD_RESULTS],
    ids=[name for name, _, _ in BAD_RESULTS],
)
def test_bad_step_result_is_a_clear_error_and_stores_nothing(
    manager: StateManager, sender: RecordingSender, bad_result: object, error: type[TurnError]
) -> None:
    orchestrator = build(manager, sender, bad_result)
    assert orchestrator.handle_message("chat-1", None) == "ask"
    before = manager.load("chat-1")

    with pytest.raises(error) as raised:
        orchestrator.handle_message("chat-1", "input")

    assert raised.value.chat_id == "chat-1"
    assert raised.value.state_id == "ask"
    assert "'chat-1'" in str(raised.value)
    assert "'ask'" in str(raised.value)
    assert manager.load("chat-1") == before
    assert before is not None
    assert before.context == {"step": 1, "nested": {"list": [1, 2.5, "x", None, True]}}


def test_step_error_chains_the_original(manager: StateManager, sender: RecordingSender) -> None:
    original = KeyError("missing")
    orchestrator = build(manager, sender, original)
    orchestrator.handle_message("c", None)
    with pytest.raises(StepError) as raised:
        orchestrator.handle_message("c", "x")
    assert raised.value.__cause__ is original
    assert isinstance(raised.value, ChatOrchestratorError)


def test_stored_state_without_a_step_is_reported_and_kept(
    manager: StateManager, sender: RecordingSender
) -> None:
    manager.set_state("c", "removed_step", {"kept": True})
    orchestrator = build(manager, sender, ("start", {}))
    with pytest.raises(UnknownStateError, match="stored state 'removed_step'"):
        orchestrator.handle_message("c", "hi")
    assert manager.get_state("c") == ("removed_step", {"kept": True})


def test_missing_initial_step_is_reported(manager: StateManager, sender: RecordingSender) -> None:
    orchestrator = ChatOrchestrator(manager, sender, initial_state="begin")
    with pytest.raises(UnknownStateError, match="initial state 'begin'"):
        orchestrator.handle_message("c", None)
    assert manager.load("c") is None


@pytest.mark.parametrize("chat_id", [None, 5, b"bytes", {"$ne": None}, ["a"], "", "\ud800"])
def test_bad_chat_ids_are_rejected_before_any_storage(
    manager: StateManager, sender: RecordingSender, chat_id: Any
) -> None:
    orchestrator = build(manager, sender, ("start", {}))
    with pytest.raises(InvalidChatIdError):
        orchestrator.handle_message(chat_id, None)
    assert sender.sent == []


def test_declared_transitions_are_enforced(manager: StateManager, sender: RecordingSender) -> None:
    orchestrator = ChatOrchestrator(manager, sender)

    @orchestrator.register_step("start", to=["start"])
    def start(chat_id: str, text: str | None, context: Ctx, sender: MessageSender) -> Any:
        return ("other" if text == "jump" else "start"), {"n": 1}

    @orchestrator.register_step("other")
    def other(chat_id: str, text: str | None, context: Ctx, sender: MessageSender) -> Any:
        return "start", {}

    orchestrator.handle_message("c", None)
    before = manager.load("c")
    with pytest.raises(TransitionError, match=r"returned 'other', declared only \[start\]"):
        orchestrator.handle_message("c", "jump")
    assert manager.load("c") == before


def test_a_users_own_seed_manager_and_sender_work() -> None:
    """Both custom classes implement only the original methods."""

    class PlainSender(MessageSender):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def send_message(
            self, chat_id: str, text: str, options: dict[str, Any] | None = None
        ) -> str | None:
            self.lines.append(f"{chat_id}: {text}")
            return None

    manager, sender = DictSeedManager(), PlainSender()
    orchestrator = build(manager, sender, ("start", {"done": True}))
    orchestrator.handle_message("u", None)
    orchestrator.handle_message("u", "x")
    assert sender.lines == ["u: hello"]
    assert manager.data["u"] == ("start", {"done": True})
    orchestrator.handle_message("u", None)
    assert sender.lines == ["u: hello", "u: hello"]
    assert manager.get_state("u") == (
        "ask",
        {"step": 1, "nested": {"list": [1, 2.5, "x", None, True]}},
    )


def test_foreign_exception_from_a_manager_is_wrapped() -> None:
    class Broken(DictSeedManager):
        def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
            raise OSError("disk on fire")

    orchestrator = build(Broken(), RecordingSender(), ("start", {}))
    with pytest.raises(StateManagerError, match="disk on fire") as raised:
        orchestrator.handle_message("c", None)
    assert isinstance(raised.value.__cause__, OSError)


def test_user_input_reaches_the_step_unchanged(sender: RecordingSender) -> None:
    seen: list[str | None] = []
    orchestrator = ChatOrchestrator(InMemoryStateManager(), sender)

    @orchestrator.register_step("start")
    def start(chat_id: str, text: str | None, context: Ctx, sender: MessageSender) -> Any:
        seen.append(text)
        return "start", {}

    inputs = [None, "", "x" * 100_000, "\x00\x01\x1b[31m\r\n", "ünï😀"]
    for text in inputs:
        orchestrator.handle_message("c", text)
    assert seen == inputs


def test_reset_forgets_the_chat(manager: StateManager, sender: RecordingSender) -> None:
    orchestrator = build(manager, sender, ("start", {}))
    orchestrator.handle_message("c", None)
    orchestrator.reset("c")
    assert manager.load("c") is None
    assert orchestrator.handle_message("c", None) == "ask"


def test_registering_a_state_twice_is_refused() -> None:
    orchestrator = ChatOrchestrator(InMemoryStateManager(), RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: ("start", {}))
    with pytest.raises(ValueError, match="already registered"):
        orchestrator.add_step("start", lambda c, t, x, s: ("start", {}))


def test_record_versions_increase_and_contexts_are_fresh_copies(manager: StateManager) -> None:
    first = manager.save("c", "a", {"k": [1]}, expected_version=0)
    record = manager.load("c")
    assert record == StateRecord("a", {"k": [1]}, first)
    record.context["k"].append(2)
    assert manager.load("c") == StateRecord("a", {"k": [1]}, first)
