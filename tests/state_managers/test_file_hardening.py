"""FileStateManager under faults and attack: full disks, racing re-claims, planted symlinks,
and directories that must not grow forever (issue 8, "File backend")."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.errors import StateManagerError, StepError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import run_together
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, Served
from tests.whatsapp.conftest import serve as serve  # the fixture: a real HTTP server
from tests.whatsapp.graph_standin import fixture_bytes


def marker_of(manager: FileStateManager, key: str) -> Path:
    claims = manager.state_dir / "claims"
    claims.mkdir(exist_ok=True)  # older versions created it on the first claim
    return claims / hashlib.sha256(key.encode()).hexdigest()


def lock_of(manager: FileStateManager, chat_id: str) -> Path:
    return manager.path_for(chat_id).with_suffix(".lock")


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def chat_files(state_dir: Path) -> list[str]:
    """Records, lock and temp files: everything but the claims directory."""
    return [name for name in names(state_dir) if name != "claims"]


# -- 1. a failed write leaves nothing behind ------------------------------------------------
def test_claim_write_failure_is_a_clear_error_and_leaves_no_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)

    def full_disk(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StateManagerError, match=r"cannot record key 'wa:1'.*No space") as info:
        manager.claim("wa:1", 60)
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    assert names(tmp_path / "claims") == []  # neither a marker nor its temp file
    assert manager.claim("wa:1", 60) is True  # the redelivery runs: not a "duplicate"
    assert manager.claim("wa:1", 60) is False


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (needs root); unmounted afterwards."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount/umount here")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run([umount, str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left") as info:  # noqa: PT012
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    return ballast


def test_full_disk_claim_and_state_write_fail_cleanly(small_tmpfs: Path) -> None:
    manager = FileStateManager(state_dir=small_tmpfs / "s")
    manager.set_state("c", "s", {"n": 1})
    assert manager.claim("seen", 60) is True
    record = manager.path_for("c").read_bytes()
    before = names(small_tmpfs / "s"), names(small_tmpfs / "s" / "claims")
    ballast = fill(small_tmpfs)

    with pytest.raises(StateManagerError, match=r"cannot record key 'new'.*No space"):
        manager.claim("new", 60)
    with pytest.raises(StateManagerError, match=r"cannot write the record of chat 'c'.*No space"):
        manager.set_state("c", "s", {"n": 2, "big": "x" * 20_000})
    assert manager.path_for("c").read_bytes() == record  # the old record, intact
    assert (names(small_tmpfs / "s"), names(small_tmpfs / "s" / "claims")) == before
    assert manager.claim("seen", 60) is False  # an existing marker still holds

    ballast.unlink()
    assert manager.claim("new", 60) is True
    manager.set_state("c", "s", {"n": 2})
    assert manager.get_state("c") == ("s", {"n": 2})


def test_a_full_disk_webhook_post_is_retried_by_meta_and_then_runs_once(
    small_tmpfs: Path, serve: Callable[[WhatsAppBot], Served]
) -> None:
    sender = RecordingSender()
    orchestrator = ChatOrchestrator(FileStateManager(state_dir=small_tmpfs / "s"), sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, f"got {text}")
        return "start", {}

    served = serve(WhatsAppBot(orchestrator, WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET)))
    body = fixture_bytes("inbound_text.json")
    ballast = fill(small_tmpfs)
    assert served.post(body).status_code == 503  # Meta redelivers
    assert sender.sent == []
    ballast.unlink()
    assert served.post(body).status_code == 200  # the redelivery runs: no marker was left
    assert served.post(body).status_code == 200  # and a second one is the duplicate
    assert len(sender.sent) == 1


# -- 3. planted symlinks are never followed -------------------------------------------------
def test_the_probe_never_truncates_through_a_planted_symlink(tmp_path: Path) -> None:
    state_dir, victim = tmp_path / "s", tmp_path / "precious"
    state_dir.mkdir()
    victim.write_bytes(b"precious")
    (state_dir / f".probe-{os.getpid()}").symlink_to(victim)  # the name the old probe used
    FileStateManager(state_dir=state_dir)
    assert victim.read_bytes() == b"precious"


def test_a_symlinked_lock_file_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path / "s")
    outside, existing = tmp_path / "created-outside", tmp_path / "existing"
    existing.write_bytes(b"keep")
    lock_of(manager, "a").symlink_to(outside)
    lock_of(manager, "b").symlink_to(existing)
    for chat_id in ["a", "b"]:
        with pytest.raises(StateManagerError, match=rf"lock of chat '{chat_id}'.*symlink"):
            manager.set_state(chat_id, "s", {})
        assert manager.load(chat_id) is None
    assert not outside.exists()
    assert existing.read_bytes() == b"keep"


def test_a_symlinked_record_is_not_read(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path / "s")
    forged = tmp_path / "forged.json"
    forged.write_text('{"format":1,"chat_id":"victim","state_id":"admin","version":1,"context":{}}')
    manager.path_for("victim").symlink_to(forged)
    with pytest.raises(StateManagerError, match=r"record of chat 'victim'.*symlink"):
        manager.load("victim")


def test_a_symlinked_claim_marker_is_not_followed(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path / "s")
    far_future = tmp_path / "far-future"
    deadline = repr(time.time() + 10**9).encode()
    far_future.write_bytes(deadline)
    marker_of(manager, "wa:1").symlink_to(far_future)  # would block the key for 30 years
    assert manager.claim("wa:1", 60) is True
    assert far_future.read_bytes() == deadline  # the target is untouched
    assert not marker_of(manager, "wa:1").is_symlink()


def test_a_symlinked_claims_directory_is_refused(tmp_path: Path) -> None:
    state_dir, elsewhere = tmp_path / "s", tmp_path / "elsewhere"
    state_dir.mkdir()
    elsewhere.mkdir()
    (state_dir / "claims").symlink_to(elsewhere)
    with pytest.raises(StateManagerError, match=r"claims directory .*: it is a symlink"):
        FileStateManager(state_dir=state_dir)
    assert names(elsewhere) == []


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path / "new" / "s")
    assert stat.S_IMODE(manager.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((manager.state_dir / "claims").stat().st_mode) == 0o700


def test_an_exposed_state_dir_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chat_orchestrator")
    private = tmp_path / "private"
    FileStateManager(state_dir=private)
    assert caplog.records == []
    private.chmod(0o777)
    FileStateManager(state_dir=private)
    assert [r.getMessage() for r in caplog.records] == [
        f"state_dir {private} is writable by any user (mode 777): anyone can forge or delete "
        "chat records; use chmod 700"
    ]
    if os.geteuid() != 0:
        return  # only root can hand a directory to another user
    caplog.clear()
    private.chmod(0o700)
    os.chown(private, 4242, -1)
    FileStateManager(state_dir=private)
    assert [r.getMessage() for r in caplog.records] == [
        f"state_dir {private} is owned by uid 4242, not by this process (uid 0): its owner "
        "can read, forge or delete chat records"
    ]


# -- 4. nothing grows forever ---------------------------------------------------------------
def test_created_and_deleted_chats_leave_no_files(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    for i in range(2_000):
        manager.set_state(f"chat-{i}", "s", {"i": i})
    assert len(list(tmp_path.glob("*.lock"))) == 2_000  # a stored chat keeps its lock file
    for i in range(2_000):
        manager.delete_state(f"chat-{i}")
    assert chat_files(tmp_path) == []


def test_a_failed_first_turn_leaves_no_lock_file(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    orchestrator.add_step("start", lambda c, t, x, s: 1 / 0)  # type: ignore[arg-type]
    for i in range(100):
        with pytest.raises(StepError):
            orchestrator.handle_message(f"new-{i}", None)
    assert chat_files(tmp_path) == []


def test_a_crashed_holders_lock_file_is_removed_on_open_a_held_one_kept(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    manager.set_state("stored", "s", {})
    orphan, held = lock_of(manager, "crashed"), lock_of(manager, "busy")
    orphan.touch()
    held.touch()
    fd = os.open(held, os.O_RDWR)  # another process's live turn on a new chat
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        FileStateManager(state_dir=tmp_path)
        assert not orphan.exists()
        assert held.exists()
        assert lock_of(manager, "stored").exists()
    finally:
        os.close(fd)


def test_lock_files_removed_under_contention_keep_turns_exclusive(tmp_path: Path) -> None:
    # No record: every release unlinks the lock file, the worst case for the inode check.
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    inside = 0
    overlaps = 0
    entered = 0

    def worker() -> None:
        nonlocal inside, overlaps, entered
        for _ in range(200):
            with manager.lock("churn"):
                inside += 1
                if inside != 1:
                    overlaps += 1
                time.sleep(0)  # let another thread run while we "hold" the chat
                entered += 1
                inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (overlaps, entered) == (0, 1_600)
    assert chat_files(tmp_path) == []


LOCK_CHURNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chat_orchestrator.state_managers.file import FileStateManager
    manager = FileStateManager(state_dir=sys.argv[1], fsync=False)
    counter = Path(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[3])):
        with manager.lock("churn"):  # no record: each release unlinks the lock file
            counter.write_text(str(int(counter.read_text()) + 1))
    """
)


@pytest.mark.slow
def test_lock_files_removed_under_contention_lose_no_update_across_processes(
    tmp_path: Path,
) -> None:
    state_dir, counter = tmp_path / "s", tmp_path / "counter"
    FileStateManager(state_dir=state_dir)
    counter.write_text("0")
    command = [sys.executable, "-c", LOCK_CHURNER, str(state_dir), str(counter), "150"]
    run_together([command] * 4, timeout=120)
    assert counter.read_text() == "600"
    assert chat_files(state_dir) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fsync": "no"}, TypeError),  # before: truthy, so fsync stayed on when asked off
        ({"fsync": 0}, TypeError),
        ({"lock_timeout": float("nan")}, ValueError),  # before: a busy chat waited forever
        ({"lock_timeout": -1}, ValueError),
        ({"lock_timeout": "3"}, TypeError),
    ],
    ids=repr,
)
def test_bad_settings_are_refused_when_built(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        FileStateManager(state_dir=tmp_path / "s", **kwargs)
