"""The async path against the sync path of the same engine.

Run by hand: ``uv run python bench/bench_async.py`` (``--quick`` for a smoke run).
Target (issue 10): in-memory, one task, an async turn (``async def`` step awaited by
``handle_message_async``) costs at most 1.3x a sync turn (``def`` step, ``handle_message``).
Each contender runs batches of turns, interleaved, so both share the machine's noise.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare, report
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender

CONTEXT: dict[str, Any] = {"name": "Bob", "age": 42, "step": 3, "tags": ["a", "b"], "ok": True}
BATCH = 1_000


def memory_orchestrators() -> tuple[ChatOrchestrator, ChatOrchestrator]:
    sync_bot = ChatOrchestrator(InMemoryStateManager(), RecordingSender())
    async_bot = ChatOrchestrator(InMemoryStateManager(), RecordingSender())

    @sync_bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    @async_bot.register_step("start")
    async def astart(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    for bot in (sync_bot, async_bot):
        manager = bot.state_manager
        assert isinstance(manager, InMemoryStateManager)
        manager.set_state("bench", "start", CONTEXT)
    return sync_bot, async_bot


def bench_memory(batches: int) -> float:
    sync_bot, async_bot = memory_orchestrators()
    loop = asyncio.new_event_loop()

    def sync_batch() -> None:
        for _ in range(BATCH):
            sync_bot.handle_message("bench", "hi")

    async def turns() -> None:
        for _ in range(BATCH):
            await async_bot.handle_message_async("bench", "hi")

    def async_batch() -> None:
        loop.run_until_complete(turns())

    medians = compare(
        {"sync turn (def step)": sync_batch, "async turn (async def step)": async_batch}, batches
    )
    loop.close()
    per_turn = {name: seconds / BATCH for name, seconds in medians.items()}
    report("in-memory, one task: async turn vs sync turn", per_turn, "sync turn (def step)")
    return per_turn["async turn (async def step)"] / per_turn["sync turn (def step)"]


def main() -> None:
    quick = "--quick" in sys.argv
    ratio = bench_memory(2 if quick else 20)
    print(f"\nin-memory async turn cost: {ratio:.2f}x a sync turn (target <= 1.3x)")


if __name__ == "__main__":
    main()
