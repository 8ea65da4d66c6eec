"""The ``chat-orchestrator`` command.

``chat-orchestrator run TARGET`` chats with a flow in the terminal;
``chat-orchestrator graph TARGET`` prints its Mermaid state diagram. TARGET is
``path/to/file.py:name`` or ``package.module:name`` naming a ChatOrchestrator or a
Conversation subclass.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from chat_orchestrator.conversation import Conversation
from chat_orchestrator.errors import ChatOrchestratorError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.console import ConsoleMessageSender
from chat_orchestrator.state_managers.async_base import require_sync
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager

__all__ = ["chat_loop", "load_target", "main"]


def load_target(target: str) -> object:
    """Import ``file.py:name`` or ``module:name`` and return the named object."""
    location, sep, name = target.rpartition(":")
    if not sep or not location or not name:
        raise SystemExit(f"target must look like file.py:name or module:name, got {target!r}")
    if location.endswith(".py"):
        path = Path(location).resolve()
        spec = importlib.util.spec_from_file_location(f"_chat_target_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"{location} has no attribute {name!r}") from None


def chat_loop(
    orchestrator: ChatOrchestrator,
    chat_id: str = "console_user",
    *,
    stdin: TextIO | None = None,
    prompt: str = "> ",
) -> None:
    """Open a new chat with a ``None`` turn, then one turn per line until ``quit`` or EOF.

    A chat that already has a stored record (file, Redis, MongoDB state) resumes where it was
    instead of being greeted again. A failing turn is reported and the loop goes on: the
    chat's record was left as it was.
    """
    source = stdin if stdin is not None else sys.stdin
    record = require_sync(orchestrator.state_manager).load(chat_id)
    if record is None:
        orchestrator.handle_message(chat_id, None)
    else:
        print(f"(resuming chat {chat_id!r} in state {record.state_id!r})")
    while True:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = source.readline()
        if not line:
            sys.stdout.write("\n")
            return
        text = line.rstrip("\r\n")
        if text.strip().lower() == "quit":
            return
        try:
            orchestrator.handle_message(chat_id, text)
        except ChatOrchestratorError as exc:
            print(f"[error] {exc}", file=sys.stderr)


def _flow(target_name: str) -> ChatOrchestrator | type[Conversation[Any]]:
    target = load_target(target_name)
    if isinstance(target, ChatOrchestrator):
        return target
    if isinstance(target, type) and issubclass(target, Conversation) and hasattr(target, "flow"):
        return target
    raise SystemExit(
        f"{target_name} is a {type(target).__name__}, not a ChatOrchestrator or a Conversation"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-orchestrator", description="Run or draw a flow.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="chat with a flow in the terminal (in-memory state)")
    run.add_argument("target", help="file.py:name or module:name")
    run.add_argument("--chat-id", default="console_user")
    graph = commands.add_parser("graph", help="print the flow's Mermaid state diagram")
    graph.add_argument("target", help="file.py:name or module:name")
    args = parser.parse_args(argv)

    flow = _flow(args.target)
    if args.command == "graph":
        sys.stdout.write(flow.mermaid())
        return 0
    if isinstance(flow, ChatOrchestrator):
        orchestrator = flow
    else:
        orchestrator = flow(InMemoryStateManager(), ConsoleMessageSender()).orchestrator
    chat_loop(orchestrator, args.chat_id)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
