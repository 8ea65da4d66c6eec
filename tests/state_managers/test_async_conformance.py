"""The async conformance kit, run on every built-in backend, a user's async manager, and
sloppy async managers it must catch."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from chat_orchestrator.state_managers.async_base import AsyncStateManager, AsyncTurnLease
from chat_orchestrator.state_managers.base import StateManager, StateUpdate
from chat_orchestrator.testing.conformance import (
    check_async_state_manager,
    id_pool,
    run_async_cancellation,
    run_async_input_rules,
    run_async_rule_based,
)
from tests.conftest import ManagerFactory


def test_backend_passes_the_async_conformance_kit(manager_factory: ManagerFactory) -> None:
    def fresh() -> StateManager:
        manager = manager_factory()
        for chat_id in id_pool(manager.stores_nul):
            manager.delete_state(chat_id)
        return manager

    check_async_state_manager(fresh, max_examples=15)


class DictAsyncManager(AsyncStateManager):
    """A user's own async manager: the three async seed methods and nothing else."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, dict[str, Any]]] = {}

    async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        await asyncio.sleep(0)  # as if it awaited a driver
        got = self.data.get(chat_id)
        return None if got is None else (got[0], copy.deepcopy(got[1]))

    async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.data[chat_id] = (state_id, copy.deepcopy(context))

    async def delete_state(self, chat_id: str) -> None:
        await asyncio.sleep(0)
        self.data.pop(chat_id, None)


def test_a_users_async_manager_passes_the_kit() -> None:
    check_async_state_manager(DictAsyncManager, max_examples=20)


# -- sloppy async managers the kit must catch ---------------------------------------------------
class UncheckedLoad(DictAsyncManager):
    """Sloppy: load_async looks any id up as given (5, None and "" are just missing)."""

    async def load_async(self, chat_id: str) -> Any:
        got = await self.get_state(chat_id)
        return None if got is None else await super().load_async(chat_id)


class AliasingClaims(DictAsyncManager):
    """Sloppy: claim keys go through str(), so claim_async(1) is claim_async("1")."""

    async def claim_async(self, key: str, ttl: float) -> bool:
        return await super().claim_async(str(key), ttl)


class NoReleaseClaim(DictAsyncManager):
    """Sloppy: release_claim_async validates, then forgets to release."""

    async def release_claim_async(self, key: str) -> None:
        await super().release_claim_async(key)
        await super().claim_async(key, 3600)


class _KeepsLockTurn(AsyncTurnLease):
    """A turn whose close forgets the lock unless it committed."""

    def __init__(self, inner: AsyncTurnLease) -> None:
        self._inner, self.chat_id, self.record = inner, inner.chat_id, inner.record

    async def commit(self, update: StateUpdate) -> None:
        await self._inner.commit(update)
        await self._inner.close()

    async def close(self) -> None:
        pass  # a turn that never committed (a failed or cancelled step) keeps its chat


class LeakyClose(DictAsyncManager):
    lock_timeout = 3.0

    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        return _KeepsLockTurn(await super().begin_turn_async(chat_id))


class LeakyWait(DictAsyncManager):
    """Sloppy: a cancelled wait for a busy chat still takes the chat, for nobody."""

    lock_timeout = 3.0

    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        task = asyncio.ensure_future(super().begin_turn_async(chat_id))
        return await asyncio.shield(task)  # cancelled: the task goes on and keeps the lock


class SharedContexts(DictAsyncManager):
    """Sloppy: stores the caller's context dict itself, so a mutation leaks into the store."""

    async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        self.data[chat_id] = (state_id, context)

    async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        got = self.data.get(chat_id)
        if got is None:
            return None
        got[1]["seen"] = True  # a sloppy reader that annotates what it returns
        return got


class CaseFolding(DictAsyncManager):
    """Broken: two ids that differ in case share a record."""

    async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        return await super().get_state(chat_id.lower())

    async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        await super().set_state(chat_id.lower(), state_id, context)

    async def delete_state(self, chat_id: str) -> None:
        await super().delete_state(chat_id.lower())


@pytest.mark.parametrize(
    ("sloppy", "rules"),
    [
        (UncheckedLoad, run_async_input_rules),
        (AliasingClaims, run_async_input_rules),
        (NoReleaseClaim, run_async_input_rules),
        (LeakyClose, run_async_cancellation),
        (LeakyWait, run_async_cancellation),
        (SharedContexts, run_async_rule_based),
        (CaseFolding, run_async_rule_based),
    ],
)
def test_the_async_kit_catches_a_sloppy_manager(
    sloppy: type[AsyncStateManager], rules: Any
) -> None:
    # Hypothesis reports several distinct failures as one ExceptionGroup of AssertionErrors.
    with pytest.raises((AssertionError, ExceptionGroup)) as raised:
        rules(sloppy)
    if isinstance(raised.value, ExceptionGroup):
        assert raised.value.subgroup(AssertionError) is not None
    with pytest.raises((AssertionError, ExceptionGroup)):
        check_async_state_manager(sloppy, max_examples=20)
