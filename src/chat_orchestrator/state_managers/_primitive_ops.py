"""Operations built on blocking primitives, for backends whose driver has no async twin.

A backend written against the four blocking lease primitives (``_try_acquire``, ``_write``,
``_unlock``, ``_renew``) and the blocking seed methods gets the operations of
:class:`~chat_orchestrator.state_managers._leased.LeasedStateManager` from this mixin: each
operation yields one call, which the sync path makes directly and the async path makes in a
worker thread. Waiting for a busy chat still happens in the shared operation (``Sleep``
between tries), so no thread is ever parked on a lock; only the short I/O calls use one.
That is the right shape for SQLite and files, whose drivers are blocking by nature.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any

from chat_orchestrator._io import Op
from chat_orchestrator.state_managers._leased import LeasedStateManager
from chat_orchestrator.state_managers.base import StateRecord

__all__ = ["BlockingLeasedStateManager"]


class BlockingLeasedStateManager(LeasedStateManager):
    @abstractmethod
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]: ...

    @abstractmethod
    def _write(
        self,
        chat_id: str,
        token: str | None,
        expected: int,
        state_id: str,
        context: dict[str, Any],
        encoded: str | None,
    ) -> int: ...

    @abstractmethod
    def _unlock(self, chat_id: str, token: str) -> None: ...

    @abstractmethod
    def _renew(self, chat_id: str, token: str) -> bool: ...

    @abstractmethod
    def _load(self, chat_id: str) -> StateRecord | None: ...

    @abstractmethod
    def _set(self, chat_id: str, state_id: str, text: str) -> None: ...

    @abstractmethod
    def _delete(self, chat_id: str) -> None: ...

    @abstractmethod
    def _claim(self, key: str, ttl: float) -> bool: ...

    @abstractmethod
    def _release_claim(self, key: str) -> None: ...

    # -- each operation is one blocking call ------------------------------------------------
    def _acquire_op(self, chat_id: str, token: str) -> Op[tuple[bool, StateRecord | None]]:
        return (yield partial(self._try_acquire, chat_id, token))  # type: ignore[no-any-return]

    def _write_op(
        self, chat_id: str, token: str | None, expected: int, state_id: str, text: str
    ) -> Op[int]:
        return (yield partial(self._write, chat_id, token, expected, state_id, {}, text))  # type: ignore[no-any-return]

    def _unlock_op(self, chat_id: str, token: str) -> Op[None]:
        yield partial(self._unlock, chat_id, token)

    def _renew_op(self, chat_id: str, token: str) -> Op[bool]:
        return (yield partial(self._renew, chat_id, token))  # type: ignore[no-any-return]

    def _load_op(self, chat_id: str) -> Op[StateRecord | None]:
        return (yield partial(self._load, chat_id))  # type: ignore[no-any-return]

    def _set_op(self, chat_id: str, state_id: str, text: str) -> Op[None]:
        yield partial(self._set, chat_id, state_id, text)

    def _delete_op(self, chat_id: str) -> Op[None]:
        yield partial(self._delete, chat_id)

    def _claim_op(self, key: str, ttl: float) -> Op[bool]:
        return (yield partial(self._claim, key, ttl))  # type: ignore[no-any-return]

    def _release_claim_op(self, key: str) -> Op[None]:
        yield partial(self._release_claim, key)

    # -- the two I/O layers ------------------------------------------------------------------
    def _execute(self, command: Callable[[], Any]) -> Any:
        return command()

    async def _execute_async(self, command: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(command)
