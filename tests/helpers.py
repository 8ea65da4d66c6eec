"""Shared test helpers: a seed-only custom manager and small step factories."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager

ROOT = Path(__file__).resolve().parent.parent


class DictSeedManager(StateManager):
    """A user's own manager: only the three seed methods of the original README, no super()."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, dict[str, Any]]] = {}

    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        got = self.data.get(chat_id)
        return None if got is None else (got[0], copy.deepcopy(got[1]))

    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        self.data[chat_id] = (state_id, copy.deepcopy(context))

    def delete_state(self, chat_id: str) -> None:
        self.data.pop(chat_id, None)


def counter_orchestrator(manager: StateManager, sender: MessageSender) -> ChatOrchestrator:
    """One state that increments ``context["n"]``: a lost update shows as a short count."""
    orchestrator = ChatOrchestrator(manager, sender)

    @orchestrator.register_step("start")
    def count(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {"n": context.get("n", 0) + 1}

    return orchestrator


def run_python(
    code_or_path: str | Path,
    *,
    stdin: str = "",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run a script file (Path) or source (str) with this interpreter; output as text."""
    args = (
        [sys.executable, str(code_or_path)]
        if isinstance(code_or_path, Path)
        else [
            sys.executable,
            "-c",
            code_or_path,
        ]
    )
    return subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def run_together(commands: list[list[str]], timeout: float = 600) -> None:
    """Start processes that print ``ready``, release them at once, and expect exit code 0.

    Each waits for a line on stdin before working, so they contend from the first message.
    """
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        for command in commands
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=timeout) == 0
