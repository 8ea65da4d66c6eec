"""A Redis worker process: ``python -m tests.state_managers.redis_async_worker MODE URL N CHATS``.

MODE is ``sync`` (``handle_message`` in a loop) or ``async`` (``handle_message_async`` on one
event loop, an ``async def`` step). Prints ``ready``, waits for a line on stdin (so all workers
start together), then sends N counter messages spread over CHATS chats.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers.redis import RedisStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator


def async_counter(manager: RedisStateManager) -> ChatOrchestrator:
    """``counter_orchestrator`` with an ``async def`` step: the native async path end to end."""
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    async def count(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {"n": context.get("n", 0) + 1}

    return orchestrator


async def run_async(manager: RedisStateManager, count: int, chats: int) -> None:
    orchestrator = async_counter(manager)
    for index in range(count):
        await orchestrator.handle_message_async(f"chat-{index % chats}", "tick")
    await manager.close_async()


def main() -> None:
    mode, url, count, chats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    manager = RedisStateManager(url=url, lock_timeout=120)
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "async":
        asyncio.run(run_async(manager, count, chats))
        return
    orchestrator = counter_orchestrator(manager, RecordingSender())
    for index in range(count):
        orchestrator.handle_message(f"chat-{index % chats}", "tick")


if __name__ == "__main__":
    main()
