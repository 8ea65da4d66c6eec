"""Every definition mistake is reported when the class statement runs, all at once."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import ConversationDefinitionError, DuplicateStepError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import ConversationTester, RecordingSender


class Ctx(BaseModel):
    n: int = 0


T = Turn[Ctx]


def problems_of(build: Any) -> list[str]:
    with pytest.raises(ConversationDefinitionError) as raised:
        build()
    return raised.value.problems


def test_no_initial_state() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state
            def a(self, turn: T) -> Literal["a"]:
                return "a"

    assert problems_of(build) == ["no initial state: mark exactly one state initial"]


def test_two_initial_states() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["b"]:
                return "b"

            @state(initial=True)
            def b(self, turn: T) -> Literal["a"]:
                return "a"

    assert problems_of(build) == ["more than one initial state: ['a', 'b']"]


def test_unknown_target() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["a", "nowhere"]:
                return "a"

    assert problems_of(build) == ["state 'a' declares unknown target(s) ['nowhere']"]


def test_unreachable_state() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["a"]:
                return "a"

            @state
            def island(self, turn: T) -> Literal["a"]:
                return "a"

    assert problems_of(build) == ["unreachable state(s) from 'a': ['island']"]


def test_non_final_state_with_no_way_out() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["trap"]:
                return "trap"

            @state(to=[])
            def trap(self, turn: T) -> str:
                return "trap"

    assert problems_of(build) == ["non-final state(s) with no way out: ['trap'] (declare a target)"]


def test_state_that_cannot_reach_the_final_state() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["loop", "end"]:
                return "end"

            @state
            def loop(self, turn: T) -> Literal["loop"]:
                return "loop"

            @state(final=True)
            def end(self, turn: T) -> Literal["end"]:
                return "end"

    assert problems_of(build) == ["state(s) with no path to a final state: ['loop']"]


def test_context_type_not_a_base_model() -> None:
    def build() -> None:
        class Flow(Conversation[dict]):  # type: ignore[type-var,type-arg]
            @state(initial=True)
            def a(self, turn: Any) -> Literal["a"]:
                return "a"

    assert problems_of(build) == [
        "context type <class 'dict'> is not a pydantic BaseModel subclass "
        "(write Conversation[YourModel])"
    ]


def test_context_type_missing_or_not_empty_constructible() -> None:
    class Needs(BaseModel):
        name: str

    def missing() -> None:
        class Flow(Conversation):  # type: ignore[type-arg]
            @state(initial=True)
            def a(self, turn: Any) -> Literal["a"]:
                return "a"

    def required_field() -> None:
        class Flow(Conversation[Needs]):
            @state(initial=True)
            def a(self, turn: Turn[Needs]) -> Literal["a"]:
                return "a"

    assert problems_of(missing) == ["no context type: subclass Conversation[YourModel]"]
    assert problems_of(required_field) == [
        "context type Needs cannot be built empty (fields ['name'] need defaults): "
        "a new chat starts with an empty context"
    ]


@pytest.mark.parametrize(
    "signature",
    ["(self)", "(self, turn, extra)", "(self, *, turn)", "(self, turn, *, flag)"],
)
def test_signature_the_engine_cannot_call(signature: str) -> None:
    namespace: dict[str, Any] = {"Literal": Literal}
    exec(  # noqa: S102 - builds the method under test from a signature string
        f"def a{signature} -> Literal['a']:\n    return 'a'\n", namespace
    )

    def build() -> None:
        types.new_class(
            "Flow",
            (Conversation[Ctx],),
            exec_body=lambda body: body.update(a=state(initial=True)(namespace["a"])),
        )

    (problem,) = problems_of(build)
    assert problem.startswith("state 'a' has signature (")
    assert problem.endswith("it must be (self, turn)")


def test_async_generator_state_is_refused() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            async def a(self, turn: T) -> AsyncIterator[str]:
                yield "a"

    assert "state 'a' must be a def or async def (not a generator)" in problems_of(build)


def test_name_clash_with_the_base_class() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def handle_message(self, turn: T) -> Literal["handle_message"]:  # type: ignore[override]
                return "handle_message"

    assert problems_of(build) == [
        "state 'handle_message' clashes with the Conversation base class attribute "
        "'handle_message'",
        "no states: decorate at least one method with @state",
    ]


def test_targets_must_be_declared() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> str:
                return "a"

    assert problems_of(build) == [
        "state 'a' declares no next states: annotate -> Literal[...] or use @state(to=[...])"
    ]


def test_several_mistakes_are_listed_together() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def a(self, turn: T) -> Literal["b", "ghost"]:
                return "b"

            @state(initial=True)
            def b(self, turn: T) -> Literal["a"]:
                return "a"

            @state
            def c(self) -> Literal["a"]:
                return "a"

            @state
            def reset(self, turn: T) -> Literal["a"]:  # type: ignore[override]
                return "a"

    with pytest.raises(ConversationDefinitionError) as raised:
        build()
    assert raised.value.problems == [
        "state 'c' has signature (self); it must be (self, turn)",
        "state 'reset' clashes with the Conversation base class attribute 'reset'",
        "more than one initial state: ['a', 'b']",
        "state 'a' declares unknown target(s) ['ghost']",
    ]
    assert "Flow is not a valid conversation (4 problems)" in str(raised.value)


class Base(Conversation[Ctx]):
    @state(initial=True)
    def start(self, turn: T) -> Literal["start", "extra"]:
        turn.send("base")
        return "extra" if turn.text == "go" else "start"

    @state
    def extra(self, turn: T) -> Literal["start"]:
        return "start"


def test_inherited_conversation_adds_a_state_and_is_validated_again() -> None:
    class Extended(Base):
        @state
        def extra(self, turn: T) -> Literal["more"]:  # type: ignore[override]  # mypy: a narrower contract
            turn.send("extended")
            return "more"

        @state
        def more(self, turn: T) -> Literal["start"]:
            return "start"

    assert set(Extended.flow.states) == {"start", "extra", "more"}
    tester = ConversationTester(Extended)
    tester.send("go")
    assert tester.send("x") == ["extended"]
    assert tester.state == "more"

    def broken() -> None:
        class Orphaned(Base):
            @state
            def orphan(self, turn: T) -> Literal["start"]:
                return "start"

    assert problems_of(broken) == ["unreachable state(s) from 'start': ['orphan']"]


def test_abstract_intermediate_base_is_not_validated() -> None:
    class Shared(Conversation[Ctx], abstract=True):
        def helper(self) -> str:
            return "shared"

    class Concrete(Shared):
        @state(initial=True)
        def start(self, turn: T) -> Literal["start"]:
            turn.send(self.helper())
            return "start"

    assert ConversationTester(Concrete).send(None) == ["shared"]
    with pytest.raises(TypeError, match="abstract"):
        Shared(InMemoryStateManager(), RecordingSender())


def test_decorator_api_validate_uses_the_same_checks() -> None:
    orchestrator = ChatOrchestrator(InMemoryStateManager(), RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: ("ask", {}), to=["ask", "ghost"])
    orchestrator.add_step("ask", lambda c, t, x, s: ("ask", {}), to=[])
    orchestrator.add_step("island", lambda c, t, x, s: ("start", {}), to=["start"])
    with pytest.raises(ConversationDefinitionError) as raised:
        orchestrator.validate()
    assert raised.value.problems == [
        "state 'start' declares unknown target(s) ['ghost']",
        "unreachable state(s) from 'start': ['island']",
        "non-final state(s) with no way out: ['ask'] (declare a target)",
    ]

    orchestrator = ChatOrchestrator(InMemoryStateManager(), RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: ("ask", {}), to=["ask"])
    orchestrator.add_step("ask", lambda c, t, x, s: ("ask", {}), to=[])
    orchestrator.add_step("island", lambda c, t, x, s: ("start", {}), to=["start"])
    with pytest.raises(ConversationDefinitionError) as raised:
        orchestrator.validate()
    assert raised.value.problems == [
        "unreachable state(s) from 'start': ['island']",
        "non-final state(s) with no way out: ['ask'] (declare a target)",
    ]


def test_decorator_api_undeclared_steps_stay_allowed() -> None:
    orchestrator = ChatOrchestrator(InMemoryStateManager(), RecordingSender(), "begin")
    orchestrator.add_step("start", lambda c, t, x, s: ("start", {}))
    with pytest.raises(ConversationDefinitionError) as raised:
        orchestrator.validate()
    assert raised.value.problems == ["the initial state 'begin' has no registered step"]
    orchestrator.add_step("begin", lambda c, t, x, s: ("start", {}))
    orchestrator.validate()


def test_an_unknown_target_does_not_hide_the_graph_problems() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def start(self, turn: T) -> Literal["midle", "trap"]:
                return "midle"

            @state
            def middle(self, turn: T) -> Literal["end"]:
                return "end"

            @state(to=[])
            def trap(self, turn: T) -> str:
                return "trap"

            @state
            def loop(self, turn: T) -> Literal["loop"]:
                return "loop"

            @state(final=True)
            def end(self, turn: T) -> Literal["end"]:
                return "end"

    assert problems_of(build) == [
        "state 'start' declares unknown target(s) ['midle'] (did you mean 'middle'?)",
        "unreachable state(s) from 'start': ['end', 'loop', 'middle']",
        "non-final state(s) with no way out: ['trap'] (declare a target)",
        "state(s) with no path to a final state: ['loop']",
    ]


def test_a_target_naming_a_plain_method_says_it_lacks_state() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def start(self, turn: T) -> Literal["start", "helper"]:
                return "start"

            def helper(self, turn: T) -> str:
                return "start"

    assert problems_of(build) == [
        "state 'start' declares unknown target(s) ['helper'] ('helper' is a method without @state)"
    ]


class Other(BaseModel):
    m: int = 0


def test_a_turn_of_another_context_type_is_a_definition_error() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state(initial=True)
            def start(self, turn: Turn[Other]) -> Literal["start"]:
                return "start"

    assert problems_of(build) == [
        "state 'start' takes Turn[Other], but the conversation's context is Ctx: "
        "annotate it Turn[Ctx]"
    ]


def test_one_problem_is_not_plural() -> None:
    def build() -> None:
        class Flow(Conversation[Ctx]):
            @state
            def a(self, turn: T) -> Literal["a"]:
                return "a"

    with pytest.raises(ConversationDefinitionError) as raised:
        build()
    assert "Flow is not a valid conversation (1 problem):" in str(raised.value)


def test_a_second_step_for_one_state_is_a_definition_error() -> None:
    orchestrator = ChatOrchestrator(InMemoryStateManager(), RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: ("start", {}))
    with pytest.raises(ConversationDefinitionError) as raised:
        orchestrator.add_step("start", lambda c, t, x, s: ("start", {}))
    assert isinstance(raised.value, DuplicateStepError)
    assert raised.value.problems == ["a step is already registered for state 'start'"]
    assert list(orchestrator.states) == ["start"]
