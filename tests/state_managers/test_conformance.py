"""The public conformance kit, run on every built-in backend (and a seed-only manager)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat_orchestrator.state_managers.base import StateManager, StateRecord, validate_claim_key
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing.conformance import (
    check_state_manager,
    id_pool,
    run_input_rules,
)
from tests.conftest import ManagerFactory
from tests.helpers import DictSeedManager


def test_backend_passes_the_conformance_kit(manager_factory: ManagerFactory) -> None:
    def fresh() -> StateManager:
        # The kit wants an empty store per run; the backend's store is shared by the factory.
        manager = manager_factory()
        for chat_id in id_pool(manager.stores_nul):
            manager.delete_state(chat_id)
        return manager

    # The seed-only manager stands for a user's legacy manager: its own seed methods do not
    # validate (the engine does before calling them); every other method must.
    seed_methods = not isinstance(manager_factory(), DictSeedManager)
    check_state_manager(fresh, max_examples=25, seed_methods=seed_methods)


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


# -- sloppy managers, as the built-in ones were before issue 8 ------------------------------
class UncheckedLoad(InMemoryStateManager):
    """Sloppy: load() looks any id up as given (memory accepted 5, None, "")."""

    def load(self, chat_id: str) -> StateRecord | None:
        stored = self._records.get(chat_id)
        return None if stored is None else StateRecord(stored[0], json.loads(stored[1]), stored[2])


class AliasingClaims(DictSeedManager):
    """Sloppy: claim keys go through str(), so claim(1) is claim("1") (Redis did)."""

    def claim(self, key: str, ttl: float) -> bool:
        return super().claim(str(key), ttl)


class LaxContexts(InMemoryStateManager):
    """Sloppy: stores whatever json.dumps takes (tuples, int keys, depth up to the stack)."""

    def compare_and_set(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        return super().compare_and_set(
            chat_id,
            state_id,
            context,
            expected_version=expected_version,
            encoded=json.dumps(context),
        )


class NoRelease(DictSeedManager):
    """Sloppy: release_claim does nothing, so a failed turn's message is never redelivered."""

    def release_claim(self, key: str) -> None:
        validate_claim_key(key)  # validates, then forgets to release


@pytest.mark.parametrize(
    ("sloppy", "seed_methods"),
    [
        (UncheckedLoad, True),
        (AliasingClaims, False),
        (LaxContexts, True),
        (NoRelease, False),
        (DictSeedManager, True),  # seed methods that do not validate, checked on request
    ],
)
def test_the_input_rules_catch_a_sloppy_manager(
    sloppy: type[StateManager], seed_methods: bool
) -> None:
    with pytest.raises(AssertionError):
        run_input_rules(sloppy, seed_methods=seed_methods)
    with pytest.raises(AssertionError):
        check_state_manager(sloppy, max_examples=5, seed_methods=seed_methods)
