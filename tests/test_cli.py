"""The chat-orchestrator command: graph and run, as a user runs them from their own directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from examples.onboarding import Onboarding

from tests.console_driver import Terminal, read_until
from tests.helpers import ROOT, run_python

GREETING = (ROOT / "examples" / "greeting_bot.py").read_text(encoding="utf-8")
BANNER = "(type quit or press Ctrl-D to leave)\n"


def exe() -> str:
    found = shutil.which("chat-orchestrator")
    assert found is not None, "the console script is installed by the package"
    return found


def cli(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def edges(diagram: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s+(\S+) --> (\S+)$", diagram, re.M))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's directory holding their bot modules, nothing installed."""
    shutil.copy(ROOT / "examples" / "onboarding.py", tmp_path / "onboarding_bot.py")
    (tmp_path / "greeting.py").write_text(GREETING, encoding="utf-8")
    return tmp_path


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
        "from chat_orchestrator import ChatOrchestrator, ConsoleMessageSender\n"
        "from chat_orchestrator import InMemoryStateManager\n"
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
    assert "note" not in result.stdout


def test_graph_of_undeclared_steps_shows_every_state_with_a_note(project: Path) -> None:
    result = cli("graph", "greeting:orchestrator", cwd=project)
    assert result.returncode == 0, result.stderr
    notes = re.findall(r"^    note right of (\S+) : (.*)$", result.stdout, re.M)
    assert notes == [
        ("start", "no to= declared: may go to any state"),
        ("get_name", "no to= declared: may go to any state"),
    ]


def test_modules_are_found_in_the_current_directory(project: Path) -> None:
    graph = cli("graph", "onboarding_bot:Onboarding", cwd=project)
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout == Onboarding.mermaid()
    run = cli("run", "greeting:orchestrator", cwd=project, stdin="Bob\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == BANNER + "Hello! What's your name?\n> Nice to meet you, Bob!\n> \n"


def test_graph_accepts_a_conversation_instance(project: Path) -> None:
    (project / "instance.py").write_text(
        "from chat_orchestrator import InMemoryStateManager, RecordingSender\n"
        "from onboarding_bot import Onboarding\n"
        "bot = Onboarding(InMemoryStateManager(), RecordingSender())\n"
    )
    result = cli("graph", "instance:bot", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == Onboarding.mermaid()


def test_graph_output_file_is_only_the_diagram(project: Path) -> None:
    (project / "noisy.py").write_text(
        "print('loading the noisy bot')\nfrom onboarding_bot import Onboarding\n"
    )
    written = cli("graph", "noisy:Onboarding", "-o", "flow.mmd", cwd=project)
    assert written.returncode == 0, written.stderr
    assert (project / "flow.mmd").read_text(encoding="utf-8") == Onboarding.mermaid()
    assert written.stdout == ""
    printed = cli("graph", "noisy:Onboarding", cwd=project)
    assert printed.stdout == Onboarding.mermaid()  # the module's print went to stderr
    assert "loading the noisy bot" in printed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py:bot"], "no such file: 'missing.py'"),
        (["graph", "missing_module:bot"], "no module named 'missing_module'"),
        (["run", "pkg_missing.sub:bot"], "no module named 'pkg_missing.sub'"),
        (["graph", "greeting:nothing"], "greeting has no attribute 'nothing'"),
        (["graph", "greeting"], "target must look like file.py:name or module:name"),
        (["graph", "greeting:state_dir"], "is a NoneType, not a ChatOrchestrator"),
        (["run", "greeting:orchestrator", "--chat-id", ""], "--chat-id: chat id must not"),
        (["run", "greeting:orchestrator", "--chat-id", os.fsdecode(b"\xff")], "--chat-id:"),
    ],
)
def test_command_line_mistakes_are_one_line(project: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [exe(), *args],
        capture_output=True,
        cwd=project,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"},
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1
    assert stderr.startswith("chat-orchestrator: error: ")
    assert message in stderr


@pytest.mark.parametrize("target", ["onboarding_bot:Onboarding", "greeting:orchestrator"])
def test_run_with_a_state_dir_resumes_and_repeats_the_last_question(
    project: Path, target: str
) -> None:
    args = ("run", target, "--state-dir", "states")
    first = cli(*args, stdin="Ada\n", cwd=project)
    assert first.returncode == 0, first.stderr
    # A new process: the chat is where it was, and the question it waits on is shown again.
    second = cli(*args, stdin="", cwd=project)
    assert second.returncode == 0, second.stderr
    last = first.stdout.split("> ")[-2].strip()
    assert last in {"Nice to meet you, Ada! How old are you?", "Nice to meet you, Ada!"}
    if target.startswith("greeting"):  # that flow's last turn went back to "start"
        assert second.stdout.startswith(BANNER + "(resuming chat 'console_user'")
        return
    assert second.stdout == (
        BANNER + "(resuming chat 'console_user'; the last message was:)\n" + last + "\n> \n"
    )
    third = cli(*args, stdin="30\n", cwd=project)
    assert "So you are Ada, 30 years old." in third.stdout
    assert "  1. Yes\n  2. No\n" in third.stdout
    fourth = cli(*args, stdin="1\n", cwd=project)  # the buttons came back with the question
    assert "  1. Yes\n  2. No\n> All set, Ada. Welcome aboard!" in fourth.stdout


def test_a_chat_moved_on_elsewhere_is_resumed_in_words(project: Path) -> None:
    args = ("run", "onboarding_bot:Onboarding", "--state-dir", "states")
    assert cli(*args, stdin="Ada\n", cwd=project).returncode == 0
    # Another channel answers for the same chat in the same store.
    elsewhere = run_python(
        "from chat_orchestrator import FileStateManager, RecordingSender\n"
        "from onboarding_bot import Onboarding\n"
        "bot = Onboarding(FileStateManager('states'), RecordingSender())\n"
        "bot.handle_message('console_user', '30')\n",
        cwd=project,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    resumed = cli(*args, cwd=project)
    assert resumed.stdout == (
        BANNER + "(resuming chat 'console_user' at step 'confirm': type your answer)\n> \n"
    )


def test_numbered_buttons_answer_by_number_or_title() -> None:
    by_number = cli("run", "examples/onboarding.py:Onboarding", stdin="Ada\n30\n1\n")
    assert by_number.stdout.endswith("> All set, Ada. Welcome aboard!\n> \n")
    by_title = cli("run", "examples/onboarding.py:Onboarding", stdin="Ada\n30\nNO\n")
    assert by_title.stdout.endswith("> Let's start over. What's your name?\n> \n")
    out_of_range = cli("run", "examples/onboarding.py:Onboarding", stdin="Ada\n30\n3\n")
    assert out_of_range.stdout.endswith("> Please answer yes or no.\n> \n")


def test_run_a_conversation_class_in_the_console() -> None:
    result = cli("run", "examples/onboarding.py:Onboarding", stdin="Ada\nquit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        BANNER + "Hi! What's your name?\n> Nice to meet you, Ada! How old are you?\n> "
    )


@pytest.mark.parametrize(
    "command",
    [
        [exe(), "run", "examples/onboarding.py:Onboarding"],
        [sys.executable, "examples/greeting_bot.py"],
        [sys.executable, "examples/onboarding.py"],
    ],
    ids=["cli", "greeting_bot", "onboarding"],
)
def test_ctrl_c_ends_the_chat_with_one_line(command: list[str]) -> None:
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    read_until(proc.stdout.fileno(), b"> ")  # waiting for the user's line
    # The prompt is written just before the read starts; a signal landing in between is only
    # seen at the next one (CPython's input()), so let the child reach its read, as a user would.
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    stderr = proc.stderr.read().decode()
    assert stderr == "interrupted: the chat is kept where it was\n"
    proc.stdout.close()
    proc.stderr.close()
    if proc.stdin is not None:
        proc.stdin.close()


def test_terminal_has_line_editing_and_no_line_limit() -> None:
    name = b"a" * 4999 + b"z"  # longer than a terminal line in canonical mode (4,095)
    with Terminal([exe(), "run", "examples/onboarding.py:Onboarding"], cwd=ROOT) as terminal:
        terminal.expect(b"Ctrl-D to leave)")
        terminal.expect(b"> ")
        terminal.type(name + b"\r")
        terminal.expect(b"Nice to meet you, " + name + b"! How old are you?")
        terminal.expect(b"> ")
        terminal.type(b"3\x1b[D1\r")  # "3", Left arrow, "1": an editing terminal reads "13"
        terminal.expect(b"So you are " + name + b", 13 years old.")
        terminal.expect(b"> ")
        terminal.type(b"\x1b[A\x7f\x7f1\r")  # Up recalls "13"; two backspaces; "1": button 1
        terminal.expect(b"All set, ")
        terminal.expect(b"> ")
        terminal.type(b"\x04")  # Ctrl-D leaves
        assert terminal.wait() == 0


def test_without_readline_the_line_limit_is_stated() -> None:
    code = (
        "import sys; sys.modules['readline'] = None\n"  # as on a Python built without it
        "from chat_orchestrator.cli import main\n"
        "raise SystemExit(main(['run', 'examples/onboarding.py:Onboarding']))\n"
    )
    with Terminal([sys.executable, "-c", code], cwd=ROOT) as terminal:
        terminal.expect(
            b"(type quit or press Ctrl-D to leave; lines over 4095 characters are cut by the "
            b"terminal)"
        )
        terminal.expect(b"> ")
        terminal.type(b"\x04")
        assert terminal.wait() == 0
