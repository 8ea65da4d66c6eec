"""Shared shape of backends whose chat lock is an expiring lease held by a random token.

A backend implements three primitives, each one round trip:

* ``_try_acquire(chat_id, token)``: take the lease if free (or expired) and read the record;
  ``(False, None)`` when another token holds a live lease;
* ``_write(chat_id, token, expected, ...)``: store if the version is ``expected`` (and, with a
  token, the lease is still ours), dropping the lease in the same operation;
* ``_unlock(chat_id, token)``: drop the lease if it is still ours.

This class turns them into waiting with backoff, ``lock``, ``save``, ``compare_and_set`` and a
two-round-trip turn.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chat_orchestrator.errors import CorruptStateError, LockTimeoutError, describe_chat_id
from chat_orchestrator.state_managers.base import RecordStateManager, StateRecord, TurnLease

__all__ = ["LeasedStateManager", "new_token"]


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


class LeasedStateManager(RecordStateManager):
    _lock_timeout: float | None
    _address: str

    @abstractmethod
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]:
        """``(True, record or None)`` if the lease was taken, ``(False, None)`` if busy."""

    @abstractmethod
    def _write(
        self,
        chat_id: str,
        token: str | None,
        expected: int,
        state_id: str,
        context: dict[str, Any],
        encoded: str | None,
    ) -> int:
        """Conditional write; raises VersionConflictError. With a token, drops the lease."""

    @abstractmethod
    def _unlock(self, chat_id: str, token: str) -> None:
        """Drop the lease if ``token`` still holds it."""

    def _acquire_and_load(self, chat_id: str, token: str) -> StateRecord | None:
        deadline = None if self._lock_timeout is None else time.monotonic() + self._lock_timeout
        pause = 0.001
        while True:
            try:
                acquired, record = self._try_acquire(chat_id, token)
            except CorruptStateError:
                # The lease was taken, then the record failed to decode: give the lease back
                # (a no-op if it was not taken), or a repaired chat stays locked for a lease.
                self._unlock(chat_id, token)
                raise
            if acquired:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"chat {describe_chat_id(chat_id)} stayed locked for more than "
                    f"{self._lock_timeout} s (at {self._address})"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def compare_and_set(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        return self._write(chat_id, None, expected_version, state_id, context, encoded)

    def save(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        token = new_token()
        self._acquire_and_load(chat_id, token)
        try:
            return self._write(chat_id, token, expected_version, state_id, context, encoded)
        except BaseException:
            self._unlock(chat_id, token)
            raise

    @contextmanager
    def lock(self, chat_id: str) -> Iterator[None]:
        token = new_token()
        self._acquire_and_load(chat_id, token)
        try:
            yield
        finally:
            self._unlock(chat_id, token)

    def begin_turn(self, chat_id: str) -> TurnLease:
        return _LeasedTurn(self, chat_id)


class _LeasedTurn(TurnLease):
    """Lease + load in one round trip; conditional write + release in another."""

    __slots__ = ("_leased", "_token")

    def __init__(self, manager: LeasedStateManager, chat_id: str) -> None:
        self._manager = self._leased = manager
        self.chat_id = chat_id
        self._held = None
        self._token: str | None = new_token()
        self.record = manager._acquire_and_load(chat_id, self._token)

    def commit(self, state_id: str, context: dict[str, Any], encoded: str) -> None:
        assert self._token is not None
        expected = 0 if self.record is None else self.record.version
        self._leased._write(self.chat_id, self._token, expected, state_id, context, encoded)
        self._token = None  # the write dropped the lease

    def close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            self._leased._unlock(self.chat_id, token)
