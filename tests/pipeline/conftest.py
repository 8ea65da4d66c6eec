"""Fixtures of the pipeline tests: one state manager per store that can hold the pipeline.

``PIPELINE_BACKENDS`` lists them; every contract test runs on each, against the real
servers the suite starts (redis-server, nx-27017, PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_orchestrator.state_managers.base import StateManager
from tests.conftest import build_managers
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
    if kind != "redis-cluster":
        yield from build_managers(kind, request, tmp_path)
        return
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


@pytest.fixture
def pipe_manager(pipe_factory: PipeFactory) -> StateManager:
    return pipe_factory()
