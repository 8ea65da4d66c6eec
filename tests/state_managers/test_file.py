"""FileStateManager: paths, corruption, unwritable directories, crashes, processes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chat_orchestrator.errors import CorruptStateError, StateManagerError, StepError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import ROOT, counter_orchestrator, run_together
from tests.state_managers.test_common import HOSTILE_IDS


def test_hostile_ids_never_leave_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "states"
    manager = FileStateManager(state_dir=state_dir)
    for chat_id in HOSTILE_IDS:
        manager.set_state(chat_id, "s", {})
    outside = {p for p in tmp_path.rglob("*") if p.is_file() and state_dir not in p.parents}
    assert outside == set()
    records = sorted(state_dir.glob("*.json"))
    assert len(records) == len(HOSTILE_IDS)
    assert all(len(p.stem) == 64 and p.stem.isalnum() for p in records)
    assert not list(state_dir.glob(".*.tmp"))


def test_corrupt_or_truncated_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path)
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("victim", None)
    path = manager.path_for("victim")
    for damaged in [path.read_bytes()[:-7], b"", b"\xff\xfe garbage", b"[]", b'{"format": 1}']:
        path.write_bytes(damaged)
        with pytest.raises(CorruptStateError, match="'victim'"):
            orchestrator.handle_message("victim", None)
        assert path.read_bytes() == damaged


def test_a_file_of_another_chat_is_not_taken_for_this_one(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path)
    manager.set_state("alice", "s", {"who": "alice"})
    manager.path_for("alice").replace(manager.path_for("bob"))
    with pytest.raises(CorruptStateError, match="another chat"):
        manager.load("bob")


def test_state_dir_that_is_a_file_is_refused_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    with pytest.raises(StateManagerError, match="not a writable directory"):
        FileStateManager(state_dir=blocker)
    with pytest.raises(StateManagerError, match="not a writable directory"):
        FileStateManager(state_dir=blocker / "sub")


def test_write_failure_is_a_clear_error_and_keeps_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FileStateManager(state_dir=tmp_path / "s")
    orchestrator = counter_orchestrator(manager, RecordingSender())
    orchestrator.handle_message("c", None)
    before = manager.path_for("c").read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the disk fails mid-write
    with pytest.raises(StateManagerError, match="cannot write the record of chat 'c'"):
        orchestrator.handle_message("c", None)
    monkeypatch.undo()
    assert manager.path_for("c").read_bytes() == before
    assert not list((tmp_path / "s").glob(".*.tmp"))


def test_step_failure_leaves_file_bytes_identical(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path)
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: ("boom", {"v": 1}))
    orchestrator.add_step("boom", lambda c, t, x, s: 1 / 0)  # type: ignore[arg-type]
    orchestrator.handle_message("c", None)
    before = manager.path_for("c").read_bytes()
    with pytest.raises(StepError):
        orchestrator.handle_message("c", None)
    assert manager.path_for("c").read_bytes() == before


WRITER = textwrap.dedent(
    """
    import sys
    from chat_orchestrator.state_managers.file import FileStateManager
    manager = FileStateManager(state_dir=sys.argv[1])
    big = {"payload": "x" * 200_000}
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        manager.set_state("crashy", "s", {**big, "n": n})
    """
)


@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_a_torn_record(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    manager = FileStateManager(state_dir=state_dir)
    kills = 0
    last_n = 0
    for round_ in range(15):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(state_dir)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.05 + 0.013 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        record = manager.load("crashy")  # must parse: old or new, never torn
        if record is not None:
            assert record.context["payload"] == "x" * 200_000
            last_n = record.context["n"]
    assert kills == 15
    assert last_n > 0


COUNTER_WORKER = textwrap.dedent(
    """
    import sys
    from chat_orchestrator.state_managers.file import FileStateManager
    from chat_orchestrator.testing import RecordingSender
    from tests.helpers import counter_orchestrator
    orchestrator = counter_orchestrator(FileStateManager(state_dir=sys.argv[1]), RecordingSender())
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for _ in range(int(sys.argv[2])):
        orchestrator.handle_message("shared", "tick")
    """
)


@pytest.mark.slow
def test_four_processes_one_chat_lose_no_update(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    command = [sys.executable, "-c", COUNTER_WORKER, str(state_dir), "100"]
    run_together([command] * 4, timeout=120)
    record = FileStateManager(state_dir=state_dir).load("shared")
    assert record is not None
    assert record.context == {"n": 400}
    assert record.version == 400


def test_old_temp_files_are_cleaned_young_ones_kept(tmp_path: Path) -> None:
    old = tmp_path / ".abc.1.2.tmp"
    young = tmp_path / ".def.1.2.tmp"
    old.write_text("x")
    young.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    FileStateManager(state_dir=tmp_path)
    assert not old.exists()
    assert young.exists()
