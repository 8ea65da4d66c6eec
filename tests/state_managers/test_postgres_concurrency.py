"""PostgreSQL under contention: processes (sync, async, mixed) and many concurrent async turns.

Every counter must come out exact: the lease serialises turns of one chat across processes,
and the version check refuses any write that would lose one.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from chat_orchestrator.state_managers.postgres import PostgresStateManager
from tests.async_workers import async_counter_orchestrator
from tests.helpers import run_together
from tests.servers import PostgresServer


def _commands(module: str, address: str, count: int, workers: int) -> list[list[str]]:
    return [[sys.executable, "-m", module, "postgres", address, str(count), "1"]] * workers


def _counter(url: str, schema: str, chat_id: str) -> int:
    store = PostgresStateManager(url, schema=schema)
    try:
        state = store.get_state(chat_id)
        assert state is not None, chat_id
        return int(state[1]["n"])
    finally:
        store.close()


@pytest.mark.slow
def test_four_processes_one_chat_lose_nothing(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    address = f"{postgres_server.url}#{postgres_schema}"
    run_together(_commands("tests.workers", address, 250, 4))
    assert _counter(postgres_server.url, postgres_schema, "chat-0") == 1000


@pytest.mark.slow
def test_two_sync_and_two_async_processes_one_chat_lose_nothing(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    address = f"{postgres_server.url}#{postgres_schema}"
    commands = _commands("tests.workers", address, 250, 2)
    commands += _commands("tests.async_workers", address, 250, 2)
    run_together(commands)
    assert _counter(postgres_server.url, postgres_schema, "chat-0") == 1000


@pytest.mark.slow
def test_thousand_chats_five_messages_sixty_four_at_a_time(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    manager = PostgresStateManager(postgres_server.url, schema=postgres_schema, lock_timeout=120)
    bot = async_counter_orchestrator(manager)
    chats = 1000

    async def main() -> None:
        gate = asyncio.Semaphore(64)

        async def one(chat: str) -> None:
            async with gate:
                await bot.handle_message_async(chat, "x")

        # Each round sends every chat one message; the 64 in flight mix chats and rounds.
        await asyncio.gather(*(one(f"chat-{i}") for _ in range(5) for i in range(chats)))
        await manager.close_async()

    asyncio.run(main())
    counts = {info.chat_id: info.version for info in manager.iter_chats()}
    assert len(counts) == chats
    wrong = {
        chat: n
        for chat in counts
        if (n := (manager.get_state(chat) or ("", {"n": 0}))[1]["n"]) != 5
    }
    assert wrong == {}
    manager.close()
