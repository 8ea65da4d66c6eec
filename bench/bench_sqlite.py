"""Durable SQLite turns against durable file turns, same run, same disk, as ratios.

Run by hand: ``uv run python bench/bench_sqlite.py`` (``--quick`` for a smoke run; the
directory is ``$BENCH_DIR`` or the system temp dir: put it on the disk you care about).
Targets (issue 11): ``synchronous=FULL`` >= 5x the throughput of the file backend with fsync;
``synchronous=NORMAL`` >= 20x. The raw floor beside them is one read and one conditional write
per turn in bare sqlite3 (one fsync at FULL), no lease: the least a durable turn can cost.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare, report
from bench_turns import CONTEXT, trivial_orchestrator
from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

FILE = "FileStateManager (fsync) handle_message"
FULL = "SQLite synchronous=FULL handle_message"
NORMAL = "SQLite synchronous=NORMAL handle_message"
RAW_FULL = "raw sqlite3 read+write, FULL"
RAW_NORMAL = "raw sqlite3 read+write, NORMAL"


def raw_turn(path: Path, synchronous: str) -> Callable[[], object]:
    """The floor: read the record and write it back conditionally, one fsync at FULL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, s TEXT, c TEXT, v INTEGER)")
    db.execute("INSERT INTO t VALUES ('bench', 'start', ?, 1)", (encode_context(CONTEXT),))

    def turn() -> object:
        s, c, v = db.execute("SELECT s, c, v FROM t WHERE id = 'bench'").fetchone()
        return db.execute(
            "UPDATE t SET s = ?, c = ?, v = v + 1 WHERE id = 'bench' AND v = ?", (s, c, v)
        )

    return turn


def main() -> None:
    quick = "--quick" in sys.argv
    ops = 30 if quick else 400
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        file = trivial_orchestrator(FileStateManager(root / "files"))
        full = trivial_orchestrator(SQLiteStateManager(root / "full.db"))
        normal = trivial_orchestrator(SQLiteStateManager(root / "normal.db", synchronous="NORMAL"))
        medians = compare(
            {
                FILE: lambda: file.handle_message("bench", "hi"),
                FULL: lambda: full.handle_message("bench", "hi"),
                NORMAL: lambda: normal.handle_message("bench", "hi"),
                RAW_FULL: raw_turn(root / "raw-full.db", "FULL"),
                RAW_NORMAL: raw_turn(root / "raw-normal.db", "NORMAL"),
            },
            ops,
        )
    report("durable turns: SQLite against the file backend", medians, FILE)
    print(f"\nSQLite FULL throughput:   {medians[FILE] / medians[FULL]:6.2f}x file (target >= 5x)")
    print(f"SQLite NORMAL throughput: {medians[FILE] / medians[NORMAL]:6.2f}x file (target >= 20x)")
    print(f"SQLite FULL turn cost:    {medians[FULL] / medians[RAW_FULL]:6.2f}x the raw floor")
    print(f"SQLite NORMAL turn cost:  {medians[NORMAL] / medians[RAW_NORMAL]:6.2f}x the raw floor")


if __name__ == "__main__":
    main()
