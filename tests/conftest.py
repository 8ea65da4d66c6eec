"""Fixtures shared by the whole suite. ``manager`` runs a test once per backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import DictSeedManager

ManagerFactory = Callable[[], StateManager]

BACKENDS = ["memory", "file", "seed"]


@pytest.fixture(params=BACKENDS)
def manager_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ManagerFactory]:
    """Builds managers of one backend that all see the same stored data."""
    kind = request.param
    if kind == "memory":
        shared_memory = InMemoryStateManager()
        yield lambda: shared_memory
    elif kind == "file":
        yield lambda: FileStateManager(state_dir=tmp_path / "states")
    else:
        shared_seed = DictSeedManager()
        yield lambda: shared_seed


@pytest.fixture
def manager(manager_factory: ManagerFactory) -> StateManager:
    return manager_factory()


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()
