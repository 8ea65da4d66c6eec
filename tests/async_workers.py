"""An async worker process: ``python -m tests.async_workers KIND ADDRESS N CHATS``.

The twin of :mod:`tests.workers` on the async path: the same managers (``make_manager``), the
same ``ready``/go handshake, N counter turns over CHATS chats, each awaited with
``handle_message_async`` through an ``async def`` step on one event loop.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.testing import RecordingSender
from tests.workers import make_manager


def async_counter_orchestrator(manager: StateManager) -> ChatOrchestrator:
    """``tests.helpers.counter_orchestrator`` with an ``async def`` step that yields once."""
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start", to=["start"])
    async def count(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(0)  # other tasks (and processes) interleave inside the turn
        return "start", {"n": context.get("n", 0) + 1}

    return orchestrator


async def serve(orchestrator: ChatOrchestrator, count: int, chats: int) -> None:
    for index in range(count):
        await orchestrator.handle_message_async(f"chat-{index % chats}", "tick")


def main() -> None:
    kind, address, count, chats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    manager = make_manager(kind, address)
    orchestrator = async_counter_orchestrator(manager)
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(serve(orchestrator, count, chats))


if __name__ == "__main__":
    main()
