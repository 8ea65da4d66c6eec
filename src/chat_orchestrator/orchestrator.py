"""ChatOrchestrator: the step registry and the turn loop every API and backend shares.

One turn = lock the chat and load its record -> run the step -> validate what it returned ->
store the new state conditionally on the version read -> unlock. Any failure before the store
leaves the record exactly as it was and raises an error from ``chat_orchestrator.errors``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from chat_orchestrator._jsonctx import check_encoded, encode_context
from chat_orchestrator._machine import FlowSpec, StateSpec, check_flow, mermaid
from chat_orchestrator._migrations import check_aliases
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
    describe_chat_id,
)
from chat_orchestrator.pipeline.section import PIPELINE_KEY, Section, merge, split
from chat_orchestrator.senders._views import AnySender, as_async, as_sync
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.state_managers.async_base import AsyncStateManager
from chat_orchestrator.state_managers.base import (
    StateManager,
    StateRecord,
    StateUpdate,
    validate_chat_id,
    validate_state_id,
)

__all__ = [
    "AsyncStepFunction",
    "AsyncTypedStepFunction",
    "ChatOrchestrator",
    "StepFunction",
    "StepResult",
    "TypedStepFunction",
]

logger = logging.getLogger(__name__)

StepResult: TypeAlias = tuple[str, dict[str, Any]]
#: ``(chat_id, user_input, context, sender) -> (next_state_id, new_context)``
StepFunction: TypeAlias = Callable[[str, "str | None", dict[str, Any], MessageSender], StepResult]
#: The same as an ``async def``: it gets a sender whose ``send_message`` is awaited.
AsyncStepFunction: TypeAlias = Callable[
    [str, "str | None", dict[str, Any], AsyncMessageSender], Awaitable[StepResult]
]

#: A step that encodes its own context: ``-> (next_state_id, context, context_json)``.
#: The class API uses it so pydantic serializes the model once, in Rust.
TypedStepFunction: TypeAlias = Callable[
    [str, "str | None", dict[str, Any], MessageSender], tuple[str, dict[str, Any], str]
]
AsyncTypedStepFunction: TypeAlias = Callable[
    [str, "str | None", dict[str, Any], AsyncMessageSender],
    Awaitable[tuple[str, dict[str, Any], str]],
]
AnyStep = TypeVar("AnyStep", StepFunction, AsyncStepFunction)


@dataclass(frozen=True, slots=True)
class _Step:
    function: Callable[..., Any]
    #: Declared next states, or None when the step did not declare any (README style).
    targets: frozenset[str] | None
    #: True when ``function`` returns ``(next_state_id, context, context_json)``.
    encodes: bool = False
    #: True for an ``async def`` step.
    is_async: bool = False
    #: A sync step on the async path runs in a worker thread (it may block) unless False.
    in_thread: bool = True


class ChatOrchestrator:
    """Routes each incoming message to the step of the chat's current state.

    A chat with no stored record starts in ``initial_state`` with an empty context.
    ``state_manager`` may be sync or async (an :class:`AsyncStateManager` serves only
    :meth:`handle_message_async`); ``sender`` may be sync or async: each step gets the face
    of it that it can call.

    ``state_aliases`` maps states that no longer exist to the states that replaced them
    (``{"old": "new"}``): a chat stored in ``old`` runs ``new``'s step, and its next turn
    stores whatever state that step returns. An alias applies only to a stored state with no
    registered step, so it never redirects a live state; :meth:`validate` reports aliases
    whose key is still a state or whose target is not.
    """

    def __init__(
        self,
        state_manager: StateManager | AsyncStateManager,
        sender: AnySender,
        initial_state: str = "start",
        *,
        state_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.state_manager = state_manager
        self.initial_state = initial_state
        aliases = {} if state_aliases is None else state_aliases
        if not isinstance(aliases, Mapping) or not all(
            isinstance(old, str) and isinstance(new, str) for old, new in aliases.items()
        ):
            raise TypeError("state_aliases must be a mapping of str (old state) to str (new)")
        self.state_aliases: Mapping[str, str] = dict(aliases)
        self._steps: dict[str, _Step] = {}
        #: state -> (seconds, state whose step runs when the chat stays that long); the
        #: message pipeline's workers arm and fire them (direct turns have no timers).
        self.timeouts: dict[str, tuple[float, str]] = {}
        self.sender = sender

    @property
    def sender(self) -> AnySender:
        return self._sender

    @sender.setter
    def sender(self, sender: AnySender) -> None:
        self._sender = sender
        self._sync_sender = as_sync(sender)
        self._async_sender = as_async(sender)

    def __repr__(self) -> str:
        return (
            f"ChatOrchestrator(states={sorted(self._steps)!r}, "
            f"initial_state={self.initial_state!r})"
        )

    # -- registry ----------------------------------------------------------------------------
    def register_step(
        self, state_id: str, *, to: Iterable[str] | None = None, in_thread: bool = True
    ) -> Callable[[AnyStep], AnyStep]:
        """Register the decorated function (``def`` or ``async def``) as ``state_id``'s step.

        ``to`` optionally declares the states the step may move to; a step that returns
        another one fails with TransitionError and nothing is stored. ``in_thread=False``
        runs a plain ``def`` step on the event loop itself in :meth:`handle_message_async`
        (for steps that never block).
        """
        if not isinstance(state_id, str) or not state_id:
            raise TypeError("state_id must be a non-empty str")
        targets = None if to is None else frozenset(_state_names(to))

        def decorator(function: AnyStep) -> AnyStep:
            self.add_step(state_id, function, to=targets, in_thread=in_thread)
            return function

        return decorator

    def add_step(
        self,
        state_id: str,
        function: StepFunction | AsyncStepFunction,
        *,
        to: Iterable[str] | None = None,
        in_thread: bool = True,
    ) -> None:
        """Register ``function`` for ``state_id`` (the non-decorator spelling)."""
        self._register(state_id, function, to, encodes=False, in_thread=in_thread)

    def add_typed_step(
        self,
        state_id: str,
        function: TypedStepFunction | AsyncTypedStepFunction,
        *,
        to: Iterable[str] | None = None,
        in_thread: bool = True,
    ) -> None:
        """Register a step that returns ``(next_state_id, context, context_json)``.

        The step vouches that ``context_json`` encodes ``context`` and loads back; the engine
        still checks the next state. This is how the class API plugs into the engine.
        """
        self._register(state_id, function, to, encodes=True, in_thread=in_thread)

    def _register(
        self,
        state_id: str,
        function: Callable[..., Any],
        to: Iterable[str] | None,
        *,
        encodes: bool,
        in_thread: bool,
    ) -> None:
        # A state no store can hold (over MAX_STATE_ID_LENGTH, a lone surrogate) is refused
        # here: registered, its step would run and send its replies, then every turn would
        # fail to store it, with the chat stuck and the user answered again each time.
        validate_state_id(state_id)
        if state_id in self._steps:
            # A definition mistake like any other, so one except clause catches them all.
            raise DuplicateStepError(
                "orchestrator", [f"a step is already registered for state {state_id!r}"]
            )
        is_async = inspect.iscoroutinefunction(function)
        targets = None if to is None else frozenset(to)
        self._steps[state_id] = _Step(function, targets, encodes, is_async, in_thread)

    def set_timeout(self, state_id: str, seconds: float, on_timeout: str) -> None:
        """When a chat stays in ``state_id`` for ``seconds``, run ``on_timeout``'s step.

        Served by the message pipeline: each turn that ends in ``state_id`` (re)arms a timer
        bound to it; the fired turn gets ``user_input=None`` and a ``"timer"`` event.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"a timeout must be seconds, not {type(seconds).__name__}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"a timeout must be a positive number of seconds, not {seconds!r}")
        for name in (state_id, on_timeout):
            if name not in self._steps:
                raise UnknownStateError(
                    f"timeout state {name!r} has no registered step", chat_id="-", state_id=name
                )
        self.timeouts[state_id] = (float(seconds), on_timeout)

    @property
    def states(self) -> dict[str, frozenset[str] | None]:
        """Each registered state with its declared targets (None: undeclared)."""
        return {name: step.targets for name, step in self._steps.items()}

    # -- the turn ----------------------------------------------------------------------------
    # Two drivers, one set of decisions: ``_prepare`` picks the step, ``_finish`` validates
    # and encodes its result; the drivers differ only in how they wait for the store and
    # call the step.
    def handle_message(self, chat_id: str, user_input: str | None) -> str:
        """Run one turn for ``chat_id`` and return the chat's new state id."""
        validate_chat_id(chat_id)
        turn = _call_manager(self.state_manager.begin_turn, chat_id)
        try:
            step, state_id, context, section = self._prepare(chat_id, turn.record)
            result = self.run_step(step, state_id, chat_id, user_input, context, self._sync_sender)
            update = self._finish(chat_id, state_id, step, result)
            # The message pipeline's bookkeeping rides along unchanged; merge also refuses a
            # step's own use of its reserved key (even on a chat with no section yet).
            update = merge(update, section if section is not None else Section(), chat_id)
            _call_manager(turn.commit, update)
        except BaseException as exc:
            _release_after_failure(turn.close, chat_id, exc)
            raise
        _call_manager(turn.close)
        return update.state_id

    async def handle_message_async(self, chat_id: str, user_input: str | None) -> str:
        """Run one turn on the running event loop, with ``handle_message``'s guarantees.

        ``async def`` steps are awaited; plain ``def`` steps run in a worker thread (they
        may block: an HTTP call, a database), unless registered with ``in_thread=False``.
        A turn cancelled at any point stores nothing and releases the chat at once.
        """
        validate_chat_id(chat_id)
        turn = await _acall_manager(self.state_manager.begin_turn_async, chat_id)
        try:
            step, state_id, context, section = self._prepare(chat_id, turn.record)
            result = await self.run_step_async(
                step, state_id, chat_id, user_input, context, self.sender
            )
            update = self._finish(chat_id, state_id, step, result)
            update = merge(update, section if section is not None else Section(), chat_id)
            await _acall_manager(turn.commit, update)
        except BaseException as exc:
            # Shielded: a second cancellation must not leave the chat leased.
            await asyncio.shield(_arelease_after_failure(turn.close, chat_id, exc))
            raise
        await _acall_manager(turn.close)
        return update.state_id

    # -- the step call, shared by the direct turns above and the pipeline's workers --------
    def run_step(
        self,
        step: _Step,
        state_id: str,
        chat_id: str,
        user_input: str | None,
        context: dict[str, Any],
        sender: MessageSender,
        async_face: AsyncMessageSender | None = None,
    ) -> object:
        """Call ``step`` on this thread; its failure becomes StepError. (Engine internals.)

        ``async_face`` is the sender an ``async def`` step gets (default: ``sender`` wrapped).
        """
        try:
            if step.is_async:
                face = async_face or (
                    self._async_sender if sender is self._sync_sender else as_async(sender)
                )
                return _run_coroutine(step.function(chat_id, user_input, context, face))
            return step.function(chat_id, user_input, context, sender)
        except TurnError:
            raise  # already names chat and state (the class API's context errors)
        except Exception as exc:
            raise _step_failed(exc, chat_id, state_id) from exc

    async def run_step_async(
        self,
        step: _Step,
        state_id: str,
        chat_id: str,
        user_input: str | None,
        context: dict[str, Any],
        sender: AnySender,
        async_face: AsyncMessageSender | None = None,
    ) -> object:
        """Call ``step`` on the running loop (a plain ``def`` in a thread unless told not to)."""
        mine = sender is self._sender  # the cached faces of the orchestrator's own sender
        try:
            if step.is_async:
                face = async_face or (self._async_sender if mine else as_async(sender))
                return await step.function(chat_id, user_input, context, face)
            if step.in_thread:
                blocking = as_sync(sender, asyncio.get_running_loop())
                return await asyncio.to_thread(
                    step.function, chat_id, user_input, context, blocking
                )
            plain = self._sync_sender if mine else as_sync(sender)
            return step.function(chat_id, user_input, context, plain)
        except TurnError:
            raise
        except Exception as exc:
            raise _step_failed(exc, chat_id, state_id) from exc

    def _prepare(
        self, chat_id: str, record: StateRecord | None, state: str | None = None
    ) -> tuple[_Step, str, dict[str, Any], Section | None]:
        """The step to run, its state and context, and the record's pipeline section.

        ``state`` runs that state's step instead of the stored one (a fired timeout).
        """
        section = None
        if record is None:
            state_id, context = self.initial_state, {}
        else:
            state_id, context = record.state_id, record.context
            if PIPELINE_KEY in context:
                context, section = split(chat_id, context)
        if state is not None:
            state_id = state
        step = self._steps.get(state_id)
        if step is None and record is not None and state_id in self.state_aliases:
            state_id = self.state_aliases[state_id]
            step = self._steps.get(state_id)
        if step is None:
            where = "the initial state" if record is None else "the stored state"
            raise UnknownStateError(
                f"{where} {state_id!r} has no registered step", chat_id=chat_id, state_id=state_id
            )
        return step, state_id, context, section

    def _finish(self, chat_id: str, state_id: str, step: _Step, result: object) -> StateUpdate:
        if step.encodes:
            typed: tuple[str, dict[str, Any], str] = result  # type: ignore[assignment]
            self._check_result(chat_id, state_id, step, typed[:2])
            try:
                # The step's encoder (pydantic) vouches for JSON, not for our limits (depth).
                check_encoded(typed[1], typed[2])
            except ValueError as exc:
                raise ContextSerializationError(
                    f"the returned context cannot be stored: {exc}",
                    chat_id=chat_id,
                    state_id=state_id,
                ) from exc
            return StateUpdate(*typed)
        new_state, new_context = self._check_result(chat_id, state_id, step, result)
        try:
            encoded = encode_context(new_context)
        except (TypeError, ValueError) as exc:
            raise ContextSerializationError(
                f"the returned context cannot be stored as JSON: {exc}",
                chat_id=chat_id,
                state_id=state_id,
            ) from exc
        return StateUpdate(new_state, new_context, encoded)

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
        problems.extend(check_aliases(self.state_aliases, set(self._steps)))
        if problems:
            raise ConversationDefinitionError("orchestrator", problems)

    def mermaid(self) -> str:
        """A Mermaid ``stateDiagram-v2`` of the declared transitions."""
        return mermaid(self.flow_spec())

    def reset(self, chat_id: str) -> None:
        """Forget a chat: its next message starts again in the initial state."""
        _call_manager(self.state_manager.delete_state, validate_chat_id(chat_id))

    async def reset_async(self, chat_id: str) -> None:
        """:meth:`reset` on the running event loop."""
        await _acall_manager(self.state_manager.delete_state_async, validate_chat_id(chat_id))


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


def _manager_failed(function: Callable[..., Any], exc: Exception) -> StateManagerError:
    return StateManagerError(
        f"state manager failed in {getattr(function, '__name__', 'call')}: "
        f"{type(exc).__name__}: {exc}"
    )


def _call_manager(function: Callable[..., Any], *args: Any) -> Any:
    """Call a state manager method; foreign exceptions become StateManagerError (chained)."""
    try:
        return function(*args)
    except ChatOrchestratorError:
        raise
    except Exception as exc:
        raise _manager_failed(function, exc) from exc


async def _acall_manager(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    try:
        return await function(*args)
    except ChatOrchestratorError:
        raise
    except Exception as exc:
        raise _manager_failed(function, exc) from exc


def _step_failed(exc: Exception, chat_id: str, state_id: str) -> StepError:
    return StepError(f"step raised {type(exc).__name__}: {exc}", chat_id=chat_id, state_id=state_id)


def _release_noted(chat_id: str, failure: BaseException, release_failure: Exception) -> None:
    """Attach a failed release to the turn's own error, which stays what the caller sees.

    The release failure is logged and attached to ``failure`` (a note, and ``__context__``
    when the failure has none), so the step's traceback is never replaced.
    """
    logger.warning(
        "could not release chat %s after a failed turn: %s: %s",
        describe_chat_id(chat_id),
        type(release_failure).__name__,
        release_failure,
        exc_info=release_failure,
    )
    failure.add_note(
        f"while handling it, releasing the chat's lock failed too: "
        f"{type(release_failure).__name__}: {release_failure}"
    )
    if failure.__context__ is None:
        failure.__context__ = release_failure


def _release_after_failure(close: Callable[[], None], chat_id: str, failure: BaseException) -> None:
    try:
        close()
    except Exception as release_error:
        _release_noted(chat_id, failure, release_error)


async def _arelease_after_failure(
    close: Callable[[], Awaitable[None]], chat_id: str, failure: BaseException
) -> None:
    try:
        await close()
    except Exception as release_error:
        _release_noted(chat_id, failure, release_error)


def _run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """An ``async def`` step on the sync path runs on an event loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError(
        "an async step cannot run from handle_message inside a running event loop: "
        "use `await orchestrator.handle_message_async(...)`"
    )
