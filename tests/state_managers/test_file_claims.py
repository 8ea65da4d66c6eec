"""FileStateManager's once-only markers: exact re-claims under races, sweeps, release_claim
(issue 8, "File backend")."""

from __future__ import annotations

import errno
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.state_managers import _file_claims
from chat_orchestrator.state_managers.file import FileStateManager
from tests.helpers import run_together
from tests.state_managers.test_file_hardening import marker_of, names


def test_an_old_empty_marker_no_longer_blocks_its_key_forever(tmp_path: Path) -> None:
    # What an earlier version left when the disk filled between create and write.
    manager = FileStateManager(state_dir=tmp_path)
    old, young = marker_of(manager, "old"), marker_of(manager, "young")
    old.write_bytes(b"")
    young.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert manager.claim("old", 60) is True
    assert manager.claim("young", 60) is False  # may be mid-write by an old writer: live


def expired_marker(manager: FileStateManager, key: str) -> bool:
    """Claim ``key`` with a marker that has already expired.

    The public ``claim`` refuses a ttl <= 0, so this goes one level down, to the markers.
    """
    return manager._markers.claim(key, -1.0)


# -- 2. an expired key is re-claimed exactly once -------------------------------------------
def test_threads_re_claiming_an_expired_key_win_once(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    threads, rounds = 12, 150
    multiple_winners = []
    for round_ in range(rounds):
        key = f"k{round_}"
        assert expired_marker(manager, key)
        barrier = threading.Barrier(threads)
        wins: list[bool] = []

        def reclaim(
            key: str = key, barrier: threading.Barrier = barrier, wins: list[bool] = wins
        ) -> None:
            barrier.wait()
            wins.append(manager.claim(key, 60))

        workers = [threading.Thread(target=reclaim) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if wins.count(True) != 1:
            multiple_winners.append((round_, wins.count(True)))
    assert multiple_winners == []


RECLAIMER = textwrap.dedent(
    """
    import sys
    from chat_orchestrator.state_managers.file import FileStateManager
    manager = FileStateManager(state_dir=sys.argv[1], fsync=False)
    print("ready", flush=True)
    sys.stdin.readline()
    won = [key for key in sys.argv[3].split(",") if manager.claim(key, 60)]
    with open(sys.argv[2], "w") as out:
        out.write(",".join(won))
    """
)


@pytest.mark.slow
def test_processes_re_claiming_expired_keys_win_once_each(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    manager = FileStateManager(state_dir=state_dir, fsync=False)
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        assert expired_marker(manager, key)
    outputs = [tmp_path / f"won-{i}" for i in range(4)]
    run_together(
        [
            [sys.executable, "-c", RECLAIMER, str(state_dir), str(out), ",".join(keys)]
            for out in outputs
        ],
        timeout=120,
    )
    won = [key for out in outputs for key in out.read_text().split(",") if key]
    assert sorted(won) == sorted(keys)  # every expired key re-claimed by exactly one process


def test_expired_markers_do_not_survive_a_restart(tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    for i in range(2_000):
        assert expired_marker(manager, f"expired-{i}")
    for i in range(10):
        assert manager.claim(f"live-{i}", 3600) is True
    stale_temp = tmp_path / "claims" / ".dead-claimer.1.2.tmp"
    not_ours = tmp_path / "claims" / "README"  # an operator's note: never ours to delete
    for path in [stale_temp, not_ours]:
        path.write_bytes(b"1")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert len(names(tmp_path / "claims")) == 2_012

    restarted = FileStateManager(state_dir=tmp_path, fsync=False)
    assert len(names(tmp_path / "claims")) == 11
    assert not_ours.exists()
    assert all(restarted.claim(f"live-{i}", 3600) is False for i in range(10))
    assert restarted.claim("expired-0", 60) is True


def test_claims_sweep_expired_markers_periodically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FileStateManager(state_dir=tmp_path, fsync=False)
    for i in range(1_000):
        expired_marker(manager, f"expired-{i}")
    manager.claim("live", 3600)
    assert len(names(tmp_path / "claims")) == 1_001  # not yet: sweeps are amortized
    real_monotonic = time.monotonic
    monkeypatch.setattr(
        time, "monotonic", lambda: real_monotonic() + _file_claims.SWEEP_SECONDS + 1
    )
    assert manager.claim("after", 3600) is True
    assert names(tmp_path / "claims") == sorted(
        [marker_of(manager, "live").name, marker_of(manager, "after").name]
    )


# -- release_claim --------------------------------------------------------------------------
def test_release_claim_forgets_only_that_key_for_every_manager(tmp_path: Path) -> None:
    first, second = FileStateManager(state_dir=tmp_path), FileStateManager(state_dir=tmp_path)
    assert first.claim("a", 60) is True
    assert first.claim("b", 60) is True
    first.release_claim("a")
    first.release_claim("never-claimed")  # no error
    assert second.claim("a", 60) is True  # another manager (process) sees it released
    assert second.claim("b", 60) is False
    assert first.claim("a", 60) is False


def test_release_claim_failure_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FileStateManager(state_dir=tmp_path)
    assert manager.claim("a", 60) is True

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(StateManagerError, match=r"cannot release key 'a'.*Read-only"):
        manager.release_claim("a")
    monkeypatch.undo()
    assert manager.claim("a", 60) is False
