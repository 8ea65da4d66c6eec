"""ChatOrchestrator: the step registry and the turn loop every API and backend shares.

One turn = lock the chat and load its record -> run the step -> validate what it returned ->
store the new state conditionally on the version read -> unlock. Any failure before the store
leaves the record exactly as it was and raises an error from ``chat_orchestrator.errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator._machine import FlowSpec, StateSpec, check_flow, mermaid
from chat_orchestrator.errors import (
    ChatOrchestratorError,
    ContextSerializationError,
    ConversationDefinitionError,
    DuplicateStepError,
    InvalidStepResultError,
    StateManagerError,
    StepError,
    TransitionError,
    TurnError,
    UnknownStateError,
)
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager, StateRecord, validate_chat_id

__all__ = ["ChatOrchestrator", "StepFunction", "StepResult", "TypedStepFunction"]

StepResult: TypeAlias = tuple[str, dict[str, Any]]
#: ``(chat_id, user_input, context, sender) -> (next_state_id, new_context)``
StepFunction: TypeAlias = Callable[[str, "str | None", dict[str, Any], MessageSender], StepResult]


#: A step that encodes its own context: ``-> (next_state_id, context, context_json)``.
#: The class API uses it so pydantic serializes the model once, in Rust.
TypedStepFunction: TypeAlias = Callable[
    [str, "str | None", dict[str, Any], MessageSender], tuple[str, dict[str, Any], str]
]


@dataclass(frozen=True, slots=True)
class _Step:
    function: StepFunction | TypedStepFunction
    #: Declared next states, or None when the step did not declare any (README style).
    targets: frozenset[str] | None
    #: True when ``function`` is a TypedStepFunction.
    encodes: bool = False


class ChatOrchestrator:
    """Routes each incoming message to the step of the chat's current state.

    A chat with no stored record starts in ``initial_state`` with an empty context.
    """

    def __init__(
        self,
        state_manager: StateManager,
        sender: MessageSender,
        initial_state: str = "start",
    ) -> None:
        self.state_manager = state_manager
        self.sender = sender
        self.initial_state = initial_state
        self._steps: dict[str, _Step] = {}

    def __repr__(self) -> str:
        return (
            f"ChatOrchestrator(states={sorted(self._steps)!r}, "
            f"initial_state={self.initial_state!r})"
        )

    # -- registry ----------------------------------------------------------------------------
    def register_step(
        self, state_id: str, *, to: Iterable[str] | None = None
    ) -> Callable[[StepFunction], StepFunction]:
        """Register the decorated function as the step for ``state_id``.

        ``to`` optionally declares the states the step may move to; a step that returns
        another one fails with TransitionError and nothing is stored.
        """
        if not isinstance(state_id, str) or not state_id:
            raise TypeError("state_id must be a non-empty str")
        targets = None if to is None else frozenset(_state_names(to))

        def decorator(function: StepFunction) -> StepFunction:
            self.add_step(state_id, function, to=targets)
            return function

        return decorator

    def add_step(
        self, state_id: str, function: StepFunction, *, to: Iterable[str] | None = None
    ) -> None:
        """Register ``function`` for ``state_id`` (the non-decorator spelling)."""
        self._register(state_id, _Step(function, None if to is None else frozenset(to)))

    def add_typed_step(
        self, state_id: str, function: TypedStepFunction, *, to: Iterable[str] | None = None
    ) -> None:
        """Register a step that returns ``(next_state_id, context, context_json)``.

        The step vouches that ``context_json`` encodes ``context`` and loads back; the engine
        still checks the next state. This is how the class API plugs into the engine.
        """
        self._register(
            state_id, _Step(function, None if to is None else frozenset(to), encodes=True)
        )

    def _register(self, state_id: str, step: _Step) -> None:
        if state_id in self._steps:
            # A definition mistake like any other, so one except clause catches them all.
            raise DuplicateStepError(
                "orchestrator", [f"a step is already registered for state {state_id!r}"]
            )
        self._steps[state_id] = step

    @property
    def states(self) -> dict[str, frozenset[str] | None]:
        """Each registered state with its declared targets (None: undeclared)."""
        return {name: step.targets for name, step in self._steps.items()}

    # -- the turn ----------------------------------------------------------------------------
    def handle_message(self, chat_id: str, user_input: str | None) -> str:
        """Run one turn for ``chat_id`` and return the chat's new state id."""
        validate_chat_id(chat_id)
        turn = _call_manager(self.state_manager.begin_turn, chat_id)
        try:
            record = turn.record
            new_state, context, encoded = self._run(chat_id, user_input, record)
            _call_manager(turn.commit, new_state, context, encoded)
            return new_state
        finally:
            turn.close()

    def _run(
        self, chat_id: str, user_input: str | None, record: StateRecord | None
    ) -> tuple[str, dict[str, Any], str]:
        if record is None:
            state_id, context = self.initial_state, {}
        else:
            state_id, context = record.state_id, record.context
        step = self._steps.get(state_id)
        if step is None:
            where = "the initial state" if record is None else "the stored state"
            raise UnknownStateError(
                f"{where} {state_id!r} has no registered step", chat_id=chat_id, state_id=state_id
            )
        try:
            result = step.function(chat_id, user_input, context, self.sender)
        except TurnError:
            raise  # already names chat and state (the class API's context errors)
        except Exception as exc:
            raise StepError(
                f"step raised {type(exc).__name__}: {exc}", chat_id=chat_id, state_id=state_id
            ) from exc
        if step.encodes:
            new_state, new_context, encoded = result  # type: ignore[misc]
            self._check_result(chat_id, state_id, step, (new_state, new_context))
            return new_state, new_context, encoded
        new_state, new_context = self._check_result(chat_id, state_id, step, result)
        try:
            encoded = encode_context(new_context)
        except (TypeError, ValueError) as exc:
            raise ContextSerializationError(
                f"the returned context cannot be stored as JSON: {exc}",
                chat_id=chat_id,
                state_id=state_id,
            ) from exc
        return new_state, new_context, encoded

    def _check_result(
        self, chat_id: str, state_id: str, step: _Step, result: object
    ) -> tuple[str, dict[str, Any]]:
        def bad(message: str, kind: type[TurnError] = InvalidStepResultError) -> TurnError:
            return kind(message, chat_id=chat_id, state_id=state_id)

        if type(result) is not tuple or len(result) != 2:
            raise bad(f"step must return (next_state_id, context), got {_short(result)}")
        new_state, new_context = result
        if type(new_state) is not str:
            raise bad(f"next state must be a str, got {_short(new_state)}")
        if type(new_context) is not dict:
            raise bad(f"context must be a dict, got {_short(new_context)}")
        if step.targets is not None and new_state not in step.targets:
            allowed = ", ".join(sorted(step.targets))
            raise bad(f"step returned {new_state!r}, declared only [{allowed}]", TransitionError)
        if new_state not in self._steps:
            raise bad(
                f"step returned {new_state!r}, which has no registered step", UnknownStateError
            )
        return new_state, new_context

    # -- definition checks and diagrams ----------------------------------------------------
    def flow_spec(self) -> FlowSpec:
        return FlowSpec(
            "orchestrator",
            {
                name: StateSpec(step.targets, initial=name == self.initial_state)
                for name, step in self._steps.items()
            },
        )

    def validate(self) -> None:
        """Check the registered steps as the class API does; raise ConversationDefinitionError.

        Steps registered without ``to=`` may go anywhere, so they are never flagged as traps
        and make every state reachable. Without a step for the initial state the graph has no
        start, so that is reported on its own.
        """
        if self.initial_state not in self._steps:
            problem = f"the initial state {self.initial_state!r} has no registered step"
            raise ConversationDefinitionError("orchestrator", [problem])
        problems = check_flow(self.flow_spec())
        if problems:
            raise ConversationDefinitionError("orchestrator", problems)

    def mermaid(self) -> str:
        """A Mermaid ``stateDiagram-v2`` of the declared transitions."""
        return mermaid(self.flow_spec())

    def reset(self, chat_id: str) -> None:
        """Forget a chat: its next message starts again in the initial state."""
        _call_manager(self.state_manager.delete_state, validate_chat_id(chat_id))


def _state_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError("to= takes a list of state ids, not a single str")
    result = list(names)
    for name in result:
        if not isinstance(name, str):
            raise TypeError(f"state ids in to= must be str, got {name!r}")
    return result


def _short(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _call_manager(function: Callable[..., Any], *args: Any) -> Any:
    """Call a state manager method; foreign exceptions become StateManagerError (chained)."""
    try:
        return function(*args)
    except ChatOrchestratorError:
        raise
    except Exception as exc:
        raise StateManagerError(
            f"state manager failed in {getattr(function, '__name__', 'call')}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
