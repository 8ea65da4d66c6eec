"""Turn cost against the number of stored chats: does a big store make every turn slower?

Run by hand: ``uv run python bench/bench_scale.py`` (``--quick`` for a smoke run with small
numbers; the directory is ``$BENCH_DIR`` or the system temp dir: put it on the disk you care
about). Target (issue 11): a SQLite turn at 1,000,000 chats costs at most 1.5x one at 1,000
chats. Also printed: the SQLite database size per chat (file size / chat count after a
checkpoint) and the file backend's turn cost at 1,000 vs 100,000 chats.

The stores are filled in bulk, not through turns (a million turns would take minutes): SQLite
by one ``executemany`` transaction into the manager's own ``chats`` table, the file backend by
writing each record with the manager's own encoder at the manager's own ``path_for``. Every
turn goes to a random existing chat, so the cost measured includes finding a cold row or file,
not one hot chat kept in cache.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare, report
from bench_turns import CONTEXT, trivial_orchestrator
from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.state_managers._file_records import encode_record
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

CONTEXT_TEXT = encode_context(CONTEXT)


def chat_id(index: int) -> str:
    return f"chat-{index:07d}"


def random_turns(
    handle: Callable[[str, str], object], chats: int, seed: int
) -> Callable[[], object]:
    """One turn of a random existing chat per call (seeded: runs are repeatable)."""
    rng = random.Random(seed)

    def turn() -> object:
        return handle(chat_id(rng.randrange(chats)), "hi")

    return turn


def fill_sqlite(path: Path, chats: int) -> int:
    """Insert ``chats`` records in one transaction; return the database size after a checkpoint."""
    now_ms = int(time.time() * 1000)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO chats (id, state, context, version, updated, lease_token, lease_until)"
            " VALUES (?, 'start', ?, 1, ?, NULL, 0)",
            ((chat_id(i), CONTEXT_TEXT, now_ms) for i in range(chats)),
        )
        db.execute("COMMIT")
        # TRUNCATE moves every WAL frame into the main file and empties the WAL, so the
        # main file's size is the whole store.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return path.stat().st_size


def sqlite_pair(
    root: Path, small: int, big: int, synchronous: str
) -> tuple[dict[str, Callable[[], object]], float]:
    """Contenders for a small and a big database at one level, and the big one's bytes/chat."""
    contenders: dict[str, Callable[[], object]] = {}
    per_chat = 0.0
    for chats in (small, big):
        manager = SQLiteStateManager(root / f"{synchronous}-{chats}.db", synchronous=synchronous)
        size = fill_sqlite(manager.path, chats)
        per_chat = size / chats
        orchestrator = trivial_orchestrator(manager)
        contenders[f"SQLite {synchronous}, {chats:,} chats"] = random_turns(
            orchestrator.handle_message, chats, seed=chats
        )
    return contenders, per_chat


def fill_files(manager: FileStateManager, chats: int) -> tuple[int, int]:
    """Write ``chats`` records (no fsync: a fill, not a turn); return (bytes, allocated bytes)."""
    size = allocated = 0
    for i in range(chats):
        chat = chat_id(i)
        path = manager.path_for(chat)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encode_record(chat, "start", 1, CONTEXT_TEXT))
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        size += stat.st_size
        allocated += stat.st_blocks * 512
    return size, allocated


def file_pair(
    root: Path, small: int, big: int
) -> tuple[dict[str, Callable[[], object]], tuple[float, float]]:
    contenders: dict[str, Callable[[], object]] = {}
    per_chat = (0.0, 0.0)
    for chats in (small, big):
        manager = FileStateManager(root / f"files-{chats}", fsync=True)
        size, allocated = fill_files(manager, chats)
        per_chat = (size / chats, allocated / chats)
        orchestrator = trivial_orchestrator(manager)
        contenders[f"FileStateManager (fsync), {chats:,} chats"] = random_turns(
            orchestrator.handle_message, chats, seed=chats
        )
    return contenders, per_chat


def ratio_line(what: str, medians: dict[str, float], target: str = "") -> None:
    small, big = medians.values()
    names = list(medians)
    suffix = f" (target {target})" if target else ""
    print(f"{what}: {big / small:5.2f}x ({names[1]} vs {names[0]}){suffix}")


def main() -> None:
    quick = "--quick" in sys.argv
    small = 1_000
    big_sqlite = 20_000 if quick else 1_000_000
    big_files = 20_000 if quick else 100_000
    normal_ops, full_ops, file_ops = (200, 20, 20) if quick else (3_000, 200, 200)
    results: list[tuple[str, dict[str, float], str]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        normal, db_per_chat = sqlite_pair(root, small, big_sqlite, "NORMAL")
        print(f"filled the NORMAL databases in {time.perf_counter() - start:.1f} s")
        medians = compare(normal, normal_ops)
        report("SQLite synchronous=NORMAL turns by database size", medians, next(iter(medians)))
        results.append(("SQLite NORMAL turn cost, big/small", medians, "<= 1.5x"))

        start = time.perf_counter()
        full, _ = sqlite_pair(root, small, big_sqlite, "FULL")
        print(f"\nfilled the FULL databases in {time.perf_counter() - start:.1f} s")
        medians = compare(full, full_ops)
        report("SQLite synchronous=FULL turns by database size", medians, next(iter(medians)))
        results.append(("SQLite FULL turn cost, big/small", medians, "<= 1.5x"))

        start = time.perf_counter()
        files, file_per_chat = file_pair(root, small, big_files)
        print(f"\nwrote the record files in {time.perf_counter() - start:.1f} s")
        medians = compare(files, file_ops)
        report("file backend turns by number of record files", medians, next(iter(medians)))
        results.append(("file turn cost, big/small", medians, ""))
    print()
    for what, medians, target in results:
        ratio_line(what, medians, target)
    print(f"SQLite database size: {db_per_chat:.1f} bytes/chat at {big_sqlite:,} chats")
    print(
        f"file backend size: {file_per_chat[0]:.1f} bytes/chat in records,"
        f" {file_per_chat[1]:.0f} bytes/chat allocated, at {big_files:,} chats"
    )


if __name__ == "__main__":
    main()
