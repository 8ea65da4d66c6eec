"""Fixtures of the pipeline tests: one state manager per store that can hold the pipeline.

``PIPELINE_BACKENDS`` lists them; every contract test runs on each, against the real
servers the suite starts (redis-server, nx-27017, PostgreSQL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.conftest import _unique, mongo_uri
from tests.servers import RedisServer, create_cluster

PIPELINE_BACKENDS = ["memory", "sqlite", "redis", "redis-cluster", "mongo", "postgres"]

PipeFactory = Callable[[], StateManager]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The ports of a 3-master Redis Cluster, started once for the session (a few seconds)."""
    base = tmp_path_factory.mktemp("pipeline-cluster")
    nodes = [RedisServer(base / f"n{i}", cluster=True).start() for i in range(3)]
    try:
        create_cluster(nodes)
        yield [node.port for node in nodes]
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_ports(redis_cluster: list[int]) -> list[int]:
    """The session's cluster, emptied for this test."""
    import redis

    for port in redis_cluster:
        client = redis.Redis(port=port)
        client.flushall()
        client.close()
    return redis_cluster


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
    elif kind == "redis-cluster":
        from redis.cluster import RedisCluster

        from chat_orchestrator.state_managers.redis import RedisStateManager

        port = request.getfixturevalue("cluster_ports")[0]
        built: list[RedisStateManager] = []

        def cluster_manager() -> StateManager:
            # No async twin: a given one is bound to the loop that first used it and could not
            # be closed after the test's loop ended (test_redis_pipeline covers the native
            # async cluster client); the async face runs this client's commands in threads.
            built.append(RedisStateManager(client=RedisCluster("127.0.0.1", port), lock_lease=5))
            return built[-1]

        yield cluster_manager
        for made in built:
            made.close()
    elif kind == "postgres":
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        server = request.getfixturevalue("postgres_server")
        schema = request.getfixturevalue("postgres_schema")
        made_pg: list[PostgresStateManager] = []

        def postgres_manager() -> StateManager:
            made_pg.append(PostgresStateManager(server.url, schema=schema, lock_lease=5))
            return made_pg[-1]

        yield postgres_manager
        for one in made_pg:
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
def pipe_manager(pipe_factory: PipeFactory) -> StateManager:
    return pipe_factory()
