"""Process memory: the default backend for the console, tests and single-process bots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from chat_orchestrator._io import run_async
from chat_orchestrator._jsonctx import decode_context
from chat_orchestrator.errors import CorruptStateError, describe_chat_id
from chat_orchestrator.state_managers._locks import KeyedLock, check_lock_timeout
from chat_orchestrator.state_managers.async_base import AsyncTurnLease, local_turn, no_io
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    RecordStateManager,
    StateRecord,
    StateUpdate,
    keep_chat,
    validate_chat_id,
    validate_write,
)

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.memory import MemoryPipelineStore

__all__ = ["InMemoryStateManager"]


class InMemoryStateManager(RecordStateManager):
    """Keeps records in a dict, serialized per chat across the threads of one process.

    Contexts are held as JSON text, so a step mutating the dict it was handed can never
    change the stored record unless the turn commits.
    """

    def __init__(self, *, lock_timeout: float | None = 60.0) -> None:
        # chat id -> (state id, context JSON, version, last write in epoch seconds)
        self._records: dict[str, tuple[str, str, int, float]] = {}
        self._locks = KeyedLock()
        self._lock_timeout = check_lock_timeout(lock_timeout)
        self._pipeline: MemoryPipelineStore | None = None

    def pipeline_store(self) -> MemoryPipelineStore:
        """The pipeline's inbox and work index, in this process's memory beside the records."""
        if self._pipeline is None:
            from chat_orchestrator.pipeline.memory import MemoryPipelineStore

            self._pipeline = MemoryPipelineStore()
        return self._pipeline

    # Seed methods write unconditionally, but bump the version so a concurrent turn notices.
    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        text = validate_write(chat_id, state_id, context)
        with self.lock(chat_id):
            old = self._records.get(chat_id)
            version = 1 if old is None else old[2] + 1
            self._records[chat_id] = (state_id, text, version, time.time())

    def delete_state(self, chat_id: str) -> None:
        with self.lock(chat_id):  # lock() validates the id
            self._records.pop(chat_id, None)

    def load(self, chat_id: str) -> StateRecord | None:
        stored = self._records.get(validate_chat_id(chat_id))
        if stored is None:
            return None
        try:
            context = decode_context(stored[1])
        except ValueError as exc:  # only through a write that bypassed validate_write
            raise CorruptStateError(
                f"the record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
            ) from exc
        return StateRecord(stored[0], context, stored[2])

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
        # The caller holds the chat's lock and every writer here takes it: check-then-set is safe.
        old = self._records.get(chat_id)
        found = 0 if old is None else old[2]
        self._check_version(chat_id, found, expected_version)
        self._records[chat_id] = (state_id, text, found + 1, time.time())
        return found + 1

    def lock(self, chat_id: str) -> _Held:
        return _Held(self._locks, validate_chat_id(chat_id), self._lock_timeout)

    # -- the async path: the same records and locks, awaited instead of waited for ------------
    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        return await local_turn(self, self._locks, validate_chat_id(chat_id), self._lock_timeout)

    async def load_async(self, chat_id: str) -> StateRecord | None:
        return self.load(chat_id)  # no I/O: nothing to wait for

    async def compare_and_set_update(
        self, chat_id: str, update: StateUpdate, expected: int
    ) -> None:
        self.compare_and_set(
            chat_id,
            update.state_id,
            update.context,
            expected_version=expected,
            encoded=update.context_json,
        )

    async def delete_state_async(self, chat_id: str) -> None:
        # Awaits the chat's lock like a turn, so a reset never lands inside a running turn.
        validate_chat_id(chat_id)  # before the lock: a bad id must not lock anything
        entry = await run_async(self._locks.acquire_op(chat_id, self._lock_timeout), no_io)
        try:
            self._records.pop(chat_id, None)
        finally:
            self._locks.release(chat_id, entry)

    async def claim_async(self, key: str, ttl: float) -> bool:
        return self.claim(key, ttl)

    async def release_claim_async(self, key: str) -> None:
        self.release_claim(key)

    def __len__(self) -> int:
        return len(self._records)

    # -- operator tools ----------------------------------------------------------------------
    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        # A snapshot of the ids (the dict may change while the caller iterates); each record
        # is read as it is reached, so a chat deleted meanwhile is skipped.
        for chat_id in list(self._records):
            info = self.chat_info(chat_id)
            if info is not None and keep_chat(info, state, cutoff):
                yield info

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        stored = self._records.get(validate_chat_id(chat_id))
        return None if stored is None else ChatInfo(chat_id, stored[0], stored[2], stored[3])

    def delete_if(self, chat_id: str, *, expected_version: int) -> None:
        with self.lock(chat_id):  # delete_state takes the lock itself: not reentrant
            old = self._records.get(chat_id)
            self._check_version(chat_id, 0 if old is None else old[2], expected_version)
            self._records.pop(chat_id, None)


class _Held:
    """A cheap context manager over one KeyedLock entry (no generator on the hot path)."""

    __slots__ = ("_entry", "_key", "_locks", "_timeout")

    def __init__(self, locks: KeyedLock, key: str, timeout: float | None) -> None:
        self._locks, self._key, self._timeout = locks, key, timeout

    def __enter__(self) -> None:
        self._entry = self._locks.acquire(self._key, self._timeout)

    def __exit__(self, *exc: object) -> None:
        self._locks.release(self._key, self._entry)
