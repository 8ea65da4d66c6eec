"""The chat-orchestrator command: graph and run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from examples.onboarding import Onboarding

from tests.helpers import ROOT


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chat-orchestrator")
    assert exe is not None, "the console script is installed by the package"
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def edges(diagram: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s+(\S+) --> (\S+)$", diagram, re.M))


def test_graph_of_a_conversation_has_every_state_and_edge() -> None:
    result = cli("graph", "examples/onboarding.py:Onboarding")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stateDiagram-v2\n")
    expected = {("[*]", "ask_name"), ("done", "[*]")}
    for name, spec in Onboarding.flow.states.items():
        expected |= {(name, target) for target in spec.targets or () if not spec.final}
    assert edges(result.stdout) == expected
    assert ("confirm", "got_name") in expected  # the restart edge is drawn
    assert set(Onboarding.flow.states) == {"ask_name", "got_name", "got_age", "confirm", "done"}


def test_graph_of_a_decorator_orchestrator(tmp_path: Path) -> None:
    module = tmp_path / "menu_bot.py"
    module.write_text(
        "from chat_orchestrator.orchestrator import ChatOrchestrator\n"
        "from chat_orchestrator.senders.console import ConsoleMessageSender\n"
        "from chat_orchestrator.state_managers.inmemory import InMemoryStateManager\n"
        "orchestrator = ChatOrchestrator(InMemoryStateManager(), ConsoleMessageSender())\n"
        "@orchestrator.register_step('start', to=['menu'])\n"
        "def start(c, t, x, s):\n    return 'menu', {}\n"
        "@orchestrator.register_step('menu', to=['start', 'order-pizza'])\n"
        "def menu(c, t, x, s):\n    return 'start', {}\n"
        "@orchestrator.register_step('order-pizza', to=['start'])\n"
        "def pizza(c, t, x, s):\n    return 'start', {}\n"
    )
    result = cli("graph", f"{module}:orchestrator")
    assert result.returncode == 0, result.stderr
    assert 'state "order-pizza" as s2' in result.stdout
    assert edges(result.stdout) == {
        ("[*]", "start"),
        ("start", "menu"),
        ("menu", "start"),
        ("menu", "s2"),
        ("s2", "start"),
    }


def test_run_a_conversation_class_in_the_console() -> None:
    result = cli("run", "examples/onboarding.py:Onboarding", stdin="Ada\nquit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hi! What's your name?\n> Nice to meet you, Ada! How old are you?\n> "


def test_bad_target_is_a_clear_message() -> None:
    result = cli("graph", "examples/onboarding.py:Signup")
    assert result.returncode != 0
    assert "not a ChatOrchestrator or a Conversation" in result.stderr
