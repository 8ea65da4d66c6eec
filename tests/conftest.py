"""Fixtures shared by the whole suite. ``manager`` runs a test once per backend.

Redis and MongoDB backends run against real servers that these fixtures start (see
``tests/servers.py``); each test gets an empty keyspace / database on them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import DictSeedManager
from tests.servers import NxServer, PostgresServer, RedisServer

ManagerFactory = Callable[[], StateManager]

BACKENDS = ["memory", "file", "seed", "sqlite", "redis", "mongo", "postgres"]
if os.environ.get("MONGODB_URI"):
    BACKENDS.append("mongo-real")

_unique = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NxServer]:
    server = NxServer(tmp_path_factory.mktemp("nx")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    yield server
    server.destroy()


@pytest.fixture
def postgres_schema(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh schema on the test server for one test (dropped after it)."""
    import psycopg

    schema = f"t{os.getpid()}_{next(_unique)}"
    yield schema
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    client = redis.Redis(port=redis_server.port)
    client.flushall()  # no state shared between tests
    client.close()
    return f"redis://127.0.0.1:{redis_server.port}/0"


def mongo_uri(request: pytest.FixtureRequest, real: bool) -> str:
    if real:
        return os.environ["MONGODB_URI"]
    server: NxServer = request.getfixturevalue("nx_server")
    return server.uri


@pytest.fixture(params=BACKENDS)
def manager_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ManagerFactory]:
    """Builds managers of one backend that all see the same (initially empty) store."""
    yield from build_managers(request.param, request, tmp_path)


def build_managers(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ManagerFactory]:
    """The body of a factory fixture for backend ``kind`` (``yield from`` it): yields the
    factory, then cleans up what it built."""
    if kind == "memory":
        shared_memory = InMemoryStateManager()
        yield lambda: shared_memory
    elif kind == "file":
        yield lambda: FileStateManager(state_dir=tmp_path / "states")
    elif kind == "seed":
        shared_seed = DictSeedManager()
        yield lambda: shared_seed
    elif kind == "sqlite":
        from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

        yield lambda: SQLiteStateManager(tmp_path / "chats.db", lock_lease=5)
    elif kind == "redis":
        from chat_orchestrator.state_managers.redis import RedisStateManager

        url = request.getfixturevalue("redis_url")
        yield lambda: RedisStateManager(url=url, lock_lease=5)
    elif kind == "postgres":
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        server: PostgresServer = request.getfixturevalue("postgres_server")
        schema = request.getfixturevalue("postgres_schema")
        built: list[PostgresStateManager] = []

        def build() -> PostgresStateManager:
            built.append(PostgresStateManager(server.url, schema=schema, lock_lease=5))
            return built[-1]

        yield build
        for one in built:
            one.close()
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
def manager(manager_factory: ManagerFactory) -> StateManager:
    return manager_factory()


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()
