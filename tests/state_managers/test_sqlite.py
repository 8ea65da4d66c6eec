"""SQLiteStateManager: ids, leases, processes, crashes, chats that must not wait for each other.

Faults (locked, full, read-only, corrupt) are in ``test_sqlite_faults.py``.
"""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.errors import InvalidChatIdError, VersionConflictError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers._leased import _LeasedTurn, renewer
from chat_orchestrator.state_managers.base import MAX_CHAT_ID_LENGTH, StateUpdate
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import ROOT, counter_orchestrator, run_together


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_hostile_ids_round_trip_byte_for_byte(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    ids = [
        "a",
        "a\x00",
        "a\x00b",
        "a\x00c",
        "\x00",
        "../../etc/passwd",
        "'; DROP TABLE chats; --",
        "😀" * MAX_CHAT_ID_LENGTH,  # 64 KiB of UTF-8
        "x" * MAX_CHAT_ID_LENGTH,
        "e\u0301",
        "\u00e9",
    ]
    orchestrator = counter_orchestrator(manager, RecordingSender())
    for chat_id in ids:
        orchestrator.handle_message(chat_id, None)
        orchestrator.handle_message(chat_id, None)
    for chat_id in ids:
        assert manager.get_state(chat_id) == ("start", {"n": 2}), repr(chat_id)
        manager.set_state(chat_id, "s", {"id": chat_id})
    for chat_id in ids:
        assert manager.get_state(chat_id) == ("s", {"id": chat_id}), repr(chat_id)
    stored = [row[0] for row in raw(tmp_path / "c.db").execute("SELECT id FROM chats")]
    assert sorted(stored) == sorted(ids)  # nothing truncated at NUL, nothing merged
    with pytest.raises(InvalidChatIdError):
        manager.set_state("x" * (MAX_CHAT_ID_LENGTH + 1), "s", {})
    with pytest.raises(InvalidChatIdError):
        manager.set_state("\ud800", "s", {})


def test_turns_write_at_the_configured_synchronous_level(tmp_path: Path) -> None:
    # The lease is taken at NORMAL (no fsync); the record must go back to the configured level.
    for level, number in [("FULL", 2), ("normal", 1), ("EXTRA", 3)]:
        manager = SQLiteStateManager(tmp_path / f"{level}.db", synchronous=level)
        counter_orchestrator(manager, RecordingSender()).handle_message("c", None)
        assert manager._connection().db.execute("PRAGMA synchronous").fetchone()[0] == number
        assert raw(tmp_path / f"{level}.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(ValueError, match="synchronous must be one of"):
        SQLiteStateManager(tmp_path / "x.db", synchronous="sometimes")
    for temporary in [":memory:", ""]:
        with pytest.raises(ValueError, match="InMemoryStateManager"):
            SQLiteStateManager(temporary)


def test_a_failed_first_turn_leaves_no_row(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: 1 / 0)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="ZeroDivisionError"):
        orchestrator.handle_message("new", None)
    assert raw(tmp_path / "c.db").execute("SELECT count(*) FROM chats").fetchone() == (0,)


def test_lease_of_a_stalled_turn_expires_and_its_late_write_is_rejected(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db", lock_lease=0.4)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    stalled = manager.begin_turn("c")
    assert isinstance(stalled, _LeasedTurn)
    assert stalled._token is not None
    renewer.drop(stalled._token)  # a stalled process renews nothing either
    started = time.monotonic()
    orchestrator.handle_message("c", None)  # waits for the lease to expire, then runs
    assert time.monotonic() - started >= 0.3
    with pytest.raises(VersionConflictError, match="version 2"):
        stalled.commit(StateUpdate("start", {"n": 99}, '{"n":99}'))
    stalled.close()  # the lease is no longer its own: closing must not drop the new holder's
    assert manager.get_state("c") == ("start", {"n": 2})


def test_claims_expire_are_swept_and_can_be_released(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    other = SQLiteStateManager(tmp_path / "c.db")  # another process's view of the same file
    assert manager.claim("wa:1:A", 3600) is True
    assert other.claim("wa:1:A", 3600) is False
    manager.release_claim("wa:1:A")
    assert other.claim("wa:1:A", 3600) is True
    for index in range(20):
        manager.claim(f"short-{index}", 0.01)
    time.sleep(0.03)
    assert manager.sweep_claims() == 20
    count = raw(tmp_path / "c.db").execute("SELECT count(*) FROM claims").fetchone()[0]
    assert count == 1  # only the live one is kept


def test_claims_are_swept_without_being_asked(tmp_path: Path) -> None:
    from chat_orchestrator.state_managers._sqlite_core import SWEEP_EVERY

    manager = SQLiteStateManager(tmp_path / "c.db", synchronous="OFF")  # 512 claims, no fsync
    for index in range(SWEEP_EVERY - 1):
        manager.claim(f"k{index}", 0.001)
    time.sleep(0.01)
    manager.claim("last", 3600)
    count = raw(tmp_path / "c.db").execute("SELECT count(*) FROM claims").fetchone()[0]
    assert count == 1


def test_different_chats_do_not_wait_for_each_others_steps(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    elsewhere = SQLiteStateManager(tmp_path / "c.db")  # as another process would
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    in_step, release = threading.Event(), threading.Event()

    @orchestrator.register_step("start")
    def slow_on_a(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if chat_id == "A":
            in_step.set()
            assert release.wait(30)
        return "start", {"n": context.get("n", 0) + 1}

    slow = threading.Thread(target=orchestrator.handle_message, args=("A", None))
    slow.start()
    assert in_step.wait(10)
    fast_orchestrators = [orchestrator, counter_orchestrator(elsewhere, RecordingSender())]

    def twenty_turns_on_b() -> None:
        for index in range(20):
            fast_orchestrators[index % 2].handle_message("B", None)

    fast = threading.Thread(target=twenty_turns_on_b)
    fast.start()
    fast.join(timeout=10)
    finished_while_a_ran = not fast.is_alive()
    release.set()
    slow.join(timeout=10)
    fast.join(timeout=10)
    assert finished_while_a_ran, "chat B waited for chat A's step"
    assert manager.get_state("B") == ("start", {"n": 20})
    assert manager.get_state("A") == ("start", {"n": 1})


def test_eight_threads_one_chat_lose_no_update(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    orchestrator = counter_orchestrator(manager, RecordingSender())
    threads = [
        threading.Thread(target=lambda: [orchestrator.handle_message("c", None) for _ in range(25)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = manager.load("c")
    assert record is not None
    assert (record.context, record.version) == ({"n": 200}, 200)


def test_a_thread_per_request_does_not_pile_up_connections(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    for _ in range(100):  # as a threading WSGI server would: a new thread per message
        thread = threading.Thread(target=orchestrator.handle_message, args=("c", None))
        thread.start()
        thread.join()
    gc.collect()
    assert manager.get_state("c") == ("start", {"n": 100})
    # Only this thread's connection is left open. (Counting descriptors would not tell: SQLite
    # keeps a closed connection's descriptor for reuse while others hold locks on the file.)
    assert len(manager._open) == 1


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db")
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    parent_db = manager._connection().db
    pid = os.fork()
    if pid == 0:  # the child: prove it does not use the parent's connection, then turns
        code = 1
        try:
            if manager._connection().db is not parent_db:
                for _ in range(20):
                    orchestrator.handle_message("c", None)
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    orchestrator.handle_message("c", None)
    assert manager.get_state("c") == ("start", {"n": 22})
    assert raw(tmp_path / "c.db").execute("PRAGMA integrity_check").fetchall() == [("ok",)]


COUNTER_WORKER = textwrap.dedent(
    """
    import sys
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
    from chat_orchestrator.testing import RecordingSender
    from tests.helpers import counter_orchestrator
    path, count, chats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    manager = SQLiteStateManager(path, lock_timeout=120)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for index in range(count):
        orchestrator.handle_message(f"chat-{index % chats}", "tick")
    """
)


def run_counter_workers(path: Path, count: int, chats: int) -> None:
    # No schema yet: the four workers also race to create the database file.
    command = [sys.executable, "-c", COUNTER_WORKER, str(path), str(count), str(chats)]
    run_together([command] * 4, timeout=300)


@pytest.mark.slow
def test_four_processes_one_chat_lose_nothing(tmp_path: Path) -> None:
    run_counter_workers(tmp_path / "c.db", count=250, chats=1)
    record = SQLiteStateManager(tmp_path / "c.db").load("chat-0")
    assert record is not None
    assert (record.context, record.version) == ({"n": 1000}, 1000)


@pytest.mark.slow
def test_four_processes_fifty_chats_every_counter_exact(tmp_path: Path) -> None:
    run_counter_workers(tmp_path / "c.db", count=250, chats=50)
    manager = SQLiteStateManager(tmp_path / "c.db")
    for index in range(50):
        assert manager.get_state(f"chat-{index}") == ("start", {"n": 20}), index


# Each turn writes n, a copy of n and a 20 KB pad (several overflow pages): a half-applied
# turn would show as n != copy, n != version, or a damaged page.
CRASHY_WRITER = textwrap.dedent(
    """
    import sys
    from chat_orchestrator.orchestrator import ChatOrchestrator
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
    from chat_orchestrator.testing import RecordingSender
    manager = SQLiteStateManager(sys.argv[1], lock_lease=0.3, lock_timeout=30)
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def step(chat_id, text, context, sender):
        n = context.get("n", 0) + 1
        return "start", {"n": n, "copy": n, "pad": str(n % 10) * 20_000}

    orchestrator.handle_message("crashy", None)
    print("ready", flush=True)
    index = 0
    while True:
        index += 1
        orchestrator.handle_message("crashy" if index % 3 else f"other-{index % 7}", None)
    """
)


@pytest.mark.slow
def test_sigkill_mid_turn_loop_never_damages_the_database(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteStateManager(path).close()
    last_n = 0
    for round_ in range(15):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHY_WRITER, str(path)], stdout=subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # it may have waited for the dead lease
        time.sleep(0.05 + 0.011 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = raw(path)
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        check.close()
        record = SQLiteStateManager(path).load("crashy")
        assert record is not None
        n = record.context["n"]
        assert record.context == {"n": n, "copy": n, "pad": str(n % 10) * 20_000}
        assert record.version == n  # version and content moved together, turn by turn
        assert n > last_n
        last_n = n
    # The last victim's lease, if it died holding one, expires: a new turn gets through.
    manager = SQLiteStateManager(path, lock_lease=0.3, lock_timeout=5)
    counter_orchestrator(manager, RecordingSender()).handle_message("crashy", None)
    assert manager.get_state("crashy") == ("start", {"n": last_n + 1})
