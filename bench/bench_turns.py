"""TurnLease cost of the built-in local backends against raw loops doing the bare minimum.

Run by hand: ``uv run python bench/bench_turns.py`` (add ``--quick`` for a smoke run).
Targets (issue 2): in-memory turn cost <= 3x one json.dumps+json.loads of the context;
durable file turns >= 0.8x the throughput of a raw read/tmp-write/fsync/rename/dir-fsync loop.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare, report
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender

CONTEXT: dict[str, Any] = {"name": "Bob", "age": 42, "step": 3, "tags": ["a", "b"], "ok": True}


def trivial_orchestrator(manager: StateManager) -> ChatOrchestrator:
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context  # trivial work; the 5-key context goes round every turn

    manager.set_state("bench", "start", CONTEXT)
    return orchestrator


def bench_memory(ops: int) -> dict[str, float]:
    orchestrator = trivial_orchestrator(InMemoryStateManager())

    def raw_json() -> object:
        return json.loads(json.dumps(CONTEXT))

    medians = compare(
        {
            "json.dumps+json.loads of the context": raw_json,
            "InMemoryStateManager handle_message": lambda: orchestrator.handle_message(
                "bench", "hi"
            ),
        },
        ops,
    )
    report("in-memory turn vs one JSON round trip", medians, "json.dumps+json.loads of the context")
    return medians


def bench_file(ops: int, root: Path) -> dict[str, float]:
    manager = FileStateManager(state_dir=root / "managed")
    orchestrator = trivial_orchestrator(manager)
    raw_dir = root / "raw"
    raw_dir.mkdir()
    raw_path = raw_dir / "bench.json"
    raw_path.write_text(json.dumps({"state_id": "start", "context": CONTEXT}))

    def raw_loop() -> None:
        record = json.loads(raw_path.read_bytes())
        tmp = raw_dir / ".bench.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, raw_path)
        dir_fd = os.open(raw_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    medians = compare(
        {
            "raw read+tmp write+fsync+rename+dir fsync": raw_loop,
            "FileStateManager handle_message": lambda: orchestrator.handle_message("bench", "hi"),
        },
        ops,
    )
    report(
        "durable file turn vs raw durable loop",
        medians,
        "raw read+tmp write+fsync+rename+dir fsync",
    )
    return medians


def main() -> None:
    quick = "--quick" in sys.argv
    memory = bench_memory(2_000 if quick else 50_000)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        file = bench_file(50 if quick else 1_000, Path(root))
    mem_ratio = (
        memory["InMemoryStateManager handle_message"]
        / memory["json.dumps+json.loads of the context"]
    )
    file_ratio = (
        file["raw read+tmp write+fsync+rename+dir fsync"] / file["FileStateManager handle_message"]
    )
    print(f"\nin-memory turn cost: {mem_ratio:.2f}x a JSON round trip (target <= 3x)")
    print(f"file turn throughput: {file_ratio:.2f}x the raw durable loop (target >= 0.8x)")


if __name__ == "__main__":
    main()
