"""Shared shape of backends whose chat lock is an expiring lease held by a random token.

A backend writes each storage step once, as an operation (``chat_orchestrator._io``): a
generator that yields the store's own commands. The lease steps are

* ``_acquire_op(chat_id, token)``: take the lease if free (or expired) and read the record;
  ``(False, None)`` when another token holds a live lease;
* ``_write_op(chat_id, token, expected, ...)``: store if the version is ``expected`` (and, with
  a token, the lease is still ours), dropping the lease in the same operation;
* ``_unlock_op(chat_id, token)``: drop the lease if it is still ours;
* ``_renew_op(chat_id, token)``: push the lease's end ``lock_lease`` ahead if it is still ours;

plus the record and claim steps, and two I/O layers that run one command (``_execute``,
``_execute_async``). This class validates every argument once and turns the operations into
waiting with backoff, ``lock``, ``save``, ``compare_and_set`` and a two-round-trip turn, on
the sync path and, through the very same operations, on the async one.

Leases are short (``DEFAULT_LOCK_LEASE``) so that a killed worker frees its chats quickly, and
a turn waits much longer than that (``DEFAULT_LOCK_TIMEOUT``), so the next message for a chat
whose holder died still runs. A live holder whose step outlasts the lease (an LLM call) keeps
it: one daemon thread per process renews every held lease each third of its length. The
thread is shared: a turn costs a dict insert and delete, not a thread or a round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import secrets
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from chat_orchestrator._io import Op, Sleep, run_async, run_sync
from chat_orchestrator.errors import CorruptStateError, LockTimeoutError, describe_chat_id
from chat_orchestrator.state_managers.async_base import AsyncTurnLease
from chat_orchestrator.state_managers.base import (
    RecordStateManager,
    StateRecord,
    StateUpdate,
    TurnLease,
    validate_chat_id,
    validate_claim_key,
    validate_claim_ttl,
    validate_write,
)

__all__ = [
    "DEFAULT_LOCK_LEASE",
    "DEFAULT_LOCK_TIMEOUT",
    "LeasedStateManager",
    "check_lease_settings",
    "new_token",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: A dead holder's lease ends within this many seconds (a live one is renewed).
DEFAULT_LOCK_LEASE = 10.0
#: A turn waits this long for a busy chat: three leases, so it outlives a dead holder's lease.
DEFAULT_LOCK_TIMEOUT = 30.0


def check_lease_settings(lock_lease: float, lock_timeout: float | None) -> int:
    """The lease in ms; ValueError for a lease or timeout that is not a positive number."""
    if isinstance(lock_lease, bool) or not isinstance(lock_lease, int | float):
        raise TypeError(f"lock_lease must be a number of seconds, not {type(lock_lease).__name__}")
    if not math.isfinite(lock_lease) or lock_lease <= 0:
        raise ValueError(f"lock_lease must be a positive number of seconds, not {lock_lease!r}")
    if lock_timeout is not None and (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, int | float)
        or math.isnan(lock_timeout)
        or lock_timeout < 0
    ):
        raise ValueError(f"lock_timeout must be None or seconds >= 0, not {lock_timeout!r}")
    if lock_timeout is not None and lock_timeout <= lock_lease:
        # Allowed (a caller may prefer failing fast), but a dead holder then fails messages.
        logger.warning(
            "lock_timeout (%s s) is not longer than lock_lease (%s s): a turn waiting for a "
            "chat whose worker died times out before the dead lease ends",
            lock_timeout,
            lock_lease,
        )
    return max(1, int(lock_lease * 1000))


class _Tokens:
    """Unique lease tokens without a syscall each: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked child must not reuse tokens

    def reset(self) -> None:
        self._prefix = secrets.token_hex(12)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


new_token = _Tokens()


class _Renewer:
    """One daemon thread per process that renews every held lease each third of its length.

    ``_active`` maps a token to (manager, chat id, due time): only the turns running right now,
    so the thread simply scans it every tick (an eighth of the shortest renewal period held)
    and sleeps on a condition while it is empty. A turn costs one dict insert and one delete
    under an uncontended lock; it signals the thread only to wake it from idle or to shorten
    its tick. Renewals are made one after another: a backend that hangs for its socket timeout
    delays the others by that much (the period leaves two more tries before a lease ends).
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # the thread does not survive a fork

    def reset(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._active: dict[str, tuple[LeasedStateManager, str, float]] = {}
        self._tick = math.inf  # the thread's current sleep; inf while idle
        self._thread: threading.Thread | None = None

    @staticmethod
    def _period(manager: LeasedStateManager) -> float:
        return manager._lease_ms / 3000  # a third of the lease: two spare tries before it ends

    def hold(self, manager: LeasedStateManager, chat_id: str, token: str) -> None:
        period = self._period(manager)
        due = time.monotonic() + period
        with self._wake:
            self._active[token] = (manager, chat_id, due)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chat-orchestrator-lease-renewer", daemon=True
                )
                self._thread.start()
            if period / 8 < self._tick:
                self._wake.notify()

    def drop(self, token: str) -> None:
        with self._wake:
            self._active.pop(token, None)

    def __len__(self) -> int:
        return len(self._active)

    def _run(self) -> None:
        idle_ticks = 0
        while True:
            with self._wake:
                if not self._active:
                    # Keep ticking for a period after the last turn, so that turns arriving
                    # one after another never have to signal the thread awake.
                    idle_ticks += 1
                    if idle_ticks <= 8 and self._tick < math.inf:
                        self._wake.wait(self._tick)
                        continue
                    self._tick = math.inf
                    while not self._active:
                        self._wake.wait()
                idle_ticks = 0
                held = list(self._active.items())
                self._tick = min(
                    self._period(manager) / 8 for manager, _, _ in self._active.values()
                )
                tick = self._tick
            now = time.monotonic()
            for token, (manager, chat_id, due) in held:
                if due <= now:
                    self._renew(manager, chat_id, token)
            with self._wake:
                self._wake.wait(tick)

    def _renew(self, manager: LeasedStateManager, chat_id: str, token: str) -> None:
        try:
            renewed = manager._renew(chat_id, token)
        except Exception as exc:  # the thread must survive a backend outage; retry next tick
            logger.warning(
                "could not renew the lease of chat %s: %s: %s",
                describe_chat_id(chat_id),
                type(exc).__name__,
                exc,
            )
            return
        with self._wake:
            if token not in self._active:
                return  # the turn ended while we renewed
            if renewed:
                self._active[token] = (manager, chat_id, time.monotonic() + self._period(manager))
                return
            del self._active[token]
        logger.warning(
            "the lease of chat %s ran out while its turn still ran (renewed too late, or "
            "another worker took it over); the turn's write is refused if another wrote",
            describe_chat_id(chat_id),
        )


renewer = _Renewer()


class LeasedStateManager(RecordStateManager):
    """A store whose every operation is written once, as a generator (``chat_orchestrator._io``).

    A backend implements the operations below, each yielding its own commands (a Redis
    command, a MongoDB call, a function to run on a file), plus the two I/O layers that
    execute one command: :meth:`_execute` (blocking) and :meth:`_execute_async` (awaited).
    This class validates every argument once, then runs the same operation for the sync
    methods and for their ``..._async`` twins, so a sync and an async worker on one store
    send the same scripts and queries and interoperate.
    """

    atomic_compare_and_set = True  # one conditional write that also respects others' leases

    _lock_timeout: float | None
    _lease_ms: int
    _address: str

    # -- what a backend writes: operations ---------------------------------------------------
    @abstractmethod
    def _acquire_op(self, chat_id: str, token: str) -> Op[tuple[bool, StateRecord | None]]:
        """``(True, record or None)`` if the lease was taken, ``(False, None)`` if busy."""

    @abstractmethod
    def _write_op(
        self, chat_id: str, token: str | None, expected: int, state_id: str, text: str
    ) -> Op[int]:
        """Conditional write; raises VersionConflictError. With a token, drops the lease."""

    @abstractmethod
    def _unlock_op(self, chat_id: str, token: str) -> Op[None]:
        """Drop the lease if ``token`` still holds it."""

    @abstractmethod
    def _renew_op(self, chat_id: str, token: str) -> Op[bool]:
        """Extend the lease by ``_lease_ms`` if ``token`` still holds it; False if it does not."""

    @abstractmethod
    def _load_op(self, chat_id: str) -> Op[StateRecord | None]: ...

    @abstractmethod
    def _set_op(self, chat_id: str, state_id: str, text: str) -> Op[None]:
        """Unconditional write (the seed method) that still bumps the version."""

    @abstractmethod
    def _delete_op(self, chat_id: str) -> Op[None]: ...

    @abstractmethod
    def _claim_op(self, key: str, ttl: float) -> Op[bool]: ...

    @abstractmethod
    def _release_claim_op(self, key: str) -> Op[None]: ...

    # -- what a backend writes: the two I/O layers ---------------------------------------------
    @abstractmethod
    def _execute(self, command: Any) -> Any:
        """Run one command, blocking."""

    @abstractmethod
    async def _execute_async(self, command: Any) -> Any:
        """Run one command on the running event loop."""

    def _run(self, op: Op[T]) -> T:
        return run_sync(op, self._execute)

    async def _run_async(self, op: Op[T]) -> T:
        return await run_async(op, self._execute_async)

    # -- shared operations ----------------------------------------------------------------------
    def _acquire_and_load_op(self, chat_id: str, token: str) -> Op[StateRecord | None]:
        deadline = None if self._lock_timeout is None else time.monotonic() + self._lock_timeout
        pause = 0.001
        while True:
            try:
                acquired, record = yield from self._acquire_op(chat_id, token)
            except CorruptStateError:
                # The lease was taken, then the record failed to decode: give the lease back,
                # or a repaired chat stays locked for a whole lease.
                yield from self._unlock_op(chat_id, token)
                raise
            if acquired:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"chat {describe_chat_id(chat_id)} stayed locked for more than "
                    f"{self._lock_timeout} s (at {self._address})"
                )
            yield Sleep(pause)
            pause = min(pause * 2, 0.05)

    def _save_op(
        self, chat_id: str, token: str, expected: int, state_id: str, text: str
    ) -> Op[int]:
        yield from self._acquire_and_load_op(chat_id, token)
        try:
            return (yield from self._write_op(chat_id, token, expected, state_id, text))
        except GeneratorExit:
            raise  # the driver is closing the op (cancelled): an op must not yield now
        except BaseException:
            yield from self._unlock_op(chat_id, token)
            raise

    # -- the sync methods -----------------------------------------------------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        return self._run(self._load_op(validate_chat_id(chat_id)))

    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        self._run(self._set_op(chat_id, state_id, validate_write(chat_id, state_id, context)))

    def delete_state(self, chat_id: str) -> None:
        self._run(self._delete_op(validate_chat_id(chat_id)))

    def claim(self, key: str, ttl: float) -> bool:
        return self._run(self._claim_op(validate_claim_key(key), validate_claim_ttl(ttl)))

    def release_claim(self, key: str) -> None:
        self._run(self._release_claim_op(validate_claim_key(key)))

    def compare_and_set(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        text = validate_write(chat_id, state_id, context, encoded)
        return self._run(self._write_op(chat_id, None, expected_version, state_id, text))

    def save(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        text = validate_write(chat_id, state_id, context, encoded)
        return self._run(self._save_op(chat_id, new_token(), expected_version, state_id, text))

    @contextmanager
    def lock(self, chat_id: str) -> Iterator[None]:
        validate_chat_id(chat_id)
        token = new_token()
        self._run(self._acquire_and_load_op(chat_id, token))
        try:
            renewer.hold(self, chat_id, token)
            yield
        finally:
            renewer.drop(token)
            self._run(self._unlock_op(chat_id, token))

    def begin_turn(self, chat_id: str) -> TurnLease:
        validate_chat_id(chat_id)
        token = new_token()
        try:
            record = self._run(self._acquire_and_load_op(chat_id, token))
        except KeyboardInterrupt:
            # Interrupted with the lease command in flight (Ctrl-C): give the lease back.
            self._run(self._unlock_op(chat_id, token))
            raise
        return _LeasedTurn(self, chat_id, token, record)

    def _renew(self, chat_id: str, token: str) -> bool:
        # The renewer thread renews async turns' leases too, through the blocking driver.
        return self._run(self._renew_op(chat_id, token))

    # -- the async methods: the same operations, awaited ----------------------------------------
    async def load_async(self, chat_id: str) -> StateRecord | None:
        return await self._run_async(self._load_op(validate_chat_id(chat_id)))

    async def set_state_async(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        text = validate_write(chat_id, state_id, context)
        await self._run_async(self._set_op(chat_id, state_id, text))

    async def delete_state_async(self, chat_id: str) -> None:
        await self._run_async(self._delete_op(validate_chat_id(chat_id)))

    async def claim_async(self, key: str, ttl: float) -> bool:
        op = self._claim_op(validate_claim_key(key), validate_claim_ttl(ttl))
        return await self._run_async(op)

    async def release_claim_async(self, key: str) -> None:
        await self._run_async(self._release_claim_op(validate_claim_key(key)))

    async def compare_and_set_async(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        text = validate_write(chat_id, state_id, context, encoded)
        return await self._run_async(
            self._write_op(chat_id, None, expected_version, state_id, text)
        )

    async def save_async(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        text = validate_write(chat_id, state_id, context, encoded)
        token = new_token()
        try:
            return await self._run_async(
                self._save_op(chat_id, token, expected_version, state_id, text)
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._run_async(self._unlock_op(chat_id, token)))
            raise

    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        validate_chat_id(chat_id)
        token = new_token()
        try:
            record = await self._run_async(self._acquire_and_load_op(chat_id, token))
        except asyncio.CancelledError:
            # Cancelled with the lease command in flight: the store may have granted the lease
            # to a token nobody holds any more. Give it back (a no-op if it was not taken),
            # shielded, so the chat is free at once instead of after a whole lease.
            await asyncio.shield(self._run_async(self._unlock_op(chat_id, token)))
            raise
        return _AsyncLeasedTurn(self, chat_id, token, record)


class _Lease:
    """What both turn kinds share: the token, the renewal, the conditional write's op."""

    _leased: LeasedStateManager
    _token: str | None
    chat_id: str
    record: StateRecord | None
    #: The record's version after this turn's commit (None before it): the message
    #: pipeline's next conditional write on the chat expects it.
    committed: int | None

    def _hold(self) -> None:
        assert self._token is not None
        try:
            renewer.hold(self._leased, self.chat_id, self._token)  # a step may outlast a lease
        except BaseException:  # no thread to renew with: give the lease back
            self._leased._run(self._leased._unlock_op(self.chat_id, self._token))
            raise

    def _commit_op(self, update: StateUpdate) -> Op[int]:
        token = self._token
        assert token is not None, "this turn was already committed or closed"
        expected = 0 if self.record is None else self.record.version
        version = yield from self._leased._write_op(
            self.chat_id, token, expected, update.state_id, update.context_json
        )
        self._token = None  # the write dropped the lease
        self.committed = version
        renewer.drop(token)
        return version

    def _release(self) -> str | None:
        token, self._token = self._token, None
        if token is not None:
            renewer.drop(token)
        return token


class _LeasedTurn(_Lease, TurnLease):
    """Lease + load in one round trip; conditional write + release in another."""

    __slots__ = ("_leased", "_token", "committed")

    def __init__(
        self, manager: LeasedStateManager, chat_id: str, token: str, record: StateRecord | None
    ) -> None:
        self._manager = self._leased = manager
        self.chat_id, self._token, self.record = chat_id, token, record
        self.committed = None
        self._held = None
        self._hold()

    def commit(self, update: StateUpdate) -> None:
        self._leased._run(self._commit_op(update))

    def close(self) -> None:
        token = self._release()
        if token is not None:
            self._leased._run(self._leased._unlock_op(self.chat_id, token))


class _AsyncLeasedTurn(_Lease, AsyncTurnLease):
    __slots__ = ("_leased", "_token", "committed")

    def __init__(
        self, manager: LeasedStateManager, chat_id: str, token: str, record: StateRecord | None
    ) -> None:
        self._leased = manager
        self.chat_id, self._token, self.record = chat_id, token, record
        self.committed = None
        self._hold()

    async def commit(self, update: StateUpdate) -> None:
        await self._leased._run_async(self._commit_op(update))

    async def close(self) -> None:
        token = self._release()
        if token is not None:
            await self._leased._run_async(self._leased._unlock_op(self.chat_id, token))
