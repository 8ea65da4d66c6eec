"""The pipeline's part of a chat's record: what makes a turn's commit one atomic write.

Every store already writes a chat's record (state, context, version) atomically and
conditionally on the version read. The pipeline keeps its per-chat bookkeeping inside that
same record, under the reserved context key :data:`PIPELINE_KEY` (as the class API keeps its
schema version), so one conditional write stores, all at once:

* the new state and context,
* the event marked done (``done``: keys of events this record has consumed, kept until the
  inbox has marked them done too),
* the step's outbound messages (``out``, in order, numbered by ``next_n``),
* the chat's timers (``timers``, by name) and the current event's failure count (``fail``).

No backend changes, and a crash can never split the turn from its bookkeeping. Steps never
see the key; direct-mode turns carry it over unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import ContextSerializationError, CorruptStateError
from chat_orchestrator.state_managers.base import StateUpdate

__all__ = ["PIPELINE_KEY", "Failure", "OutItem", "Section", "Timer", "merge", "split"]

#: The reserved context key of the pipeline's section (a step's context may not use it).
PIPELINE_KEY = "__pipeline__"
_WRAP_HEAD = f'{{"{PIPELINE_KEY}":'


@dataclass(slots=True)
class OutItem:
    """One committed outbound message, waiting to be delivered."""

    n: int
    chat_id: str
    text: str
    options: dict[str, Any] | None = None
    tries: int = 0
    #: Not before this epoch time (backoff, pacing); 0: at once.
    after: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"n": self.n, "c": self.chat_id, "t": self.text}
        if self.options is not None:
            body["o"] = self.options
        if self.tries:
            body["r"] = self.tries
        if self.after:
            body["a"] = self.after
        if self.error is not None:
            body["e"] = self.error
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> OutItem:
        return cls(
            int(body["n"]),
            str(body["c"]),
            str(body["t"]),
            body.get("o"),
            int(body.get("r", 0)),
            float(body.get("a", 0.0)),
            body.get("e"),
        )


@dataclass(slots=True)
class Timer:
    """A durable timer of one chat: fires once at ``due`` (epoch seconds)."""

    name: str
    due: float
    #: Bound to this state: dropped if the chat is elsewhere when it fires (None: unbound).
    state: str | None
    data: dict[str, Any] = field(default_factory=dict)
    #: The state whose step runs when it fires (None: the chat's current state).
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"due": self.due, "s": self.state}
        if self.data:
            body["d"] = self.data
        if self.target is not None:
            body["to"] = self.target
        return body

    @classmethod
    def from_dict(cls, name: str, body: dict[str, Any]) -> Timer:
        return cls(name, float(body["due"]), body.get("s"), body.get("d") or {}, body.get("to"))


@dataclass(slots=True)
class Failure:
    """How often the chat's current head event has failed, and why."""

    key: str
    tries: int
    error: str
    #: Retry not before this epoch time.
    after: float


@dataclass(slots=True)
class Section:
    done: list[str] = field(default_factory=list)
    out: list[OutItem] = field(default_factory=list)
    next_n: int = 1
    timers: dict[str, Timer] = field(default_factory=dict)
    fail: Failure | None = None
    #: Epoch time of the chat's last delivered message (per-chat pacing).
    last_sent: float = 0.0

    def is_empty(self) -> bool:
        # next_n counts on across empty outboxes: a message's number names it for good.
        return (
            not (self.done or self.out or self.timers or self.fail)
            and not self.last_sent
            and self.next_n == 1
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.done:
            body["done"] = list(self.done)
        if self.out:
            body["out"] = [item.to_dict() for item in self.out]
        if self.next_n != 1:
            body["n"] = self.next_n
        if self.timers:
            body["timers"] = {name: timer.to_dict() for name, timer in self.timers.items()}
        if self.fail is not None:
            f = self.fail
            body["fail"] = {"k": f.key, "r": f.tries, "e": f.error, "a": f.after}
        if self.last_sent:
            body["sent"] = self.last_sent
        return body

    @classmethod
    def from_dict(cls, body: object) -> Section:
        if not isinstance(body, dict):
            raise ValueError(f"the pipeline section must be an object, not {type(body).__name__}")
        fail = body.get("fail")
        return cls(
            done=[str(key) for key in body.get("done", [])],
            out=[OutItem.from_dict(item) for item in body.get("out", [])],
            next_n=int(body.get("n", 1)),
            timers={
                str(name): Timer.from_dict(str(name), timer)
                for name, timer in body.get("timers", {}).items()
            },
            fail=None
            if fail is None
            else Failure(str(fail["k"]), int(fail["r"]), str(fail["e"]), float(fail["a"])),
            last_sent=float(body.get("sent", 0.0)),
        )

    def next_due(self, now: float) -> float | None:
        """When this chat next has pipeline work of its own (timers, outbox, a retry)."""
        times = [timer.due for timer in self.timers.values()]
        if self.out:
            times.append(self.out[0].after)
        if self.fail is not None:
            times.append(self.fail.after)
        return min(times) if times else None


def split(chat_id: str, context: dict[str, Any]) -> tuple[dict[str, Any], Section]:
    """The step's context and the pipeline section of a stored context."""
    if PIPELINE_KEY not in context:
        return context, Section()
    user = dict(context)
    raw = user.pop(PIPELINE_KEY)
    try:
        return user, Section.from_dict(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStateError(
            f"the pipeline section of chat {chat_id!r} cannot be read: {exc}"
        ) from exc


def merge(update: StateUpdate, section: Section, chat_id: str = "?") -> StateUpdate:
    """``update`` with ``section`` stored beside the step's context, in the same write."""
    if PIPELINE_KEY in update.context:
        raise ContextSerializationError(
            f"the context key {PIPELINE_KEY!r} is reserved for the message pipeline",
            chat_id=chat_id,
            state_id=update.state_id,
        )
    if section.is_empty():
        return update
    body = section.to_dict()
    try:
        # The context's own rules (depth counted from the record's context, lone surrogates,
        # NaN, non-str keys): what is written here must read back, or the chat is lost.
        wrapped = encode_context({PIPELINE_KEY: body})
        text = wrapped[len(_WRAP_HEAD) : -1]
    except (TypeError, ValueError, RecursionError) as exc:
        raise ContextSerializationError(
            f"the pipeline section cannot be stored: {exc}",
            chat_id=chat_id,
            state_id=update.state_id,
        ) from exc
    user_json = update.context_json
    # The step's JSON is an object ("{...}"): append the key without decoding it again.
    inner = user_json.strip()[1:-1].strip()
    joined = f'{{{inner},"{PIPELINE_KEY}":{text}}}' if inner else f'{{"{PIPELINE_KEY}":{text}}}'
    return StateUpdate(update.state_id, {**update.context, PIPELINE_KEY: body}, joined)
