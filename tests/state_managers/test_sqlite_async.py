"""SQLiteStateManager on the async path, with real database files: processes, many chats,
cancellation."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator, run_together

ASYNC_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
    from chat_orchestrator.testing import RecordingSender
    from tests.helpers import counter_orchestrator
    path, count = sys.argv[1], int(sys.argv[2])
    bot = counter_orchestrator(SQLiteStateManager(path, lock_timeout=120), RecordingSender())

    async def main() -> None:
        for _ in range(count):
            await bot.handle_message_async("shared", "tick")

    print("ready", flush=True)
    sys.stdin.readline()  # start together
    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_four_async_processes_one_chat_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteStateManager(path).close()  # the schema exists before the race
    run_together([[sys.executable, "-c", ASYNC_WORKER, str(path), "250"]] * 4, timeout=300)
    record = SQLiteStateManager(path).load("shared")
    assert record is not None
    assert (record.context, record.version) == ({"n": 1000}, 1000)


def test_thousand_chats_five_turns_sixty_four_at_a_time(tmp_path: Path) -> None:
    manager = SQLiteStateManager(tmp_path / "c.db", synchronous="NORMAL")
    bot = counter_orchestrator(manager, RecordingSender())

    async def main() -> None:
        gate = asyncio.Semaphore(64)

        async def one(chat: str) -> None:
            async with gate:
                await bot.handle_message_async(chat, "x")

        await asyncio.gather(*(one(f"chat-{i}") for _ in range(5) for i in range(1000)))

    asyncio.run(main())
    wrong = [i for i in range(1000) if manager.get_state(f"chat-{i}") != ("start", {"n": 5})]
    assert wrong == []
    record = manager.load("chat-7")
    assert record is not None
    assert record.version == 5


def test_a_step_cancelled_mid_turn_leaves_the_record_and_frees_the_chat_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    manager = SQLiteStateManager(path, lock_lease=30)  # a leaked lease would last 30 s
    other = SQLiteStateManager(path, lock_lease=30, lock_timeout=0.5)  # another worker
    bot = ChatOrchestrator(manager, RecordingSender())
    never = asyncio.Event()

    @bot.register_step("start")
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "hang":
            await never.wait()  # an LLM call that does not answer
        return "start", {"n": context.get("n", 0) + 1}

    async def main() -> None:
        await bot.handle_message_async("c", "x")
        for chat_id in ("c", "new"):
            before = manager.load(chat_id)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await bot.handle_message_async(chat_id, "hang")
            started = time.monotonic()
            turn = other.begin_turn(chat_id)  # a sync worker elsewhere: the lease is gone
            turn.close()
            assert time.monotonic() - started < 0.5
            assert manager.load(chat_id) == before
            task = asyncio.create_task(bot.handle_message_async(chat_id, "hang"))
            await asyncio.sleep(0.1)
            task.cancel()  # a client gone
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(0.5):
                await bot.handle_message_async(chat_id, "x")  # runs at once
        assert manager.get_state("c") == ("start", {"n": 2})
        assert manager.get_state("new") == ("start", {"n": 1})

    asyncio.run(main())
