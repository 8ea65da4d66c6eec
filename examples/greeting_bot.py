"""The greeting bot of the original README, in the terminal.

Run it with ``uv run examples/greeting_bot.py``; type a name, then ``quit`` to leave.
Keep each chat's place across restarts with ``--store URL`` or ``CHAT_STORE`` (for example
``sqlite:///chats.db``), or in files with ``CHAT_STATE_DIR``; the default is memory.
"""

import os
import sys
from collections.abc import Sequence

from chat_orchestrator.cli import chat_loop
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.console import ConsoleMessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.stores import open_store, store_url


def greeting_orchestrator(state_manager: StateManager, sender: MessageSender) -> ChatOrchestrator:
    """The README's two steps on any state manager and any channel."""
    orchestrator = ChatOrchestrator(state_manager, sender)

    @orchestrator.register_step("start")
    def start_step(
        chat_id: str, user_input: str | None, context: dict[str, object], sender: MessageSender
    ) -> tuple[str, dict[str, object]]:
        sender.send_message(chat_id, "Hello! What's your name?")
        return "get_name", {}

    @orchestrator.register_step("get_name")
    def get_name_step(
        chat_id: str, user_input: str | None, context: dict[str, object], sender: MessageSender
    ) -> tuple[str, dict[str, object]]:
        sender.send_message(chat_id, f"Nice to meet you, {user_input}!")
        return "start", {}

    return orchestrator


state_dir = os.environ.get("CHAT_STATE_DIR")


def state_manager_from_env(argv: Sequence[str] = ()) -> StateManager:
    """``--store URL`` in ``argv``, else ``$CHAT_STORE``, else files in ``$CHAT_STATE_DIR``,
    else memory."""
    url = store_url(argv, default="")
    if url:
        return open_store(url)
    return FileStateManager(state_dir=state_dir) if state_dir else InMemoryStateManager()


orchestrator = greeting_orchestrator(state_manager_from_env(), ConsoleMessageSender())


if __name__ == "__main__":
    orchestrator.state_manager = state_manager_from_env(sys.argv[1:])
    raise SystemExit(chat_loop(orchestrator, "console_user"))
