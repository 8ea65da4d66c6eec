"""The public conformance kit, run on every built-in backend (and a seed-only manager)."""

from __future__ import annotations

from typing import Any

import pytest

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.testing.conformance import CHAT_ID_POOL, check_state_manager
from tests.conftest import ManagerFactory
from tests.helpers import DictSeedManager


def test_backend_passes_the_conformance_kit(manager_factory: ManagerFactory) -> None:
    def fresh() -> StateManager:
        # The kit wants an empty store per run; the backend's store is shared by the factory.
        manager = manager_factory()
        for chat_id in CHAT_ID_POOL:
            manager.delete_state(chat_id)
        return manager

    check_state_manager(fresh, max_examples=25)


class CaseFolding(DictSeedManager):
    """Broken: two ids that differ in case share a record."""

    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        return super().get_state(chat_id.lower())

    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        super().set_state(chat_id.lower(), state_id, context)

    def delete_state(self, chat_id: str) -> None:
        super().delete_state(chat_id.lower())


class BlindSave(DictSeedManager):
    """Broken: save ignores the expected version."""

    def save(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        self.set_state(chat_id, state_id, context)
        record = self.load(chat_id)
        assert record is not None
        return record.version


class LossyFloats(DictSeedManager):
    """Broken: rounds floats on the way in."""

    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in context.items()}
        super().set_state(chat_id, state_id, rounded)


@pytest.mark.parametrize("broken", [CaseFolding, BlindSave, LossyFloats])
def test_the_kit_catches_a_broken_manager(broken: type[StateManager]) -> None:
    # Hypothesis reports several distinct failures as one ExceptionGroup of AssertionErrors.
    with pytest.raises((AssertionError, ExceptionGroup)) as raised:
        check_state_manager(broken, max_examples=60)
    if isinstance(raised.value, ExceptionGroup):
        assert raised.value.subgroup(AssertionError) is not None
