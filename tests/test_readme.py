"""What a new user does first: paste the README example, run the greeting bot."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT, run_python


def readme_block(marker: str) -> str:
    """The first ```python block after ``marker`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(marker)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match is not None, f"no python block after {marker!r}"
    return match.group(1)


def test_readme_original_example_runs_unchanged(tmp_path: Path) -> None:
    code = readme_block("<!-- original-example -->")
    assert 'orchestrator.handle_message("console_user", "Bob")' in code
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello! What's your name?", "Nice to meet you, Bob!"]


def test_readme_example_with_file_state_remembers_across_restarts(tmp_path: Path) -> None:
    code = readme_block("<!-- original-example -->")
    swapped = code.replace(
        "from chat_orchestrator.state_managers.inmemory import InMemoryStateManager",
        "from chat_orchestrator.state_managers.file import FileStateManager",
    ).replace("InMemoryStateManager()", 'FileStateManager(state_dir="my_chat_states")')
    first_turn_only = swapped.replace('orchestrator.handle_message("console_user", "Bob")', "")
    second_turn_only = swapped.replace('orchestrator.handle_message("console_user", None)', "")

    first = run_python(first_turn_only, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["Hello! What's your name?"]
    # A new process: only the files know the chat is waiting for a name.
    second = run_python(second_turn_only, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["Nice to meet you, Bob!"]
    assert len(list((tmp_path / "my_chat_states").glob("*.json"))) == 1


BANNER = "(type quit or press Ctrl-D to leave)\n"


def test_greeting_bot_example_transcript() -> None:
    result = run_python(ROOT / "examples" / "greeting_bot.py", stdin="Bob\nAlice\nquit\nnever\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == BANNER + (
        "Hello! What's your name?\n> Nice to meet you, Bob!\n> Hello! What's your name?\n> "
    )


def test_greeting_bot_example_with_state_dir_resumes(tmp_path: Path) -> None:
    env = {"CHAT_STATE_DIR": str(tmp_path / "states")}
    script = ROOT / "examples" / "greeting_bot.py"
    first = run_python(script, stdin="quit\n", env=env)
    assert first.stdout == BANNER + "Hello! What's your name?\n> "
    # A new process resumes the stored chat: no second greeting, and the question it waits on
    # is shown again.
    second = run_python(script, stdin="Bob\nquit\n", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == BANNER + (
        "(resuming chat 'console_user'; the last message was:)\n"
        "Hello! What's your name?\n> Nice to meet you, Bob!\n> "
    )


def test_readme_class_api_example_runs_as_written(tmp_path: Path) -> None:
    code = readme_block("<!-- class-api-example -->")
    assert "from chat_orchestrator import " in code  # the short imports
    for used in ("context_of(", "state_of(", "reset(", "mermaid("):
        assert used in code
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "Hi! What's your name?",
        "Nice to meet you, Ada! How old are you?",
        "stateDiagram-v2",
    ]
    assert "    got_age --> done" in lines


def test_readme_tester_example_runs_with_several_chats(tmp_path: Path) -> None:
    code = readme_block("<!-- class-api-example -->") + readme_block("<!-- tester-example -->")
    assert "state_manager=tester.state_manager" in code
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_readme_async_example_runs_as_written(tmp_path: Path) -> None:
    code = readme_block("<!-- async-example -->")
    assert "handle_message_async" in code
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
