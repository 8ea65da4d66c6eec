"""The class API: a ``Conversation[Context]`` subclass whose ``@state`` methods are its states.

::

    class Signup(BaseModel):
        name: str | None = None

    class Onboarding(Conversation[Signup]):
        @state(initial=True)
        def ask_name(self, turn: Turn[Signup]) -> Literal["greet"]:
            turn.send("What's your name?")
            return "greet"

        @state(final=True)
        def greet(self, turn: Turn[Signup]) -> Literal["greet"]:
            ...

Each method's allowed next states are declared once: as its ``Literal[...]`` return
annotation (mypy then checks the body) or as ``@state(to=[...])``. The class statement itself
validates the flow and raises one ConversationDefinitionError listing every problem. At run
time the conversation is a :class:`~chat_orchestrator.orchestrator.ChatOrchestrator` whose
steps load the stored JSON into the context model and dump it back after the method.

A flow that changes after deployment declares ``schema_version`` and ``migrations`` (one
function per version step, on the raw JSON dict; see ``chat_orchestrator._migrations`` for
why) and ``renamed_states``; old records are migrated as they are loaded, stored migrated by
the next turn, and :meth:`Conversation.upgrade_record` migrates one eagerly (the
``chat-orchestrator chats migrate`` command runs it over a whole store).
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, overload

from pydantic import BaseModel, ValidationError

from chat_orchestrator._machine import FlowSpec, StateSpec, check_flow, mermaid
from chat_orchestrator._migrations import Migration, Schema, check_aliases
from chat_orchestrator.errors import (
    ContextValidationError,
    ConversationDefinitionError,
    UnknownStateError,
)
from chat_orchestrator.orchestrator import (
    AsyncTypedStepFunction,
    ChatOrchestrator,
    TypedStepFunction,
)
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.scope import TIMEOUT_TIMER, current_event
from chat_orchestrator.pipeline.section import merge, split
from chat_orchestrator.senders._views import AnySender
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.state_managers.async_base import AsyncStateManager, require_sync
from chat_orchestrator.state_managers.base import (
    StateManager,
    StateRecord,
    StateUpdate,
    validate_chat_id,
)

__all__ = ["Conversation", "Turn", "state"]

C = TypeVar("C", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class Turn(Generic[C]):
    """What a state method gets: the message, the chat's typed context, and a way to reply.

    Mutate ``context`` in place or assign a new instance of the same model.
    """

    chat_id: str
    text: str | None
    context: C
    state: str
    #: A blocking sender in a ``def`` state, an awaitable one in an ``async def`` state.
    sender: MessageSender | AsyncMessageSender

    @property
    def event(self) -> Event | None:
        """The inbox event this turn handles (in a pipeline worker), or None (direct)."""
        return current_event()

    @property
    def timed_out(self) -> bool:
        """True when this turn runs because the chat stayed in a state past its timeout."""
        event = current_event()
        return event is not None and event.is_timer and event.data.get("timer") == TIMEOUT_TIMER

    def send(self, text: str, options: dict[str, Any] | None = None) -> str | None:
        """Reply to this chat; returns the channel's message id, if any."""
        sender = self.sender
        if isinstance(sender, AsyncMessageSender):
            raise TypeError("in an async state, reply with `await turn.send_async(...)`")
        return sender.send_message(self.chat_id, text, options)

    async def send_async(self, text: str, options: dict[str, Any] | None = None) -> str | None:
        """Reply to this chat from an ``async def`` state."""
        sender = self.sender
        if not isinstance(sender, AsyncMessageSender):
            raise TypeError("in a plain def state, reply with `turn.send(...)`")
        return await sender.send_message(self.chat_id, text, options)


@dataclass(frozen=True, slots=True)
class _Marker:
    initial: bool
    final: bool
    to: frozenset[str] | None
    #: Seconds in this state before ``on_timeout``'s step runs (message pipeline only).
    timeout: float | None = None
    on_timeout: str | None = None


_MARKER = "__chat_state__"


@overload
def state(function: F, /) -> F: ...
@overload
def state(
    *,
    initial: bool = False,
    final: bool = False,
    to: Iterable[str] | None = None,
    timeout: timedelta | float | None = None,
    on_timeout: str | None = None,
) -> Callable[[F], F]: ...
def state(
    function: F | None = None,
    /,
    *,
    initial: bool = False,
    final: bool = False,
    to: Iterable[str] | None = None,
    timeout: timedelta | float | None = None,
    on_timeout: str | None = None,
) -> F | Callable[[F], F]:
    """Mark a method as a state: ``@state``, ``@state(initial=True)``, ``@state(to=[...])``.

    ``@state(timeout=timedelta(minutes=10), on_timeout="nudge")``: when a chat stays in this
    state that long (no message since the turn that left it here), ``nudge``'s step runs with
    ``turn.text`` None and ``turn.timed_out`` True. ``on_timeout`` is checked at class
    definition like any target. Timeouts are fired by the message pipeline's workers; direct
    ``handle_message`` calls do not arm them.
    """
    if isinstance(to, str):
        raise TypeError("@state(to=...) takes a list of state names, not a single str")
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    marker = _Marker(initial, final, None if to is None else frozenset(to), seconds, on_timeout)

    def mark(fn: F) -> F:
        setattr(fn, _MARKER, marker)
        return fn

    return mark if function is None else mark(function)


class Conversation(Generic[C]):
    """Base class of class-API flows. Subclass as ``Conversation[YourContextModel]``.

    Pass ``abstract=True`` in the class statement for an intermediate base with no states.

    After deployment, a flow evolves with three class attributes, all checked by the class
    statement:

    * ``schema_version``: the version of the context model (default 1). Stored contexts
      carry it under a reserved JSON key the model never sees; a record without it is 1.
    * ``migrations``: ``{N: function}``, one per version step: ``function`` takes the raw
      stored context dict of version N (a copy) and returns the dict of version N+1. Every
      step from 1 to ``schema_version - 1`` is required.
    * ``renamed_states``: ``{"old": "new"}`` for states renamed or removed: a chat stored in
      ``old`` continues in ``new``. ``new`` must be a state and ``old`` must not be one.
    """

    context_type: ClassVar[type[BaseModel]]
    initial_state: ClassVar[str]
    flow: ClassVar[FlowSpec]
    schema_version: ClassVar[int] = 1
    migrations: ClassVar[Mapping[int, Migration]] = {}
    renamed_states: ClassVar[Mapping[str, str]] = {}
    _schema: ClassVar[Schema]

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        problems: list[str] = []
        context_type = _context_type(cls, problems)
        specs = _collect_states(cls, context_type, problems)
        flow = FlowSpec(cls.__qualname__, specs)
        plain_methods = {
            name
            for name in dir(cls)
            if not name.startswith("__")
            and name not in specs
            and callable(getattr(cls, name, None))
        }
        problems.extend(check_flow(flow, not_states=plain_methods))
        problems.extend(Schema.check(context_type, cls.schema_version, cls.migrations))
        problems.extend(check_aliases(cls.renamed_states, specs))
        if problems:
            raise ConversationDefinitionError(cls.__qualname__, problems)
        assert context_type is not None
        cls.context_type = context_type
        cls.flow = flow
        cls._schema = Schema(context_type, cls.schema_version, cls.migrations)
        cls.initial_state = next(name for name, spec in specs.items() if spec.initial)

    def __init__(self, state_manager: StateManager | AsyncStateManager, sender: AnySender) -> None:
        cls = type(self)
        if not hasattr(cls, "flow"):
            raise TypeError(f"{cls.__qualname__} is abstract: it has no validated states")
        self.orchestrator = ChatOrchestrator(
            state_manager, sender, cls.initial_state, state_aliases=cls.renamed_states
        )
        timeouts = _timeouts(cls)
        for name, spec in cls.flow.states.items():
            targets = {name} if spec.final else spec.targets
            if name in timeouts:  # the step itself may go only where it declared
                declared = timeouts[name][2]
                targets = {name} if spec.final else declared
            step = _make_step(name, getattr(self, name), cls._schema)
            self.orchestrator.add_typed_step(name, step, to=targets)
        for name, (seconds, target, _) in timeouts.items():
            self.orchestrator.set_timeout(name, seconds, target)

    def handle_message(self, chat_id: str, user_input: str | None) -> str:
        """Run one turn; returns the chat's new state."""
        return self.orchestrator.handle_message(chat_id, user_input)

    async def handle_message_async(self, chat_id: str, user_input: str | None) -> str:
        """Run one turn on the running event loop; returns the chat's new state."""
        return await self.orchestrator.handle_message_async(chat_id, user_input)

    def context_of(self, chat_id: str) -> C | None:
        """The chat's stored context as the model, or None for a chat with no record."""
        manager = require_sync(self.orchestrator.state_manager)
        return self._context(chat_id, manager.load(validate_chat_id(chat_id)))

    async def context_of_async(self, chat_id: str) -> C | None:
        manager = self.orchestrator.state_manager
        return self._context(chat_id, await manager.load_async(validate_chat_id(chat_id)))

    def state_of(self, chat_id: str) -> str | None:
        """The chat's state in this flow (a renamed stored state reads as its new name)."""
        record = require_sync(self.orchestrator.state_manager).load(validate_chat_id(chat_id))
        return None if record is None else type(self)._current_state(record.state_id)

    async def state_of_async(self, chat_id: str) -> str | None:
        record = await self.orchestrator.state_manager.load_async(validate_chat_id(chat_id))
        return None if record is None else type(self)._current_state(record.state_id)

    def reset(self, chat_id: str) -> None:
        self.orchestrator.reset(chat_id)

    async def reset_async(self, chat_id: str) -> None:
        await self.orchestrator.reset_async(chat_id)

    def _context(self, chat_id: str, record: StateRecord | None) -> C | None:
        if record is None:
            return None
        state_id = type(self)._current_state(record.state_id)
        context, _ = split(chat_id, record.context)
        return typing.cast("C", self._schema.load(context, chat_id, state_id))

    @classmethod
    def _current_state(cls, stored: str) -> str:
        # The class statement made sure no alias key is a state, as the engine assumes.
        return cls.renamed_states.get(stored, stored)

    @classmethod
    def upgrade_record(cls, record: StateRecord, *, chat_id: str = "?") -> StateUpdate | None:
        """What ``record`` becomes under this flow, or None when it is already current.

        Pure: nothing is read or written, ``record`` is not changed. The update carries the
        migrated context (stamped with ``schema_version``) and the renamed state; store it
        conditionally on ``record.version``. Raises ContextValidationError when the context
        cannot be migrated (a migration raised, or its result does not validate) and
        UnknownStateError when the stored state is neither a state nor a renamed one.
        ``chat_id`` only names the chat in those errors.
        """
        if not hasattr(cls, "flow"):
            raise TypeError(f"{cls.__qualname__} is abstract: it has no validated states")
        schema = cls._schema
        state_id = cls._current_state(record.state_id)
        if state_id not in cls.flow.states:
            raise UnknownStateError(
                f"the stored state {record.state_id!r} is not a state of {cls.__qualname__} "
                "(map it in renamed_states)",
                chat_id=chat_id,
                state_id=record.state_id,
            )
        stored, section = split(chat_id, record.context)
        found = schema.stored_version(stored, chat_id, state_id)
        if found == schema.version and state_id == record.state_id:
            return None
        context = schema.load(stored, chat_id, state_id)
        update = StateUpdate(state_id, *schema.dump(context, chat_id, state_id))
        return merge(update, section, chat_id)  # pending replies and timers survive it

    @classmethod
    def mermaid(cls) -> str:
        """A Mermaid ``stateDiagram-v2`` of the flow."""
        return mermaid(cls.flow)

    def _model(self) -> type[C]:
        return typing.cast("type[C]", type(self).context_type)


def _make_step(
    name: str, method: Callable[[Any], Any], schema: Schema
) -> TypedStepFunction | AsyncTypedStepFunction:
    """The engine step running ``method``: JSON dict -> migrated -> model -> method -> JSON.

    An ``async def`` method gets an async step; both share the loading and the checks.
    """
    model = schema.model
    if inspect.iscoroutinefunction(method):

        async def async_step(
            chat_id: str,
            user_input: str | None,
            context: dict[str, Any],
            sender: AsyncMessageSender,
        ) -> tuple[str, dict[str, Any], str]:
            turn = _begin(name, schema, chat_id, user_input, context, sender)
            try:
                next_state = await method(turn)
            except ValidationError as exc:
                if exc.title != model.__name__:
                    raise  # the step's own validation failed: a StepError
                raise _context_invalid(exc, chat_id, name) from exc
            return _complete(name, schema, turn, next_state)

        async_step.__name__ = async_step.__qualname__ = name
        return async_step

    def step(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any], str]:
        turn = _begin(name, schema, chat_id, user_input, context, sender)
        try:
            next_state = method(turn)
        except ValidationError as exc:
            if exc.title != model.__name__:
                raise  # the step's own validation failed: a StepError
            raise _context_invalid(exc, chat_id, name) from exc
        return _complete(name, schema, turn, next_state)

    step.__name__ = step.__qualname__ = name
    return step


def _begin(
    name: str,
    schema: Schema,
    chat_id: str,
    user_input: str | None,
    context: dict[str, Any],
    sender: MessageSender | AsyncMessageSender,
) -> Turn[Any]:
    return Turn(chat_id, user_input, schema.load(context, chat_id, name), name, sender)


def _context_invalid(exc: ValidationError, chat_id: str, name: str) -> ContextValidationError:
    return ContextValidationError(
        f"the step made the context invalid: {exc}", chat_id=chat_id, state_id=name
    )


def _complete(
    name: str, schema: Schema, turn: Turn[Any], next_state: object
) -> tuple[str, dict[str, Any], str]:
    chat_id = turn.chat_id
    new_context = turn.context
    model = schema.model
    if type(new_context) is not model:
        raise ContextValidationError(
            f"the context must be a {model.__name__}, got {type(new_context).__name__}",
            chat_id=chat_id,
            state_id=name,
        )
    return (next_state, *schema.dump(new_context, chat_id, name))  # type: ignore[return-value]


# -- collection at class creation -------------------------------------------------------------
_RESERVED = frozenset(dir(object)) | {"orchestrator", "context_type", "initial_state", "flow"}


def _context_type(cls: type, problems: list[str]) -> type[BaseModel] | None:
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Conversation):
            (argument,) = typing.get_args(base)
            if isinstance(argument, type) and issubclass(argument, BaseModel):
                _check_fresh_context(argument, problems)
                return argument
            problems.append(
                f"context type {argument!r} is not a pydantic BaseModel subclass "
                "(write Conversation[YourModel])"
            )
            return None
    inherited: type[BaseModel] | None = getattr(cls, "context_type", None)
    if inherited is None:
        problems.append("no context type: subclass Conversation[YourModel]")
    return inherited


def _check_fresh_context(model: type[BaseModel], problems: list[str]) -> None:
    try:
        model()
    except ValidationError as exc:
        fields = sorted(str(error["loc"][0]) for error in exc.errors() if error["loc"])
        problems.append(
            f"context type {model.__name__} cannot be built empty (fields {fields} need "
            "defaults): a new chat starts with an empty context"
        )


def _collect_states(
    cls: type, context_type: type[BaseModel] | None, problems: list[str]
) -> dict[str, StateSpec]:
    specs: dict[str, StateSpec] = {}
    reserved = _RESERVED | {n for n in vars(Conversation) if not n.startswith("__")}
    for klass in reversed(cls.__mro__):  # base classes first: a subclass may override a state
        for name, value in vars(klass).items():
            function = value.__func__ if isinstance(value, staticmethod | classmethod) else value
            marker = getattr(function, _MARKER, None)
            if not isinstance(marker, _Marker):
                # A plain method overriding an inherited state removes that state.
                specs.pop(name, None)
                continue
            if name in reserved:
                problems.append(
                    f"state {name!r} clashes with the Conversation base class attribute {name!r}"
                )
                continue
            if isinstance(value, staticmethod | classmethod) or not inspect.isfunction(value):
                problems.append(f"state {name!r} must be a plain method def {name}(self, turn)")
                continue
            _check_signature(name, value, problems)
            _check_turn_type(name, value, context_type, problems)
            targets = _targets(name, value, marker, problems)
            if marker.timeout is not None or marker.on_timeout is not None:
                _check_timeout(name, marker, problems)
                if targets is not None and marker.on_timeout is not None:
                    # The timeout is a way out of the state: the graph checks see the edge.
                    targets = targets | {marker.on_timeout}
            specs[name] = StateSpec(targets, marker.initial, marker.final)
    return specs


def _check_timeout(name: str, marker: _Marker, problems: list[str]) -> None:
    seconds, target = marker.timeout, marker.on_timeout
    if seconds is None or target is None:
        problems.append(f"state {name!r}: timeout= and on_timeout= go together")
        return
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        problems.append(f"state {name!r}: timeout must be a timedelta or seconds")
    elif not math.isfinite(seconds) or seconds <= 0:
        problems.append(f"state {name!r}: timeout must be positive, not {seconds!r}")
    if not isinstance(target, str) or not target:
        problems.append(f"state {name!r}: on_timeout must name a state")


def _timeouts(cls: type[Conversation[Any]]) -> dict[str, tuple[float, str, frozenset[str] | None]]:
    """Each state's (seconds, on_timeout state, targets declared without the timeout edge)."""
    found: dict[str, tuple[float, str, frozenset[str] | None]] = {}
    for name in cls.flow.states:
        function = getattr(cls, name)
        marker = getattr(function, _MARKER, None)
        if isinstance(marker, _Marker) and marker.timeout is not None and marker.on_timeout:
            declared = marker.to if marker.to is not None else _literal_targets(function)
            found[name] = (float(marker.timeout), marker.on_timeout, declared)
    return found


def _check_signature(name: str, function: Callable[..., Any], problems: list[str]) -> None:
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        problems.append(f"state {name!r} must be a def or async def (not a generator)")
        return
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.default is p.empty and p.kind in positional]
    takes_two = len(required) == 2 or (
        len(required) < 2 and any(p.kind is p.VAR_POSITIONAL for p in parameters)
    )
    keyword_only_required = [
        p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if not takes_two or keyword_only_required:
        shown = f"({', '.join(str(p) for p in parameters)})"
        problems.append(f"state {name!r} has signature {shown}; it must be (self, turn)")


def _check_turn_type(
    name: str, function: Any, context_type: type[BaseModel] | None, problems: list[str]
) -> None:
    """A ``turn: Turn[Other]`` annotation inside ``Conversation[Ctx]`` would lie to mypy."""
    parameters = list(inspect.signature(function).parameters.values())
    if context_type is None or len(parameters) < 2:
        return
    annotation = _resolve(function, parameters[1].annotation)
    if typing.get_origin(annotation) is not Turn:
        return
    (argument,) = typing.get_args(annotation)
    # A base class of the context (Turn[BaseModel] in a shared helper) is allowed.
    if isinstance(argument, type) and not issubclass(context_type, argument):
        problems.append(
            f"state {name!r} takes Turn[{argument.__name__}], but the conversation's context "
            f"is {context_type.__name__}: annotate it Turn[{context_type.__name__}]"
        )


def _resolve(function: Any, annotation: Any) -> Any:
    """An annotation as an object, evaluating a string one (``from __future__ import ...``)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, function.__globals__, {"Literal": Literal, "Turn": Turn})  # noqa: S307 - the user's own annotation, as typing.get_type_hints does
    except Exception:
        return None  # a name only a type checker can see: nothing to check here


def _targets(
    name: str, function: Any, marker: _Marker, problems: list[str]
) -> frozenset[str] | None:
    annotated = _literal_targets(function)
    if marker.to is not None:
        if annotated is not None and annotated != marker.to:
            problems.append(
                f"state {name!r}: @state(to={sorted(marker.to)}) and its return annotation "
                f"{sorted(annotated)} disagree"
            )
        return marker.to
    if annotated is None:
        if marker.final:
            return frozenset({name})
        problems.append(
            f"state {name!r} declares no next states: annotate -> Literal[...] or use "
            "@state(to=[...])"
        )
        return None  # unknown, not "none": do not also report it as a trap
    return annotated


def _literal_targets(function: Any) -> frozenset[str] | None:
    annotation = _resolve(function, function.__annotations__.get("return"))
    values = _literal_values(annotation)
    if values is None:
        return None
    names = [value for value in values if isinstance(value, str)]
    return frozenset(names) if len(names) == len(values) else None


def _literal_values(annotation: Any) -> list[object] | None:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return list(typing.get_args(annotation))
    if origin is typing.Union or origin is types.UnionType:
        values: list[object] = []
        for member in typing.get_args(annotation):
            member_values = _literal_values(member)
            if member_values is None:
                return None
            values.extend(member_values)
        return values
    return None
