"""Leases on Redis, MongoDB and SQLite: a dead holder frees its chat before a waiting turn gives up,
and a live holder whose step outlasts the lease keeps it (one renewer thread per process).

Durations are the defaults scaled down by ``SCALE``, so the tests check the defaults' ratios.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_orchestrator.errors import LockTimeoutError, StateManagerUnavailableError, StepError
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers._leased import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_TIMEOUT,
    LeasedStateManager,
    new_token,
    renewer,
)
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from chat_orchestrator.state_managers.postgres import PostgresStateManager
from chat_orchestrator.state_managers.redis import RedisStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.conftest import mongo_uri
from tests.helpers import ROOT, counter_orchestrator

SCALE = 0.05  # 10 s / 30 s become 0.5 s / 1.5 s
KINDS = ["redis", "mongo", "sqlite", "postgres"] + (
    ["mongo-real"] if os.environ.get("MONGODB_URI") else []
)

Factory = Callable[..., LeasedStateManager]


def _defaults(cls: type[LeasedStateManager]) -> tuple[float, float]:
    parameters = inspect.signature(cls.__init__).parameters
    lease, timeout = parameters["lock_lease"].default, parameters["lock_timeout"].default
    assert isinstance(lease, float)
    assert isinstance(timeout, float)
    return lease, timeout


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[type[LeasedStateManager], str]]:
    """(class, address): a Redis URL, ``<mongo uri>#<database>`` or a SQLite file path."""
    if request.param == "sqlite":
        yield SQLiteStateManager, str(request.getfixturevalue("tmp_path") / "leases.db")
        return
    if request.param == "redis":
        yield RedisStateManager, request.getfixturevalue("redis_url")
        return
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        yield PostgresStateManager, f"{server.url}#{request.getfixturevalue('postgres_schema')}"
        return
    uri = mongo_uri(request, real=request.param == "mongo-real")
    database = f"leases_{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    yield MongoDBStateManager, f"{uri}#{database}"
    import pymongo

    client: pymongo.MongoClient[dict[str, object]]
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


def build(cls: type[LeasedStateManager], address: str, **kwargs: Any) -> LeasedStateManager:
    if cls is RedisStateManager:
        return RedisStateManager(url=address, **kwargs)
    if cls is SQLiteStateManager:
        return SQLiteStateManager(address, **kwargs)
    if cls is PostgresStateManager:
        url, _, schema = address.rpartition("#")
        return PostgresStateManager(url, schema=schema, **kwargs)
    uri, _, database = address.rpartition("#")
    return MongoDBStateManager(uri, database=database, **kwargs)


def scaled(cls: type[LeasedStateManager]) -> dict[str, float]:
    lease, timeout = _defaults(cls)
    return {"lock_lease": lease * SCALE, "lock_timeout": timeout * SCALE}


@pytest.mark.parametrize(
    "cls", [RedisStateManager, MongoDBStateManager, SQLiteStateManager, PostgresStateManager]
)
def test_default_wait_outlives_a_dead_holders_lease(cls: type[LeasedStateManager]) -> None:
    lease, timeout = _defaults(cls)
    assert (lease, timeout) == (DEFAULT_LOCK_LEASE, DEFAULT_LOCK_TIMEOUT)
    # A waiting turn must see a dead lease end, with room to spare for the backoff and the
    # round trips: at least twice the lease.
    assert timeout >= 2 * lease


_HOLDER = """
import sys, time
from tests.state_managers.test_leases import build, scaled
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from chat_orchestrator.state_managers.postgres import PostgresStateManager
from chat_orchestrator.state_managers.redis import RedisStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender

cls = {
    "redis": RedisStateManager, "sqlite": SQLiteStateManager, "postgres": PostgresStateManager
}.get(sys.argv[1], MongoDBStateManager)
orchestrator = ChatOrchestrator(build(cls, sys.argv[2], **scaled(cls)), RecordingSender())

@orchestrator.register_step("start")
def hang(chat_id, user_input, context, sender):
    print("held", flush=True)
    time.sleep(600)  # killed here, mid-turn
    return "start", context

orchestrator.handle_message("c", "tick")
"""


def test_holder_killed_mid_turn_next_message_runs_at_once(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    manager = build(cls, address, **scaled(cls))
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", "tick")
    kind = {
        RedisStateManager: "redis",
        SQLiteStateManager: "sqlite",
        PostgresStateManager: "postgres",
    }.get(cls, "mongo")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kind, address], stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    started = time.monotonic()
    orchestrator.handle_message("c", "tick")  # the next message, sent right away
    waited = time.monotonic() - started
    assert manager.get_state("c") == ("start", {"n": 2})
    assert waited < scaled(cls)["lock_timeout"]


def test_abandoned_token_frees_the_chat_within_one_lease(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    manager = build(cls, address, **scaled(cls))
    # Taken, then never renewed nor freed:
    acquired, _ = manager._run(manager._acquire_op("c", new_token()))
    assert acquired
    counter_orchestrator(manager, RecordingSender()).handle_message("c", "tick")
    assert manager.get_state("c") == ("start", {"n": 1})


def test_step_longer_than_the_lease_is_not_overtaken(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    settings = scaled(cls)
    lease = settings["lock_lease"]
    holder = build(cls, address, **settings)
    impatient = build(cls, address, lock_lease=lease, lock_timeout=lease / 5)
    patient = counter_orchestrator(
        build(cls, address, lock_lease=lease, lock_timeout=60), RecordingSender()
    )
    seen: list[str] = []
    waiter = threading.Thread(target=lambda: seen.append(patient.handle_message("c", "tick")))
    orchestrator = counter_orchestrator(holder, RecordingSender())

    @orchestrator.register_step("slow", to=["start"])
    def slow(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        waiter.start()  # another worker's turn for this chat, waiting
        for _ in range(3):
            time.sleep(lease * 1.5)  # 4.5 leases in all, like a long LLM call
            with pytest.raises(LockTimeoutError):
                impatient.begin_turn(chat_id)
        assert not seen  # the waiting worker is still waiting
        return "start", {"n": context.get("n", 0) + 10}

    holder.set_state("c", "slow", {})
    assert orchestrator.handle_message("c", "tick") == "start"  # its write succeeds
    waiter.join(timeout=30)
    assert seen == ["start"]
    assert holder.get_state("c") == ("start", {"n": 11})  # both turns, in order, nothing lost
    assert len(renewer) == 0  # every finished turn left the renewer


def test_lock_block_longer_than_the_lease_keeps_the_chat(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    lease = scaled(cls)["lock_lease"]
    holder = build(cls, address, **scaled(cls))
    other = build(cls, address, lock_lease=lease, lock_timeout=lease / 5)
    with holder.lock("c"):
        time.sleep(lease * 3)
        with pytest.raises(LockTimeoutError):
            other.begin_turn("c")
    other.begin_turn("c").close()  # free at once after the block


def test_renew_never_revives_a_lease_that_is_not_ours(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    manager = build(cls, address, lock_lease=0.2, lock_timeout=5)
    first, second = new_token(), new_token()
    assert manager._run(manager._acquire_op("c", first))[0]
    assert manager._renew("c", first) is True
    time.sleep(0.3)
    assert manager._run(manager._acquire_op("c", second))[0]  # first expired: taken over
    assert manager._renew("c", first) is False
    assert manager._renew("c", second) is True
    manager._run(manager._unlock_op("c", second))
    assert manager._renew("c", second) is False  # dropped stays dropped
    assert manager._run(manager._acquire_op("c", new_token()))[0]


def test_bad_lease_settings_are_refused(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    for lease in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lock_lease"):
            build(cls, address, lock_lease=lease)
    with pytest.raises(ValueError, match="lock_timeout"):
        build(cls, address, lock_timeout=float("nan"))


def test_renewer_survives_a_failed_renewal_and_keeps_the_lease(
    backend: tuple[type[LeasedStateManager], str], caplog: pytest.LogCaptureFixture
) -> None:
    cls, address = backend
    lease = scaled(cls)["lock_lease"]
    holder = build(cls, address, **scaled(cls))
    real_renew = holder._renew
    failures = [StateManagerUnavailableError("backend briefly away")]

    def flaky_renew(chat_id: str, token: str) -> bool:
        if failures:
            raise failures.pop()
        return real_renew(chat_id, token)

    holder._renew = flaky_renew  # type: ignore[method-assign]
    other = build(cls, address, lock_lease=lease, lock_timeout=lease / 5)
    with holder.lock("c"):
        time.sleep(lease * 2.5)  # the first renewal failed, the next ones kept the lease
        with pytest.raises(LockTimeoutError):
            other.begin_turn("c")
    assert not failures
    assert "could not renew the lease of chat 'c'" in caplog.text


def test_failed_step_leaves_nothing_to_renew_and_the_chat_free(
    backend: tuple[type[LeasedStateManager], str],
) -> None:
    cls, address = backend
    manager = build(cls, address, **scaled(cls))
    orchestrator = counter_orchestrator(manager, RecordingSender())

    @orchestrator.register_step("boom")
    def boom(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        assert len(renewer) == 1  # held while the step runs
        raise RuntimeError("step failed")

    manager.set_state("c", "boom", {})
    with pytest.raises(StepError):
        orchestrator.handle_message("c", "tick")
    assert len(renewer) == 0
    other = build(cls, address, lock_lease=1, lock_timeout=0)
    other.begin_turn("c").close()  # free at once, no lease left behind
    assert manager.get_state("c") == ("boom", {})
