"""A hostile reviewer's findings: each test failed on the code it was written against."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator, RecordingSender
from chat_orchestrator.errors import ContextSerializationError
from chat_orchestrator.pipeline.section import PIPELINE_KEY
from chat_orchestrator.pipeline.worker import Worker, WorkerSettings
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

FAST = WorkerSettings(
    backoff=0.0, max_backoff=0.0, send_backoff=0.0, max_send_backoff=0.0, max_attempts=2
)


@pytest.fixture(params=["memory", "sqlite"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateManager]:
    built: StateManager = (
        InMemoryStateManager()
        if request.param == "memory"
        else SQLiteStateManager(tmp_path / "chats.db", lock_lease=5)
    )
    yield built
    built.close()


def _nested(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def test_direct_turn_cannot_store_the_reserved_pipeline_key(manager: StateManager) -> None:
    # Break: handle_message stored a step's "__pipeline__" as is when the chat had no section
    # yet; the next worker pass then read it as the pipeline's own and delivered a forged
    # outbox, here a message to another chat.
    sender = RecordingSender()
    bot = ChatOrchestrator(manager, sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", {PIPELINE_KEY: {"out": [{"n": 1, "c": "victim", "t": "forged"}]}}

    with pytest.raises(ContextSerializationError):
        bot.handle_message("c", "hi")
    with pytest.raises(ContextSerializationError):
        asyncio.run(bot.handle_message_async("c", "hi"))
    assert manager.get_state("c") is None
    manager.pipeline_store().schedule("c", 0)
    Worker(bot, settings=FAST).drain(max_passes=5)
    assert [m.text for m in sender.sent] == []
