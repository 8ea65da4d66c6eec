"""Redis and MongoDB with several worker processes, Redis Cluster, faults and limits."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.errors import (
    StateManagerError,
    StateManagerUnavailableError,
    VersionConflictError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers._leased import _LeasedTurn, renewer
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from chat_orchestrator.state_managers.redis import RedisStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import ROOT, counter_orchestrator, run_together
from tests.servers import NxServer, RedisServer, create_cluster


@pytest.fixture(params=["redis", "mongo"])
def shared(
    request: pytest.FixtureRequest, nx_server: NxServer, redis_url: str
) -> Iterator[tuple[str, str]]:
    """(kind, address) of a shared backend with an empty store."""
    if request.param == "redis":
        yield "redis", redis_url
    else:
        database = f"procs_{request.node.name}".replace("[", "_").replace("]", "_")[:60]
        yield "mongo", f"{nx_server.uri}#{database}"


def run_workers(kind: str, address: str, count: int, chats: int, workers: int = 4) -> None:
    command = [sys.executable, "-m", "tests.workers", kind, address, str(count), str(chats)]
    run_together([command] * workers)


def manager_for(kind: str, address: str) -> StateManager:
    from tests.workers import make_manager

    return make_manager(kind, address)


@pytest.mark.slow
def test_four_processes_one_chat_lose_nothing(shared: tuple[str, str]) -> None:
    run_workers(*shared, count=250, chats=1)
    assert manager_for(*shared).get_state("chat-0") == ("start", {"n": 1000})


@pytest.mark.slow
def test_four_processes_fifty_chats_every_counter_exact(shared: tuple[str, str]) -> None:
    run_workers(*shared, count=250, chats=50)
    manager = manager_for(*shared)
    for index in range(50):
        assert manager.get_state(f"chat-{index}") == ("start", {"n": 20}), index


def test_lease_of_a_dead_worker_expires_and_its_late_write_is_rejected(
    manager_factory_shared: StateManager,
) -> None:
    manager = manager_factory_shared
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    dead = manager.begin_turn("c")  # a worker that takes the lease, then stalls past it
    assert dead.record is not None
    assert isinstance(dead, _LeasedTurn)
    assert dead._token is not None
    renewer.drop(dead._token)  # a stalled process renews nothing either
    started = time.monotonic()
    orchestrator.handle_message("c", None)  # waits for the lease (0.5 s), then runs
    assert time.monotonic() - started >= 0.3
    assert manager.get_state("c") == ("start", {"n": 2})
    with pytest.raises(VersionConflictError):
        dead.commit("start", {"n": 99}, '{"n":99}')
    dead.close()
    assert manager.get_state("c") == ("start", {"n": 2})


@pytest.fixture(params=["redis", "mongo"])
def manager_factory_shared(
    request: pytest.FixtureRequest, nx_server: NxServer, redis_url: str
) -> StateManager:
    if request.param == "redis":
        return RedisStateManager(url=redis_url, lock_lease=0.5)
    return MongoDBStateManager(nx_server.uri, database=f"lease_{id(request)}", lock_lease=0.5)


def test_a_one_megabyte_context_round_trips(manager_factory_shared: StateManager) -> None:
    big = {"blob": "x" * 1_000_000, "nested": [{"k": "ü" * 1000}] * 10}
    manager_factory_shared.set_state("big", "s", big)
    assert manager_factory_shared.get_state("big") == ("s", big)


def test_context_over_mongodb_document_limit_is_refused(nx_server: NxServer) -> None:
    manager = MongoDBStateManager(nx_server.uri, database="limits")
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def grow(chat_id: str, text: str | None, context: dict[str, Any], sender: Any) -> Any:
        return "start", {"blob": "x" * (17 * 1024 * 1024) if text == "huge" else "small"}

    orchestrator.handle_message("c", "ok")
    before = manager.load("c")
    with pytest.raises(StateManagerError, match="document size limit"):
        orchestrator.handle_message("c", "huge")
    assert manager.load("c") == before


def test_keys_of_hostile_ids_never_collide(redis_url: str) -> None:
    manager = RedisStateManager(url=redis_url, key_prefix="chat:")
    ids = ["a", "a}", "{a}", "}", "{", "a:b", "s:a", "l:a", "chat:", "x}:s:a", "*", " ", "$where"]
    keys = [key for chat_id in ids for key in manager.keys_for(chat_id)]
    assert len(set(keys)) == len(keys)
    for chat_id in ids:
        record_key, lock_key = manager.keys_for(chat_id)
        tag = record_key[record_key.index("{") + 1 : record_key.index("}")]
        assert tag == lock_key[lock_key.index("{") + 1 : lock_key.index("}")]
        assert tag
        assert "{" not in tag


def test_redis_ttl_expires_idle_chats(redis_url: str) -> None:
    import redis

    manager = RedisStateManager(url=redis_url, ttl=60)
    counter_orchestrator(manager, RecordingSender()).handle_message("c", None)
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(manager.keys_for("c")[0]) <= 60_000


def test_mongodb_ttl_index_is_created(nx_server: NxServer) -> None:
    manager = MongoDBStateManager(nx_server.uri, database="ttl", ttl=3600)
    counter_orchestrator(manager, RecordingSender()).handle_message("c", None)
    indexes = manager._collection.index_information()
    assert any(info.get("expireAfterSeconds") == 3600 for info in indexes.values())


@pytest.mark.slow
def test_redis_cluster_of_three_masters(tmp_path: Path) -> None:
    from redis.cluster import RedisCluster

    nodes = [RedisServer(tmp_path / f"n{i}", cluster=True).start() for i in range(3)]
    try:
        create_cluster(nodes)
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        manager = RedisStateManager(client=client)
        orchestrator = counter_orchestrator(manager, RecordingSender())
        ids = [f"user-{i}" for i in range(60)] + ["{a}", "a}", "}", "ünï😀", "x" * 5000]
        for _ in range(3):
            for chat_id in ids:
                orchestrator.handle_message(chat_id, "tick")
        for chat_id in ids:
            assert manager.get_state(chat_id) == ("start", {"n": 3}), chat_id
        slots = {client.keyslot(manager.keys_for(chat_id)[0]) for chat_id in ids}  # type: ignore[no-untyped-call]
        owners = {client.get_node_from_key(manager.keys_for(c)[0]).port for c in ids}  # type: ignore[no-untyped-call]
        assert len(slots) > 30
        assert owners == {node.port for node in nodes}  # the chats spread over all masters
        with pytest.raises(VersionConflictError):
            manager.save("user-1", "s", {}, expected_version=1)
        client.close()
    finally:
        for node in nodes:
            node.stop()


def test_redis_stopped_mid_run_fails_fast_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendonly=True).start()
    password = "s3cret-Pa55"
    import redis

    redis.Redis(port=server.port).config_set("requirepass", password)
    try:
        manager = RedisStateManager(
            host="127.0.0.1",
            port=server.port,
            password=password,
            socket_timeout=1,
            lock_lease=1,
        )
        orchestrator = counter_orchestrator(manager, RecordingSender())
        for _ in range(3):
            orchestrator.handle_message("kept", "tick")
        server.stop()
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError) as raised:
            orchestrator.handle_message("kept", "tick")
        assert time.monotonic() - started < 10
        message = str(raised.value)
        assert f"127.0.0.1:{server.port}" in message
        assert password not in message
        assert password not in repr(manager)
        assert raised.value.__cause__ is None or password not in str(raised.value.__cause__)
        server.start()  # same port, same AOF: the records come back
        redis.Redis(port=server.port, password=password).ping()
        assert manager.get_state("kept") == ("start", {"n": 3})
        orchestrator.handle_message("kept", "tick")
        assert manager.get_state("kept") == ("start", {"n": 4})
    finally:
        server.stop()


def test_redis_url_password_never_shown(redis_url: str) -> None:
    manager = RedisStateManager(url="redis://user:hunter2@127.0.0.1:1/0", socket_timeout=0.5)
    assert "hunter2" not in repr(manager)
    with pytest.raises(StateManagerUnavailableError) as raised:
        manager.load("c")
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1:1" in str(raised.value)


def test_mongodb_stopped_mid_run_fails_fast_then_recovers(tmp_path: Path) -> None:
    server = NxServer(tmp_path / "nx").start()
    try:
        manager = MongoDBStateManager(server.uri, database="faults", timeout=1)
        orchestrator = counter_orchestrator(manager, RecordingSender())
        orchestrator.handle_message("c", "tick")
        server.stop()
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError, match=f"127.0.0.1:{server.port}"):
            orchestrator.handle_message("c", "tick")
        assert time.monotonic() - started < 10
        server.start()  # an in-memory server comes back empty: new turns work again
        orchestrator.handle_message("c", "tick")
        assert manager.get_state("c") == ("start", {"n": 1})
    finally:
        server.stop()


def test_mongodb_credentials_never_shown() -> None:
    manager = MongoDBStateManager(
        "mongodb://admin:hunter2@127.0.0.1:1/?authSource=admin", timeout=0.3
    )
    assert "hunter2" not in repr(manager)
    with pytest.raises(StateManagerUnavailableError) as raised:
        manager.load("c")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("module", "driver", "extra"),
    [
        ("chat_orchestrator.state_managers.redis", "redis", "redis"),
        ("chat_orchestrator.state_managers.mongodb", "pymongo", "mongo"),
    ],
)
def test_missing_driver_is_a_clear_import_error(module: str, driver: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{driver!r}] = None\n"
        "import chat_orchestrator  # the package itself never needs a driver\n"
        "from chat_orchestrator.errors import MissingDependencyError\n"
        "try:\n"
        f"    __import__({module!r})\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f'pip install "chat-orchestrator[{extra}]"' in result.stdout
