"""PostgreSQL faults: each a clear error of our tree, nothing half written, and recovery.

Refused connections, a server that accepts and never answers (a loopback socket), a backend
killed under a statement (``pg_terminate_backend``), idle pooled connections the server
killed, a statement timeout, and a server restarted while turns run. The restart test uses
a server of its own, so the session's server stays up for every other test.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from chat_orchestrator.errors import StateManagerError, StateManagerUnavailableError
from chat_orchestrator.state_managers.postgres import PostgresStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator
from tests.servers import PostgresServer, free_port, postgres_env_url


@pytest.fixture
def manager(postgres_server: PostgresServer, postgres_schema: str) -> Iterator[Any]:
    store = PostgresStateManager(
        postgres_server.url, schema=postgres_schema, lock_lease=2, connect_timeout=3
    )
    yield store
    store.close()


def terminate(url: str, where: str) -> int:
    """pg_terminate_backend on every other backend matching ``where``; how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE pid <> pg_backend_pid() AND datname = current_database() AND {where}"
        ).fetchall()
    return len(rows)


def test_connection_refused_fails_fast_with_our_error() -> None:
    store = PostgresStateManager(
        f"postgresql://u:pw@127.0.0.1:{free_port()}/db", connect_timeout=10
    )
    started = time.monotonic()
    with pytest.raises(StateManagerUnavailableError, match="cannot connect"):
        store.load("c")
    assert time.monotonic() - started < 3, "a refused connection must not wait the timeout"
    store.close()


def test_a_server_that_accepts_and_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])  # and never a byte back
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    store = PostgresStateManager(f"postgresql://u:pw@127.0.0.1:{port}/db", connect_timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError):
            store.load("c")
        assert time.monotonic() - started < 2.5, "the configured timeout was not kept"
    finally:
        store.close()
        done.set()
        thread.join()
        listener.close()
        for sock in accepted:
            sock.close()


def test_a_backend_killed_under_a_commit_is_replaced_and_the_write_lands_once(
    manager: PostgresStateManager,
    postgres_server: PostgresServer,
    postgres_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = counter_orchestrator(manager, RecordingSender())
    bot.handle_message("c", "x")
    table = f'"{postgres_schema}".chat_chats'
    # Another session holds the chat's row, so our commit blocks in the server; we kill its
    # backend there, mid-statement. The server rolls that statement back; the retry waits.
    turn = manager.begin_turn("c")  # before the row is held: the lease is a plain write
    assert turn.record is not None
    blocker = psycopg.connect(postgres_server.url)
    from chat_orchestrator.state_managers.base import StateUpdate

    failures: list[BaseException] = []

    def commit() -> None:
        try:
            turn.commit(StateUpdate("start", {"n": 2}, '{"n":2}'))
        except BaseException as exc:  # reported below
            failures.append(exc)

    caplog.set_level(logging.WARNING)
    thread = threading.Thread(target=commit)
    try:
        blocker.execute(f"SELECT * FROM {table} WHERE id = 'c' FOR UPDATE")
        thread.start()
        killed = 0
        for _ in range(200):
            killed = terminate(postgres_server.url, "wait_event_type = 'Lock'")
            if killed:
                break
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(10)
        turn.close()
    assert killed == 1
    assert not failures, failures
    assert manager.get_state("c") == ("start", {"n": 2})
    assert any("retrying once" in r.getMessage() for r in caplog.records)
    bot.handle_message("c", "x")
    assert manager.get_state("c") == ("start", {"n": 3})


def test_idle_connections_killed_by_the_server_are_replaced_before_use(
    manager: PostgresStateManager,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = counter_orchestrator(manager, RecordingSender())
    bot.handle_message("c", "x")
    assert terminate(postgres_server.url, "state = 'idle'") >= 1
    time.sleep(1.2)  # idle longer than CHECK_IDLE: the pool checks them before handing out
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        bot.handle_message("c", "x")
    assert manager.get_state("c") == ("start", {"n": 4})
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], (
        "a dead idle connection reached a statement instead of being checked and replaced"
    )


def test_a_statement_timeout_is_unavailable_and_writes_nothing(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    store = PostgresStateManager(postgres_server.url, schema=postgres_schema, statement_timeout=0.3)
    store.set_state("c", "s", {"n": 1})
    blocker = psycopg.connect(postgres_server.url)
    try:
        blocker.execute(f"SELECT * FROM \"{postgres_schema}\".chat_chats WHERE id = 'c' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(StateManagerUnavailableError, match="statement timeout"):
            store.set_state("c", "t", {"n": 2})
        assert time.monotonic() - started < 3
    finally:
        blocker.rollback()
        blocker.close()
    assert store.get_state("c") == ("s", {"n": 1})
    store.close()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    if postgres_env_url():
        pytest.skip("restarting needs a server of our own, not POSTGRES_URL's")
    server = PostgresServer().init()
    yield server
    server.destroy()


@pytest.mark.slow
def test_server_restarted_mid_run_pool_recovers_and_nothing_is_lost(
    own_server: PostgresServer,
) -> None:
    store = PostgresStateManager(own_server.url, lock_lease=2, connect_timeout=2)
    bot = counter_orchestrator(store, RecordingSender())
    chats = [f"c{n}" for n in range(5)]
    done: dict[str, int] = dict.fromkeys(chats, 0)
    errors: list[BaseException] = []
    after_restart = threading.Event()
    stop = threading.Event()

    def run() -> None:
        turns = 0
        while not stop.is_set() and turns < 5000:
            for chat_id in chats:
                try:
                    bot.handle_message(chat_id, "x")
                    done[chat_id] += 1
                except StateManagerError as exc:  # down: the channel redelivers later
                    errors.append(exc)
                    time.sleep(0.05)
                turns += 1

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    own_server.stop("fast")
    time.sleep(1.0)
    own_server.start()
    before = sum(done.values())
    after_restart.set()
    deadline = time.monotonic() + 30
    while sum(done.values()) < before + 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(30)
    assert sum(done.values()) >= before + 50, "turns did not resume after the restart"
    assert errors, "the outage was not noticed"
    assert all(isinstance(e, StateManagerUnavailableError) for e in errors), errors[:3]
    for chat_id in chats:
        state = store.get_state(chat_id)
        assert state is not None
        # Never fewer than the turns that reported success (nothing lost); more only by a
        # commit whose reply was lost while the server went down (its turn was redelivered).
        lost_replies = len(errors)
        assert done[chat_id] <= state[1]["n"] <= done[chat_id] + lost_replies, chat_id
    store.close()
