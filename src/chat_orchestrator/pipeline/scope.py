"""What a step may ask of the pipeline while it runs: the event, timers, its replies.

A worker opens a :class:`TurnScope` around each step call (a context variable, so it reaches
``async def`` steps and the threads plain steps run in). Timers asked for here are stored in
the same write as the turn's new state, or not at all if the turn fails.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chat_orchestrator.errors import PipelineError
from chat_orchestrator.pipeline.events import Event

__all__ = [
    "TIMEOUT_TIMER",
    "TurnScope",
    "cancel_timer",
    "current_event",
    "schedule_timer",
]

#: The timer name of a class-API state's ``timeout``.
TIMEOUT_TIMER = "__timeout__"
_MAX_TIMER_NAME = 200
_MAX_DELAY = 400 * 24 * 3600.0  # a timer more than 400 days ahead is a bug, not a plan


@dataclass(slots=True)
class TimerRequest:
    due: float
    bound: bool
    data: dict[str, Any]


@dataclass(slots=True)
class TurnScope:
    """The pipeline's view of one running step (engine internals)."""

    event: Event
    now: float
    #: Timers to set (name -> request) and to cancel, applied when the turn commits.
    timers: dict[str, TimerRequest] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)


_scope: contextvars.ContextVar[TurnScope | None] = contextvars.ContextVar(
    "chat_orchestrator_turn_scope", default=None
)


@contextmanager
def open_scope(scope: TurnScope) -> Iterator[TurnScope]:
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_event() -> Event | None:
    """The inbox event the running step handles (a message, a fired timer), or None.

    None in direct mode (``handle_message``), where there is no inbox.
    """
    scope = _scope.get()
    return None if scope is None else scope.event


def _needs_scope(what: str) -> TurnScope:
    scope = _scope.get()
    if scope is None:
        raise PipelineError(
            f"{what} needs the message pipeline: serve the bot with mode='queue' and run a "
            "worker (`chat-orchestrator worker`); direct handle_message calls have no timers"
        )
    return scope


def schedule_timer(
    name: str = "timer",
    *,
    after: timedelta | float | None = None,
    at: datetime | float | None = None,
    data: Mapping[str, Any] | None = None,
    bound: bool = True,
) -> None:
    """From inside a step: fire an event for this chat ``after`` a delay or ``at`` a time.

    The timer is stored with the turn (a failed turn sets none), fires once, and reaches the
    chat's step as an event of kind ``"timer"`` (``current_event()``; ``user_input`` is None).
    A timer of the same name replaces the earlier one. ``bound=True`` (the default) drops it
    if the chat is in another state when it fires; ``bound=False`` fires it wherever it is.
    ``at`` is an aware datetime or epoch seconds.
    """
    scope = _needs_scope("schedule_timer")
    if type(name) is not str or not name or len(name) > _MAX_TIMER_NAME:
        raise PipelineError(f"a timer name must be a str of 1 to {_MAX_TIMER_NAME} characters")
    if (after is None) == (at is None):
        raise PipelineError("schedule_timer takes exactly one of after= and at=")
    if after is not None:
        delay = after.total_seconds() if isinstance(after, timedelta) else after
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise PipelineError(f"after= must be a timedelta or seconds, not {after!r}")
        try:
            due = scope.now + delay
        except OverflowError:  # after=10**400: an int beyond any float
            due = math.inf
    else:
        if isinstance(at, datetime):
            if at.tzinfo is None:
                raise PipelineError("at= must be an aware datetime (naive times are ambiguous)")
            due = at.timestamp()
        elif isinstance(at, int | float) and not isinstance(at, bool):
            try:
                due = float(at)
            except OverflowError:  # an int beyond any float: no time at all
                due = math.inf
        else:
            raise PipelineError(f"at= must be an aware datetime or epoch seconds, not {at!r}")
    if not math.isfinite(due) or due - scope.now > _MAX_DELAY:
        raise PipelineError(f"timer {name!r} is due at {due!r}: not a time within 400 days")
    payload = dict(data or {})
    scope.timers[name] = TimerRequest(max(due, scope.now), bound, payload)
    scope.cancelled.discard(name)


def cancel_timer(name: str = "timer") -> None:
    """From inside a step: forget this chat's timer ``name`` (nothing if there is none)."""
    scope = _needs_scope("cancel_timer")
    scope.timers.pop(name, None)
    scope.cancelled.add(name)
