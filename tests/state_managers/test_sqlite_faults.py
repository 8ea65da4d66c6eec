"""SQLiteStateManager under faults: a locked database, a full disk, a read-only file system, a
corrupt file. Each gives a clear error of our tree and loses nothing.

The full disk and the read-only file system are real: a small tmpfs mounted for the test
(needs root; skipped with the reason otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.errors import (
    CorruptStateError,
    StateManagerError,
    StateManagerUnavailableError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator

MOUNT, UMOUNT = shutil.which("mount") or "mount", shutil.which("umount") or "umount"


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def integrity(path: Path) -> list[tuple[str]]:
    with contextlib.closing(raw(path)) as check:
        return check.execute("PRAGMA integrity_check").fetchall()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (a disk that can fill up or turn read-only)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    done = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run([UMOUNT, "-l", str(mount_point)], check=False)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run([MOUNT, "-o", f"remount,{mode}", str(mount_point)], check=True)


def test_locked_database_is_unavailable_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path, busy_timeout=0.2, lock_lease=0.3)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    other = raw(path)
    other.execute("BEGIN EXCLUSIVE")  # another program holds SQLite's write lock
    with pytest.raises(StateManagerUnavailableError, match=r"stayed locked .* 0\.2 s"):
        orchestrator.handle_message("c", None)
    assert manager.get_state("c") == ("start", {"n": 1})  # readers still read in WAL
    other.execute("ROLLBACK")
    orchestrator.handle_message("c", None)
    assert manager.get_state("c") == ("start", {"n": 2})


def test_database_locked_between_lease_and_write_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path, busy_timeout=0.2, lock_lease=0.3)
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    other = raw(path)

    @orchestrator.register_step("start")
    def lock_out_the_write(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "lock":
            other.execute("BEGIN EXCLUSIVE")
        return "start", {"n": context.get("n", 0) + 1}

    orchestrator.handle_message("c", None)
    with pytest.raises(StateManagerUnavailableError, match="locked"):
        orchestrator.handle_message("c", "lock")
    other.execute("ROLLBACK")
    assert manager.get_state("c") == ("start", {"n": 1})
    orchestrator.handle_message("c", None)  # the stuck lease expires; the turn gets through
    assert manager.get_state("c") == ("start", {"n": 2})


def test_full_disk_is_a_clear_error_and_loses_nothing(tmpfs: Path) -> None:
    path = tmpfs / "c.db"
    manager = SQLiteStateManager(path)
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def grow(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {"n": context.get("n", 0) + 1, "blob": "x" * int(text or 0)}

    orchestrator.handle_message("c", "10")
    filler = tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:  # fill the disk up to the last block
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    with pytest.raises(OSError, match="No space left") as full:
        (tmpfs / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(StateManagerError, match=r"disk holding .* is full"):
        orchestrator.handle_message("c", "500000")
    assert manager.get_state("c") == ("start", {"n": 1, "blob": "x" * 10})
    filler.unlink()
    orchestrator.handle_message("c", "500000")
    assert manager.get_state("c") == ("start", {"n": 2, "blob": "x" * 500_000})
    manager.close()
    assert integrity(path) == [("ok",)]


def test_read_only_file_system_is_refused_and_the_data_stays(tmpfs: Path) -> None:
    path = tmpfs / "c.db"
    manager = SQLiteStateManager(path)
    counter_orchestrator(manager, RecordingSender()).handle_message("c", None)
    manager.close()
    before = path.read_bytes()
    remount(tmpfs, "ro")
    try:
        with pytest.raises(StateManagerError, match="read-only file system"):
            SQLiteStateManager(path)
    finally:
        remount(tmpfs, "rw")
    assert path.read_bytes() == before
    assert SQLiteStateManager(path).get_state("c") == ("start", {"n": 1})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteStateManager(path).close()
    path.chmod(0o444)
    with pytest.raises(StateManagerError, match="read-only file"):
        SQLiteStateManager(path)


def test_file_turned_read_only_under_a_running_manager(tmpfs: Path) -> None:
    # The check at construction cannot see a later change: SQLite's own error is mapped.
    path = tmpfs / "c.db"
    manager = SQLiteStateManager(path)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    db = manager._connection().db
    db.execute("PRAGMA query_only = ON")  # how SQLite reports a write to a read-only database
    with pytest.raises(StateManagerError, match="read-only"):
        orchestrator.handle_message("c", None)
    db.execute("PRAGMA query_only = OFF")
    assert manager.get_state("c") == ("start", {"n": 1})


def test_garbage_file_is_reported_as_corrupt_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    garbage = b"this is not a database\n" * 400
    path.write_bytes(garbage)
    with pytest.raises(CorruptStateError, match="not a SQLite database") as raised:
        SQLiteStateManager(path)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == garbage
    assert not Path(f"{path}-wal").exists()


def test_damaged_pages_are_reported_as_corrupt_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path)
    for index in range(300):
        manager.set_state(f"chat-{index}", "s", {"pad": "y" * 500})
    manager.close()
    with contextlib.closing(raw(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : 3 * page] = b"\xde\xad" * page  # trash the roots of the table and its index
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    manager = SQLiteStateManager(path)
    with pytest.raises(CorruptStateError, match="damaged"):
        [manager.get_state(f"chat-{index}") for index in range(300)]
    assert path.read_bytes() == damaged


def test_a_record_that_is_not_json_is_corrupt_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("victim", None)
    with contextlib.closing(raw(path)) as db:
        db.execute("UPDATE chats SET context = '{broken' WHERE id = 'victim'")
    with pytest.raises(CorruptStateError, match="'victim'"):
        orchestrator.handle_message("victim", None)
    with contextlib.closing(raw(path)) as db:
        row = db.execute("SELECT context, version, lease_until FROM chats").fetchone()
    assert row == ("{broken", 1, 0)  # untouched, and the lease it took was dropped


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteStateManager(path).close()
    with contextlib.closing(raw(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateManagerError, match="schema version 99"):
        SQLiteStateManager(path)
