"""Fixtures of the pipeline tests: one state manager per store that can hold the pipeline.

``PIPELINE_BACKENDS`` lists them; every contract test runs on each, against the real
servers the suite starts (redis-server, nx-27017).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.conftest import _unique, mongo_uri

PIPELINE_BACKENDS = ["memory", "sqlite", "mongo"]

PipeFactory = Callable[[], StateManager]


@pytest.fixture(params=PIPELINE_BACKENDS)
def pipe_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PipeFactory]:
    """Builds managers of one pipeline-capable backend sharing one (empty) store."""
    kind = request.param
    if kind == "memory":
        shared = InMemoryStateManager()
        yield lambda: shared
    elif kind == "sqlite":
        from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

        yield lambda: SQLiteStateManager(tmp_path / "chats.db", lock_lease=5)
    elif kind == "redis":
        from chat_orchestrator.state_managers.redis import RedisStateManager

        url = request.getfixturevalue("redis_url")
        yield lambda: RedisStateManager(url=url, lock_lease=5)
    else:
        from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

        uri = mongo_uri(request, real=kind == "mongo-real")
        database = f"test_{os.getpid()}_{next(_unique)}"
        yield lambda: MongoDBStateManager(uri, database=database, lock_lease=5)
        import pymongo

        client: pymongo.MongoClient[dict[str, object]]
        with pymongo.MongoClient(uri) as client:
            client.drop_database(database)


@pytest.fixture
def pipe_manager(pipe_factory: PipeFactory) -> StateManager:
    return pipe_factory()
