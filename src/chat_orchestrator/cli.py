"""The ``chat-orchestrator`` command.

``chat-orchestrator run TARGET`` chats with a flow in the terminal;
``chat-orchestrator graph TARGET [-o FILE]`` prints (or writes) its Mermaid state diagram;
``chat-orchestrator chats list|show|set|reset|export|import --store URL`` are the operator
tools (``_cli_chats``); ``chat-orchestrator telegram poll TARGET`` and ``telegram webhook
set URL | delete`` serve a TelegramBot (``_cli_telegram``). ``run`` and ``chats`` take
``--store URL`` or ``$CHAT_STORE``.
TARGET is ``path/to/file.py:name`` or ``package.module:name`` naming a ChatOrchestrator, a
Conversation subclass or a Conversation instance; modules are found in the current directory
first, as uvicorn and flask find theirs. Mistakes in the command line (a missing file or module,
a bad chat id) are one line on stderr and exit code 2; a failing flow or store exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO, TypeAlias

from chat_orchestrator._cli_chats import (
    UsageError,
    add_chats_command,
    open_cli_store,
    run_chats_command,
    store_argument,
)
from chat_orchestrator._cli_pipeline import add_pipeline_commands
from chat_orchestrator._cli_store import add_store_command
from chat_orchestrator._cli_telegram import add_telegram_command
from chat_orchestrator.conversation import Conversation
from chat_orchestrator.errors import ChatOrchestratorError, InvalidChatIdError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.console import (
    ConsoleMessage,
    ConsoleMessageSender,
    LastMessages,
    resolve_choice,
)
from chat_orchestrator.state_managers.async_base import require_sync
from chat_orchestrator.state_managers.base import StateManager, validate_chat_id
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager

__all__ = [
    "CANONICAL_LINE_LIMIT",
    "TargetError",
    "chat_loop",
    "load_flow",
    "load_target",
    "main",
]

logger = logging.getLogger(__name__)

#: The longest line a terminal in canonical mode passes on (Linux: 4096 bytes with the
#: newline); the rest is dropped silently. readline reads keys itself and has no such limit.
CANONICAL_LINE_LIMIT = 4095

#: Exit status after Ctrl-C, as a shell reports a process killed by SIGINT.
INTERRUPTED = 130

Flow: TypeAlias = ChatOrchestrator | type[Conversation[Any]] | Conversation[Any]


class TargetError(Exception):
    """The command line names nothing runnable; the message is one line for the user."""


def load_target(target: str) -> object:
    """Import ``file.py:name`` or ``module:name`` and return the named object."""
    location, sep, name = target.rpartition(":")
    if not sep or not location or not name:
        raise TargetError(f"target must look like file.py:name or module:name, got {target!r}")
    _search_current_directory()
    module = _load_file(Path(location)) if location.endswith(".py") else _import(location)
    try:
        return getattr(module, name)
    except AttributeError:
        raise TargetError(f"{location} has no attribute {name!r}") from None


def _search_current_directory() -> None:
    # A console script's sys.path starts with its bin directory, not the current one.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TargetError(f"no such file: {str(path)!r}")
    resolved = path.resolve()
    spec = importlib.util.spec_from_file_location(f"_chat_target_{resolved.stem}", resolved)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic look their module up
    spec.loader.exec_module(module)
    return module


def _import(location: str) -> ModuleType:
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        # Only the target itself is a command-line mistake; a module the target imports that
        # is missing is the target's own bug and keeps its traceback.
        if exc.name is None or not (location == exc.name or location.startswith(exc.name + ".")):
            raise
        raise TargetError(
            f"no module named {location!r} (looked in the current directory and on sys.path)"
        ) from None


def load_flow(target_name: str) -> Flow:
    """The ChatOrchestrator or Conversation a target names; TargetError for anything else."""
    target = load_target(target_name)
    if isinstance(target, ChatOrchestrator | Conversation):
        return target
    if isinstance(target, type) and issubclass(target, Conversation) and hasattr(target, "flow"):
        return target
    raise TargetError(
        f"{target_name} is a {type(target).__name__}, not a ChatOrchestrator or a Conversation"
    )


def _console_orchestrator(
    flow: Flow, state_dir: str | None, store: StateManager | None = None
) -> ChatOrchestrator:
    """The flow's orchestrator replying on the console, on ``store`` or ``state_dir`` files."""
    manager: StateManager | None = FileStateManager(state_dir) if state_dir else store
    if isinstance(flow, type):
        return flow(manager or InMemoryStateManager(), ConsoleMessageSender()).orchestrator
    orchestrator = flow if isinstance(flow, ChatOrchestrator) else flow.orchestrator
    if manager is not None:
        orchestrator.state_manager = manager
    if not isinstance(orchestrator.sender, ConsoleMessageSender):
        orchestrator.sender = ConsoleMessageSender()  # "run" talks to this terminal only
    return orchestrator


# -- the console loop --------------------------------------------------------------------------
class _LineReader:
    """Reads the user's lines: with readline's editing and history on a terminal."""

    def __init__(self, stdin: TextIO | None, prompt: str) -> None:
        self.stdin = stdin
        self.prompt = prompt
        self.terminal = stdin is None and sys.stdin.isatty() and sys.stdout.isatty()
        self.editing = self.terminal and _enable_readline()

    def banner(self) -> str:
        text = "(type quit or press Ctrl-D to leave"
        if self.terminal and not self.editing:
            text += f"; lines over {CANONICAL_LINE_LIMIT} characters are cut by the terminal"
        return text + ")"

    def __call__(self) -> str | None:
        """The next line without its line ending, or None at end of input."""
        if self.stdin is not None:
            sys.stdout.write(self.prompt)
            sys.stdout.flush()
            line = self.stdin.readline()
            return line.rstrip("\r\n") if line else None
        try:
            return input(self.prompt).rstrip("\r")  # input() uses readline once imported
        except EOFError:
            return None


def _enable_readline() -> bool:
    try:
        import readline  # noqa: F401 - importing it gives input() line editing and history
    except ImportError:
        return False
    return True


def _remembered(manager: StateManager) -> LastMessages | None:
    """Where a durable store's chats keep their last messages: beside the records."""
    if isinstance(manager, FileStateManager):
        return LastMessages(manager.state_dir / ".console")
    return None


def chat_loop(
    orchestrator: ChatOrchestrator,
    chat_id: str = "console_user",
    *,
    stdin: TextIO | None = None,
    prompt: str = "> ",
) -> int:
    """Open a new chat with a ``None`` turn, then one turn per line until ``quit`` or EOF.

    A chat that already has a stored record resumes where it was: nothing is run again, and
    the messages of its last turn (kept beside a FileStateManager's records) are shown again.
    A numbered choice can be answered by its number or title. A failing turn is reported and
    the loop goes on (the chat's record was left as it was). Ctrl-C ends the loop with one
    line. Returns the exit status: 0, or 130 after Ctrl-C.
    """
    validate_chat_id(chat_id)
    sender = orchestrator.sender if isinstance(orchestrator.sender, ConsoleMessageSender) else None
    remembered = _remembered(require_sync(orchestrator.state_manager))
    read = _LineReader(stdin, prompt)
    try:
        print(read.banner())
        record = require_sync(orchestrator.state_manager).load(chat_id)
        if record is None:
            waiting = _turn(orchestrator, sender, chat_id, None, remembered, [])
        else:
            waiting = remembered.load(chat_id, record.version) if remembered else []
            _show_resumed(sender, chat_id, record.state_id, waiting)
        while True:
            line = read()
            if line is None:
                sys.stdout.write("\n")
                return 0
            if line.strip().lower() == "quit":
                return 0
            text = resolve_choice(line, waiting)
            waiting = _turn(orchestrator, sender, chat_id, text, remembered, waiting)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        print("interrupted: the chat is kept where it was", file=sys.stderr)
        return INTERRUPTED


def _turn(
    orchestrator: ChatOrchestrator,
    sender: ConsoleMessageSender | None,
    chat_id: str,
    text: str | None,
    remembered: LastMessages | None,
    waiting: list[ConsoleMessage],
) -> list[ConsoleMessage]:
    """Run one turn; returns the messages the chat now waits on (the old ones if none came)."""
    if sender is not None:
        sender.begin_turn(chat_id)
    try:
        orchestrator.handle_message(chat_id, text)
    except ChatOrchestratorError as exc:
        print(f"[error] {exc}", file=sys.stderr)
        return waiting  # nothing was stored: the chat still waits on the same question
    sent = sender.turn_messages(chat_id) if sender is not None else []
    waiting = sent or waiting  # a turn that said nothing leaves the last question on screen
    if remembered is not None:
        try:
            record = require_sync(orchestrator.state_manager).load(chat_id)
            if record is not None:
                remembered.save(chat_id, waiting, record.version)
        except (OSError, ChatOrchestratorError) as exc:  # a convenience: the turn is stored
            logger.warning("could not keep the last messages for a resume: %s", exc)
    return waiting


def _show_resumed(
    sender: ConsoleMessageSender | None,
    chat_id: str,
    state_id: str,
    waiting: list[ConsoleMessage],
) -> None:
    if not waiting or sender is None:
        print(f"(resuming chat {chat_id!r} at step {state_id!r}: type your answer)")
        return
    print(f"(resuming chat {chat_id!r}; the last message was:)")
    for message in waiting:
        sender.show(message)


# -- the command ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-orchestrator", description="Run or draw a flow; inspect and move its chats."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="chat with a flow in the terminal")
    run.add_argument("target", help="file.py:name or module:name")
    run.add_argument("--chat-id", default="console_user")
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep each chat's place in files in DIR (resumed on the next run)",
    )
    store_argument(run)
    add_chats_command(commands)
    add_pipeline_commands(commands)
    add_telegram_command(commands)
    add_store_command(commands)
    graph = commands.add_parser("graph", help="print the flow's Mermaid state diagram")
    graph.add_argument("target", help="file.py:name or module:name")
    graph.add_argument("-o", "--output", metavar="FILE", help="write the diagram to FILE")
    return parser


def _run_command(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)  # subcommands defined in their own modules
    if handler is not None:
        return int(handler(args))
    if args.command == "chats":
        return run_chats_command(args)
    if args.command == "graph":
        # Whatever the target module prints on import goes to stderr, not into the diagram.
        with contextlib.redirect_stdout(sys.stderr):
            flow = load_flow(args.target)
        diagram = flow.mermaid()
        if args.output is None:
            sys.stdout.write(diagram)
            return 0
        try:
            Path(args.output).write_text(diagram, encoding="utf-8")
        except OSError as exc:
            print(f"chat-orchestrator: error: cannot write {args.output!r}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        validate_chat_id(args.chat_id)
    except InvalidChatIdError as exc:
        raise TargetError(f"--chat-id: {exc}") from None
    if args.state_dir and args.store:
        raise TargetError("give --state-dir or --store, not both")
    flow = load_flow(args.target)
    store = None if args.state_dir else open_cli_store(args.store, required=False)
    orchestrator = _console_orchestrator(flow, args.state_dir, store)
    return chat_loop(orchestrator, args.chat_id)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        print("\nchat-orchestrator: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (TargetError, UsageError) as exc:
        print(f"chat-orchestrator: error: {exc}", file=sys.stderr)
        return 2
    except ChatOrchestratorError as exc:
        print(f"chat-orchestrator: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
