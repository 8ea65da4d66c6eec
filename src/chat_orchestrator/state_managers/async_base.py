"""The async side of the storage contract.

The engine's async path needs four things of a store: begin a turn (lock + load) with
``begin_turn_async``, and, on the turn it returns, ``commit`` an update conditionally and
``close``; plus ``delete_state_async`` and ``load_async`` for resets and inspection.

Where they come from:

* built-in managers run the very operations of their sync methods on an async driver
  (``chat_orchestrator._io``), so a sync and an async worker on one store interoperate;
* a user's own **sync** manager (the three seed methods) gets them from
  :class:`~chat_orchestrator.state_managers.base.StateManager`: its blocking calls run in
  worker threads and its process-local lock is awaited without occupying a thread;
* a user's own **async** manager subclasses :class:`AsyncStateManager` and implements only
  ``async def get_state / set_state / delete_state``; it gets the same process-local
  defaults as the sync base (a per-chat lock shared by every thread and event loop of the
  process, versions that fingerprint the content).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from chat_orchestrator._io import run_async
from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.state_managers._locks import ClaimTable, KeyedLock
from chat_orchestrator.state_managers.base import (
    StateRecord,
    StateUpdate,
    fingerprint,
    validate_chat_id,
    validate_claim_key,
    validate_claim_ttl,
)

if TYPE_CHECKING:
    from chat_orchestrator.state_managers._locks import _Entry
    from chat_orchestrator.state_managers.base import StateManager, TurnLease

__all__ = ["AsyncStateManager", "AsyncTurnLease", "require_sync"]


async def no_io(command: object) -> object:  # pragma: no cover - local ops yield only Sleep
    raise TypeError(f"unexpected command {command!r}")


def require_sync(manager: StateManager | AsyncStateManager) -> StateManager:
    """``manager`` if it serves the sync path, else a clear error naming the async spelling."""
    if isinstance(manager, AsyncStateManager):
        raise StateManagerError(
            f"{type(manager).__name__} is an async state manager: use the `..._async` "
            "methods (for example `await orchestrator.handle_message_async(...)`)"
        )
    return manager


class AsyncTurnLease(ABC):
    """One chat's turn on the async path: holds the chat until :meth:`close`.

    ``record`` is what was stored when the turn began (``None`` for a new chat).
    """

    __slots__ = ("chat_id", "record")

    chat_id: str
    record: StateRecord | None

    @abstractmethod
    async def commit(self, update: StateUpdate) -> None:
        """Store ``update`` if the chat is still at the version this turn read."""

    @abstractmethod
    async def close(self) -> None:
        """Release the chat (a no-op once a commit released it)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _LocalTurn(AsyncTurnLease):
    """A turn under the process-local lock; load and conditional write are given as calls."""

    __slots__ = ("_entry", "_locks", "_owner")

    def __init__(self, owner: LocalOwner, locks: KeyedLock, chat_id: str, entry: _Entry) -> None:
        self._owner, self._locks, self.chat_id = owner, locks, chat_id
        self._entry: _Entry | None = entry
        self.record = None

    async def commit(self, update: StateUpdate) -> None:
        expected = 0 if self.record is None else self.record.version
        await self._owner.compare_and_set_update(self.chat_id, update, expected)

    async def close(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._locks.release(self.chat_id, entry)


class LocalOwner(Protocol):
    """What a process-locally locked turn needs of its manager."""

    async def load_async(self, chat_id: str) -> StateRecord | None: ...

    async def compare_and_set_update(
        self, chat_id: str, update: StateUpdate, expected: int
    ) -> None: ...


async def local_turn(
    owner: LocalOwner, locks: KeyedLock, chat_id: str, timeout: float | None
) -> AsyncTurnLease:
    """Await the process-local lock of ``chat_id``, then load its record."""
    entry = await run_async(locks.acquire_op(chat_id, timeout), no_io)
    turn = _LocalTurn(owner, locks, chat_id, entry)
    try:
        turn.record = await owner.load_async(chat_id)
    except BaseException:
        await turn.close()
        raise
    return turn


class SyncManagerOnLoop(LocalOwner):
    """The async face of a user's sync manager: blocking calls run in worker threads."""

    __slots__ = ("_manager",)

    def __init__(self, manager: StateManager) -> None:
        self._manager = manager

    async def load_async(self, chat_id: str) -> StateRecord | None:
        return await asyncio.to_thread(self._manager.load, chat_id)

    async def compare_and_set_update(
        self, chat_id: str, update: StateUpdate, expected: int
    ) -> None:
        await asyncio.to_thread(
            self._manager.compare_and_set,
            chat_id,
            update.state_id,
            update.context,
            expected_version=expected,
            encoded=update.context_json,
        )


class ThreadedTurn(AsyncTurnLease):
    """A sync manager's own :class:`TurnLease` (its overridden lock) driven from threads."""

    __slots__ = ("_turn",)

    def __init__(self, turn: TurnLease) -> None:
        self._turn, self.chat_id, self.record = turn, turn.chat_id, turn.record

    async def commit(self, update: StateUpdate) -> None:
        await asyncio.to_thread(self._turn.commit, update)

    async def close(self) -> None:
        await asyncio.to_thread(self._turn.close)


class AsyncStateManager(ABC):
    """Base of a user's own async manager: implement the three async seed methods.

    The defaults are **process-local**, as in the sync base: a per-chat lock shared by every
    thread and event loop of this process (other processes are not serialized: override
    :meth:`begin_turn_async` for that), and versions that fingerprint the stored content,
    so a write is still conditional on what was read.
    """

    #: Seconds a turn waits for a chat's lock before LockTimeoutError; ``None`` waits forever.
    lock_timeout: ClassVar[float | None] = 60.0

    @abstractmethod
    async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        """Return ``(state_id, context)`` for the chat, or ``None`` if nothing is stored."""

    @abstractmethod
    async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        """Store ``state_id`` and ``context`` for the chat unconditionally."""

    @abstractmethod
    async def delete_state(self, chat_id: str) -> None:
        """Forget the chat (no error if nothing is stored)."""

    # -- the engine-facing async contract ----------------------------------------------------
    async def load_async(self, chat_id: str) -> StateRecord | None:
        got = await self.get_state(validate_chat_id(chat_id))
        if got is None:
            return None
        state_id, context = got
        return StateRecord(state_id, context, fingerprint(chat_id, state_id, context))

    async def compare_and_set_update(
        self, chat_id: str, update: StateUpdate, expected: int
    ) -> None:
        current = await self.load_async(chat_id)
        found = 0 if current is None else current.version
        if found != expected:
            from chat_orchestrator.state_managers.base import StateManager

            StateManager._check_version(chat_id, found, expected)
        await self.set_state(chat_id, update.state_id, update.context)

    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        return await local_turn(self, self._locks(), validate_chat_id(chat_id), self.lock_timeout)

    async def delete_state_async(self, chat_id: str) -> None:
        await self.delete_state(validate_chat_id(chat_id))

    async def claim_async(self, key: str, ttl: float) -> bool:
        """Process-local once-only markers (override for a shared store)."""
        table: ClaimTable | None = self.__dict__.get("_claims")
        if table is None:
            table = self.__dict__.setdefault("_claims", ClaimTable())
        return table.claim(validate_claim_key(key), validate_claim_ttl(ttl))

    async def release_claim_async(self, key: str) -> None:
        table: ClaimTable | None = self.__dict__.get("_claims")
        if table is not None:
            table.release(validate_claim_key(key))

    def begin_turn(self, chat_id: str) -> TurnLease:
        raise StateManagerError(
            f"{type(self).__name__} is an async state manager: run turns with "
            "`await orchestrator.handle_message_async(...)`"
        )

    async def close_async(self) -> None:  # noqa: B027 - optional hook, not abstract on purpose
        """Release connections; the default has none."""

    def _locks(self) -> KeyedLock:
        # Created lazily: a user's subclass need not call super().__init__().
        locks: KeyedLock | None = self.__dict__.get("_chat_locks")
        if locks is None:
            locks = self.__dict__.setdefault("_chat_locks", KeyedLock())
        return locks
