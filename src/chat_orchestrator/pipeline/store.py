"""The store side of the message pipeline: an inbox and a work index, per backend.

A :class:`PipelineStore` adds to a state manager's store what the record cannot hold:

* the **inbox**: each chat's pending events in arrival order, deduplicated by key for a
  retention period (a redelivered webhook finds its events already there);
* the **work index**: which chats have something to do and from when (``ready_at``), with a
  short lease so that one worker at a time takes a chat, and a crashed worker's chat is taken
  again when its lease ends;
* **dead letters**: events parked after too many failed tries, and messages no retry can send.

Everything a turn changes about its chat (the new state, the event marked done, the outbox,
the timers) is in the chat's record (``pipeline.section``), written by the state manager's
own conditional write. The inbox's "done" marks and the work index are hints around it: if
a worker dies between the record write and those, the record still tells the truth and the
next worker repairs them.

Each primitive is one operation (``chat_orchestrator._io``): a generator yielding the
backend's commands, run by :meth:`_run` and :meth:`_run_async`, so the sync and async faces
send the same commands. Times are epoch milliseconds (workers on several machines compare
them; keep clocks in sync, as for leases).
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from chat_orchestrator._io import Op, run_async, run_sync
from chat_orchestrator.errors import PipelineError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.state_managers.base import validate_chat_id

__all__ = ["DEFAULT_RETENTION", "DeadLetter", "PipelineStore", "Taken", "now_ms"]

T = TypeVar("T")
#: Meta (and Telegram) redeliver for up to 7 days: event keys are remembered that long.
DEFAULT_RETENTION = 7 * 24 * 3600.0


def now_ms() -> int:
    return int(time.time() * 1000)


#: Largest time (or duration) in seconds a store accepts: its milliseconds fit every backend.
_MAX_SECONDS = 1e13


def _ms(value: object, what: str) -> int:
    """``value`` seconds as integer milliseconds; PipelineError unless a finite number in
    range (NaN, infinities, 1e300, bools and strings never reach a store)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineError(f"{what} must be a number of seconds, not {value!r}")
    if not -_MAX_SECONDS <= value <= _MAX_SECONDS:  # False for NaN too
        raise PipelineError(f"{what} must be a finite number of seconds in range, not {value!r}")
    return int(value * 1000)


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PipelineError(f"limit must be an int, not {value!r}")
    return max(0, value)


def _at(value: float | None, what: str) -> int | None:
    return None if value is None else _ms(value, what)


@dataclass(frozen=True, slots=True)
class Taken:
    """A chat a worker took from the work index: its lease, and the index's stamp then."""

    chat_id: str
    owner: str
    #: Changes with every schedule: a release that finds another stamp knows news arrived.
    stamp: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event parked after its last try, or a message that could not be sent for good."""

    id: str
    chat_id: str
    #: "event" (a step that kept failing) or "send" (a message no retry can deliver)
    kind: str
    #: The event (``Event.to_json``) or the message (``OutItem.to_dict`` as JSON).
    body: str
    error: str
    at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "c": self.chat_id,
                "k": self.kind,
                "b": self.body,
                "e": self.error,
                "at": self.at,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadLetter:
        try:
            body = json.loads(text)
            return cls(body["id"], body["c"], body["k"], body["b"], body["e"], float(body["at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PipelineError(f"a stored dead letter cannot be read: {exc}") from exc


class PipelineStore(ABC):
    """Inbox, work index and dead letters for one state manager's store.

    Subclasses write the operations; this class validates arguments and runs them.
    """

    #: The store's name in messages ("memory", "sqlite", ...).
    name: str = "?"

    # -- operations (one atomic store operation each) ---------------------------------------
    @abstractmethod
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        """Append each ``(key, event json)`` whose key was not seen within the retention, in
        order, then schedule the chat at ``now``; True for each event stored now. Repeating a
        call (after a lost reply) stores nothing twice and still schedules the chat."""

    @abstractmethod
    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        """The chat's oldest pending events (JSON), at most ``limit``, in arrival order."""

    @abstractmethod
    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        """Mark these events done: no longer pending; their keys stay seen for the retention."""

    @abstractmethod
    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        """``ready_at = min(ready_at, at)``, creating the entry; a new stamp."""

    @abstractmethod
    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        """Take the chat with the lowest ``ready_at <= now`` whose lease (if any) ended:
        lease it to ``owner`` until ``now + lease_ms`` and set its ``ready_at`` to that same
        time (so a crashed worker's chat comes back); return ``(chat, stamp)``."""

    @abstractmethod
    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        """Extend ``owner``'s lease (and ``ready_at`` if it is the lease's) to ``until``."""

    @abstractmethod
    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        """End ``owner``'s lease. If the stamp is still ``stamp``, ``ready_at = next_at`` (None:
        drop the entry); otherwise news arrived: ``ready_at = min(ready_at, next_at)``."""

    @abstractmethod
    def _next_ready_op(self) -> Op[int | None]:
        """The lowest ``ready_at`` in the index (None: empty), for an idle worker's sleep."""

    @abstractmethod
    def _park_op(self, letter: DeadLetter) -> Op[None]:
        """Store ``letter`` (replacing one with the same id)."""

    @abstractmethod
    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        """Dead letters (JSON), oldest first, of one chat or all."""

    @abstractmethod
    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        """Forget a dead letter; False if there was none."""

    # -- composed operations: a store may fuse each into one round trip ------------------
    def _take_pending_op(
        self, now: int, lease_ms: int, owner: str, limit: int
    ) -> Op[tuple[str, int, list[str]] | None]:
        """``take``, then the taken chat's ``pending`` (a worker's first two steps)."""
        got = yield from self._take_op(now, lease_ms, owner)
        if got is None:
            return None
        events = yield from self._pending_op(got[0], limit)
        return got[0], got[1], events

    def _finish_release_op(
        self, chat_id: str, keys: Sequence[str], owner: str, stamp: int, next_at: int | None
    ) -> Op[None]:
        """``finish`` (if any keys), then ``release`` (a worker's last two steps).

        Finish first: a crash between them leaves the lease to expire, never a done event
        looking pending to the next worker (which would only skip it, by the record).
        """
        if keys:
            yield from self._finish_op(chat_id, keys)
        yield from self._release_op(chat_id, owner, stamp, next_at)

    # -- I/O --------------------------------------------------------------------------------
    @abstractmethod
    def _execute(self, command: Any) -> Any: ...

    @abstractmethod
    async def _execute_async(self, command: Any) -> Any: ...

    def _run(self, op: Op[T]) -> T:
        return run_sync(op, self._execute)

    async def _run_async(self, op: Op[T]) -> T:
        return await run_async(op, self._execute_async)

    # -- the public face --------------------------------------------------------------------
    def add(self, events: Sequence[Event], retention: float = DEFAULT_RETENTION) -> list[bool]:
        """Store events (all of one chat), deduplicated by key; True for each new one."""
        return self._run(self._add_checked(events, retention))

    async def add_async(
        self, events: Sequence[Event], retention: float = DEFAULT_RETENTION
    ) -> list[bool]:
        return await self._run_async(self._add_checked(events, retention))

    def _add_checked(self, events: Sequence[Event], retention: float) -> Op[list[bool]]:
        if not events:
            return []
        chat_id = events[0].chat_id
        if any(event.chat_id != chat_id for event in events):
            raise PipelineError("add() takes the events of one chat")
        encoded = [(event.key, event.to_json()) for event in events]
        if len({key for key, _ in encoded}) != len(encoded):
            # Within one call a repeat is dropped here (a store would see both as new).
            unique: dict[str, str] = {}
            for key, text in encoded:
                unique.setdefault(key, text)
            encoded = list(unique.items())
        retention_ms = max(1, _ms(retention, "retention"))
        added = yield from self._add_op(chat_id, encoded, retention_ms, now_ms())
        by_key = dict(zip((key for key, _ in encoded), added, strict=True))
        first: dict[str, bool] = {}
        result = []
        for event in events:
            result.append(by_key[event.key] and event.key not in first)
            first[event.key] = True
        return result

    def pending(self, chat_id: str, limit: int = 20) -> list[Event]:
        return [
            Event.from_json(text) for text in self._run(self._pending_op(chat_id, _limit(limit)))
        ]

    async def pending_async(self, chat_id: str, limit: int = 20) -> list[Event]:
        texts = await self._run_async(self._pending_op(chat_id, _limit(limit)))
        return [Event.from_json(text) for text in texts]

    def finish(self, chat_id: str, keys: Sequence[str]) -> None:
        if keys:
            self._run(self._finish_op(chat_id, list(keys)))

    async def finish_async(self, chat_id: str, keys: Sequence[str]) -> None:
        if keys:
            await self._run_async(self._finish_op(chat_id, list(keys)))

    def schedule(self, chat_id: str, at: float) -> None:
        """Make sure a worker looks at ``chat_id`` at epoch time ``at`` (or earlier)."""
        self._run(self._schedule_op(validate_chat_id(chat_id), _ms(at, "at")))

    async def schedule_async(self, chat_id: str, at: float) -> None:
        await self._run_async(self._schedule_op(validate_chat_id(chat_id), _ms(at, "at")))

    def take(self, owner: str, lease: float) -> Taken | None:
        got = self._run(self._take_op(now_ms(), _ms(lease, "lease"), owner))
        return None if got is None else Taken(got[0], owner, got[1])

    async def take_async(self, owner: str, lease: float) -> Taken | None:
        got = await self._run_async(self._take_op(now_ms(), _ms(lease, "lease"), owner))
        return None if got is None else Taken(got[0], owner, got[1])

    def take_pending(
        self, owner: str, lease: float, limit: int = 20
    ) -> tuple[Taken, list[Event]] | None:
        """Take a ready chat and read its oldest pending events, in as few round trips as the
        store can."""
        got = self._run(self._take_pending_op(now_ms(), _ms(lease, "lease"), owner, _limit(limit)))
        if got is None:
            return None
        return Taken(got[0], owner, got[1]), [Event.from_json(text) for text in got[2]]

    async def take_pending_async(
        self, owner: str, lease: float, limit: int = 20
    ) -> tuple[Taken, list[Event]] | None:
        op = self._take_pending_op(now_ms(), _ms(lease, "lease"), owner, _limit(limit))
        got = await self._run_async(op)
        if got is None:
            return None
        return Taken(got[0], owner, got[1]), [Event.from_json(text) for text in got[2]]

    def finish_release(self, taken: Taken, keys: Sequence[str], next_at: float | None) -> None:
        """Mark ``keys`` done and end the lease (see :meth:`release`)."""
        at = _at(next_at, "next_at")
        op = self._finish_release_op(taken.chat_id, list(keys), taken.owner, taken.stamp, at)
        self._run(op)

    async def finish_release_async(
        self, taken: Taken, keys: Sequence[str], next_at: float | None
    ) -> None:
        at = _at(next_at, "next_at")
        op = self._finish_release_op(taken.chat_id, list(keys), taken.owner, taken.stamp, at)
        await self._run_async(op)

    def renew(self, taken: Taken, lease: float) -> bool:
        return self._run(self._renew_op(taken.chat_id, taken.owner, now_ms() + _ms(lease, "lease")))

    async def renew_async(self, taken: Taken, lease: float) -> bool:
        until = now_ms() + _ms(lease, "lease")
        return await self._run_async(self._renew_op(taken.chat_id, taken.owner, until))

    def release(self, taken: Taken, next_at: float | None) -> None:
        at = _at(next_at, "next_at")
        self._run(self._release_op(taken.chat_id, taken.owner, taken.stamp, at))

    async def release_async(self, taken: Taken, next_at: float | None) -> None:
        at = _at(next_at, "next_at")
        await self._run_async(self._release_op(taken.chat_id, taken.owner, taken.stamp, at))

    def next_ready(self) -> float | None:
        at = self._run(self._next_ready_op())
        return None if at is None else at / 1000

    async def next_ready_async(self) -> float | None:
        at = await self._run_async(self._next_ready_op())
        return None if at is None else at / 1000

    def park(self, letter: DeadLetter) -> None:
        self._run(self._park_op(letter))

    async def park_async(self, letter: DeadLetter) -> None:
        await self._run_async(self._park_op(letter))

    def dead_letters(self, limit: int = 1000, chat_id: str | None = None) -> list[DeadLetter]:
        texts = self._run(self._dead_op(_limit(limit), chat_id))
        return [DeadLetter.from_json(text) for text in texts]

    async def dead_letters_async(
        self, limit: int = 1000, chat_id: str | None = None
    ) -> list[DeadLetter]:
        texts = await self._run_async(self._dead_op(_limit(limit), chat_id))
        return [DeadLetter.from_json(text) for text in texts]

    def drop_dead(self, letter_id: str) -> bool:
        return self._run(self._drop_dead_op(letter_id))

    async def drop_dead_async(self, letter_id: str) -> bool:
        return await self._run_async(self._drop_dead_op(letter_id))

    def wait(self, timeout: float) -> None:
        """An idle worker waits here for news, at most ``timeout`` seconds.

        The default sleeps (the worker polls); a store that can be told of new work (memory's
        condition, PostgreSQL's LISTEN/NOTIFY) returns as soon as there is some.
        """
        time.sleep(timeout)

    async def wait_async(self, timeout: float) -> None:
        """:meth:`wait` on the running event loop."""
        await asyncio.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the store holds of its own (most share the state manager's client)."""


class BlockingPipelineStore(PipelineStore):
    """For stores whose driver is blocking: each operation yields one call.

    The sync face makes the call; the async face makes it in a worker thread.
    """

    def _execute(self, command: Any) -> Any:
        call: Callable[[], Any] = command
        return call()

    async def _execute_async(self, command: Any) -> Any:
        return await asyncio.to_thread(command)
