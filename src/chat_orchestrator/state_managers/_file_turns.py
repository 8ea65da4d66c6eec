"""A chat's flock as a value, its two turn kinds, and the async I/O layer of the file backend.

The file backend's operations (``FileStateManager._lock_op`` and friends) yield plain
callables: short blocking calls (an open and a non-blocking ``flock``, a read, a write with
its fsyncs). The sync path calls them directly; the async path runs them with
:func:`in_thread`. Waiting for a busy chat is never one of them: it happens in the operation,
between tries (``Sleep``), so no worker thread is ever parked on another process's lock.

Who releases a chat's flock is always exactly one party at a time: the :class:`Held` value
while a turn runs, then the commit call that takes it over (it writes, then releases, in one
thread hop), or :func:`in_thread`'s clean-up when the caller was cancelled while the call that
took the lock was still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.state_managers._file_io import exists
from chat_orchestrator.state_managers.async_base import AsyncTurnLease
from chat_orchestrator.state_managers.base import StateRecord, StateUpdate, TurnLease

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.file import FileStateManager

__all__ = ["AsyncFileTurn", "FileTurn", "Held", "ThenRelease", "in_thread"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Held:
    """One chat's exclusive flock: an open descriptor of its lock file, and what was read.

    :meth:`release` is idempotent and never blocks on another process: it unlinks the lock
    file of a chat without a record (we hold it, so nobody can swap it) and closes the
    descriptor, which drops the flock.
    """

    __slots__ = ("fd", "lock_path", "record", "record_path")

    def __init__(
        self, fd: int, lock_path: Path, record_path: Path, record: StateRecord | None
    ) -> None:
        self.fd, self.lock_path, self.record_path, self.record = fd, lock_path, record_path, record

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if not exists(self.record_path):
                with contextlib.suppress(OSError):
                    os.unlink(self.lock_path)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock


class ThenRelease:
    """Run ``action`` under ``held``, then release it: one call, so one thread hop.

    Whoever holds this call owns the lock: if it never runs (its caller was cancelled
    before a thread picked it up), :meth:`abandon` releases without running ``action``.
    """

    __slots__ = ("action", "held")

    def __init__(self, held: Held, action: Callable[[], Any]) -> None:
        self.held, self.action = held, action

    def __call__(self) -> Any:
        try:
            return self.action()
        finally:
            self.held.release()

    def abandon(self) -> None:
        self.held.release()


async def in_thread(command: Callable[[], T]) -> T:
    """The async I/O layer: run one short blocking call in the loop's default executor.

    A thread cannot be interrupted. If the caller is cancelled before a thread picks the
    call up, it never runs (a queued lock try must not take a chat later for nobody) and a
    lock it was handed is released at once; if it already runs, it finishes, and a lock it
    took is released as soon as it returns.
    """
    call = _Call(command)
    future = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if call.take():  # not started, and now it never will be
            if type(command) is ThenRelease:
                command.abandon()
        else:
            future.add_done_callback(_release_abandoned)
        raise


def _release_abandoned(future: asyncio.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:  # exception(): marked retrieved
        return
    held = future.result()
    if isinstance(held, Held):
        logger.debug("releasing a chat lock taken for a cancelled caller: %s", held.lock_path.name)
        held.release()


class _Call:
    """A call that either a worker thread or its cancelled caller takes, never both."""

    __slots__ = ("_token", "command")

    def __init__(self, command: Callable[[], Any]) -> None:
        self.command = command
        self._token = [None]  # list.pop is atomic: exactly one taker gets the token

    def take(self) -> bool:
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    def __call__(self) -> Any:
        if not self.take():
            return None  # the caller was cancelled first and nobody wants the result
        return self.command()


def _take(turn: FileTurn | AsyncFileTurn) -> Held:
    held, turn._lock = turn._lock, None
    if held is None:
        raise StateManagerError(
            f"this turn of chat {turn.chat_id!r} was already committed or closed"
        )
    return held


class FileTurn(TurnLease):
    """A sync turn: the chat's flock and the record read under it."""

    __slots__ = ("_file", "_lock")

    _lock: Held | None

    def __init__(self, manager: FileStateManager, chat_id: str, held: Held) -> None:
        self._manager = self._file = manager
        self._held = None  # TurnLease's own lock slot: unused, the flock is ``_lock``
        self.chat_id, self.record, self._lock = chat_id, held.record, held

    def commit(self, update: StateUpdate) -> None:
        self._file._run(self._file._commit_op(_take(self), self.chat_id, self.record, update))

    def close(self) -> None:
        held, self._lock = self._lock, None
        if held is not None:
            held.release()


class AsyncFileTurn(AsyncTurnLease):
    """An async turn: the same flock and the same commit operation, awaited."""

    __slots__ = ("_file", "_lock")

    _lock: Held | None

    def __init__(self, manager: FileStateManager, chat_id: str, held: Held) -> None:
        self._file = manager
        self.chat_id, self.record, self._lock = chat_id, held.record, held

    async def commit(self, update: StateUpdate) -> None:
        await self._file._run_async(
            self._file._commit_op(_take(self), self.chat_id, self.record, update)
        )

    async def close(self) -> None:
        # Released on the loop itself, not in a thread: closing a descriptor never waits for
        # another process, and a cancelled turn must free its chat at once even while every
        # worker thread is busy with other turns' blocking steps.
        held, self._lock = self._lock, None
        if held is not None:
            held.release()
