"""The async path of the one engine: async steps and states, mixed flows, guarantees."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import (
    ContextSerializationError,
    ContextValidationError,
    StateManagerError,
    StepError,
    TransitionError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender
from chat_orchestrator.state_managers.async_base import AsyncStateManager
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender


class AsyncRecordingSender(AsyncMessageSender):
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        await asyncio.sleep(0)
        self.sent.append((chat_id, text))
        return f"m{len(self.sent)}"


def counting_flow(manager: StateManager | AsyncStateManager) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, RecordingSender())

    @bot.register_step("start", to=["start"])
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(0)  # a real await inside the turn: other tasks interleave here
        return "start", {"n": context.get("n", 0) + 1}

    return bot


# -- a user's side: the decorator API ------------------------------------------------------------
def test_mixed_sync_and_async_steps_on_both_paths() -> None:
    sender = RecordingSender()
    bot = ChatOrchestrator(InMemoryStateManager(), sender)

    @bot.register_step("start", to=["name"])
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await sender.send_message(chat_id, "What's your name?")
        return "name", {}

    @bot.register_step("name", to=["start"])
    def name(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, f"Hi {text}")
        return "start", {"name": text}

    async def main() -> None:
        assert await bot.handle_message_async("c", None) == "name"
        assert await bot.handle_message_async("c", "Ann") == "start"

    asyncio.run(main())
    # The sync path runs the same flow, async step included.
    assert bot.handle_message("d", None) == "name"
    assert bot.handle_message("d", "Bo") == "start"
    assert [m.text for m in sender.sent] == [
        "What's your name?",
        "Hi Ann",
        "What's your name?",
        "Hi Bo",
    ]


def test_async_sender_serves_sync_and_async_steps() -> None:
    sender = AsyncRecordingSender()
    bot = ChatOrchestrator(InMemoryStateManager(), sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, "from a thread")  # a blocking face of the async sender
        return "next", {}

    @bot.register_step("next")
    async def next_(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await sender.send_message(chat_id, "awaited")
        return "start", {}

    async def main() -> None:
        await bot.handle_message_async("c", None)
        await bot.handle_message_async("c", "x")

    asyncio.run(main())
    assert sender.sent == [("c", "from a thread"), ("c", "awaited")]


def test_sync_step_on_the_async_path_does_not_block_the_loop() -> None:
    bot = ChatOrchestrator(InMemoryStateManager(), RecordingSender())

    @bot.register_step("start")
    def slow(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        time.sleep(0.3)  # blocking I/O of a plain def step
        return "start", {"thread": threading.current_thread().name}

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await bot.handle_message_async("c", None)
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running during the 0.3 s step
    record = bot.state_manager.load("c")  # type: ignore[union-attr]
    assert record is not None
    assert record.context["thread"] != threading.main_thread().name


def test_async_step_errors_leave_the_record_and_release_the_chat() -> None:
    manager = InMemoryStateManager(lock_timeout=1.0)
    bot = ChatOrchestrator(manager, RecordingSender())
    mode: dict[str, str] = {"m": "ok"}

    @bot.register_step("start", to=["start"])
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        if mode["m"] == "raise":
            raise KeyError("boom")
        if mode["m"] == "sleep":
            await asyncio.sleep(10)
        if mode["m"] == "bad-target":
            return "elsewhere", {}
        if mode["m"] == "bad-context":
            return "start", {"x": {1, 2}}
        return "start", {"n": context.get("n", 0) + 1}

    async def main() -> None:
        await bot.handle_message_async("c", None)
        before = manager.load("c")
        mode["m"] = "raise"
        with pytest.raises(StepError) as raised:
            await bot.handle_message_async("c", "x")
        assert isinstance(raised.value.__cause__, KeyError)
        mode["m"] = "bad-target"
        with pytest.raises(TransitionError):
            await bot.handle_message_async("c", "x")
        mode["m"] = "bad-context"
        with pytest.raises(ContextSerializationError):
            await bot.handle_message_async("c", "x")
        mode["m"] = "sleep"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await bot.handle_message_async("c", "x")
        task = asyncio.create_task(bot.handle_message_async("c", "x"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert manager.load("c") == before
        # Released at once: the next turn does not wait for the 1 s lock timeout.
        mode["m"] = "ok"
        started = time.monotonic()
        await bot.handle_message_async("c", "x")
        assert time.monotonic() - started < 0.5

    asyncio.run(main())
    record = manager.load("c")
    assert record is not None
    assert record.context == {"n": 2}


def test_eight_tasks_two_hundred_messages_one_chat() -> None:
    bot = counting_flow(InMemoryStateManager())

    async def main() -> None:
        async def worker() -> None:
            for _ in range(200):
                await bot.handle_message_async("one", "x")

        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())
    record = bot.state_manager.load("one")  # type: ignore[union-attr]
    assert record is not None
    assert record.context == {"n": 1600}


def test_thousand_chats_five_messages_sixty_four_at_a_time() -> None:
    bot = counting_flow(InMemoryStateManager())

    async def main() -> None:
        gate = asyncio.Semaphore(64)

        async def one(chat: str) -> None:
            async with gate:
                await bot.handle_message_async(chat, "x")

        jobs = [one(f"chat-{i}") for _ in range(5) for i in range(1000)]
        await asyncio.gather(*jobs)

    asyncio.run(main())
    manager = bot.state_manager
    assert isinstance(manager, InMemoryStateManager)
    counts = {}
    for i in range(1000):
        record = manager.load(f"chat-{i}")
        counts[i] = None if record is None else record.context["n"]
    assert set(counts.values()) == {5}


def test_sync_and_async_turns_of_one_process_serialize_together() -> None:
    bot = counting_flow(InMemoryStateManager())

    def sync_worker() -> None:
        for _ in range(100):
            bot.handle_message("one", "x")

    async def main() -> None:
        threads = [threading.Thread(target=sync_worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        await asyncio.gather(*(_loop(bot, 100) for _ in range(2)))
        for thread in threads:
            await asyncio.to_thread(thread.join)

    asyncio.run(main())
    record = bot.state_manager.load("one")  # type: ignore[union-attr]
    assert record is not None
    assert record.context == {"n": 400}


async def _loop(bot: ChatOrchestrator, count: int) -> None:
    for _ in range(count):
        await bot.handle_message_async("one", "x")


# -- a user's own managers ------------------------------------------------------------------------
class DictAsyncManager(AsyncStateManager):
    """Only the three async seed methods, as a user would write over an async driver."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, dict[str, Any]]] = {}

    async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        got = self.data.get(chat_id)
        return None if got is None else (got[0], dict(got[1]))

    async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.data[chat_id] = (state_id, dict(context))

    async def delete_state(self, chat_id: str) -> None:
        self.data.pop(chat_id, None)


class DictSyncManager(StateManager):
    def __init__(self) -> None:
        self.data: dict[str, tuple[str, dict[str, Any]]] = {}

    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        got = self.data.get(chat_id)
        return None if got is None else (got[0], dict(got[1]))

    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        self.data[chat_id] = (state_id, dict(context))

    def delete_state(self, chat_id: str) -> None:
        self.data.pop(chat_id, None)


@pytest.mark.parametrize("manager_type", [DictAsyncManager, DictSyncManager])
def test_seed_only_managers_serve_the_async_path(manager_type: type[Any]) -> None:
    manager = manager_type()
    bot = counting_flow(manager)

    async def main() -> None:
        await asyncio.gather(*(_loop(bot, 50) for _ in range(8)))
        await bot.reset_async("gone")

    asyncio.run(main())
    assert manager.data["one"] == ("start", {"n": 400})


def test_async_manager_on_the_sync_path_is_a_clear_error() -> None:
    bot = counting_flow(DictAsyncManager())
    with pytest.raises(StateManagerError, match="handle_message_async"):
        bot.handle_message("c", None)


def test_async_step_inside_a_running_loop_on_the_sync_path_is_a_clear_error() -> None:
    bot = counting_flow(InMemoryStateManager())

    async def main() -> None:
        with pytest.raises(StepError, match="handle_message_async"):
            bot.handle_message("c", None)

    asyncio.run(main())
    assert bot.state_manager.load("c") is None  # type: ignore[union-attr]


# -- the class API ------------------------------------------------------------------------------
class Signup(BaseModel):
    name: str | None = None
    age: int | None = None


class Onboarding(Conversation[Signup]):
    @state(initial=True)
    async def ask_name(self, turn: Turn[Signup]) -> Literal["ask_age"]:
        await turn.send_async("What's your name?")
        return "ask_age"

    @state
    def ask_age(self, turn: Turn[Signup]) -> Literal["ask_age", "done"]:
        if turn.text is None or not turn.text.isdigit():
            turn.send("A number, please")
            return "ask_age"
        turn.context.age = int(turn.text)
        return "done"

    @state(final=True)
    async def done(self, turn: Turn[Signup]) -> Literal["done"]:
        turn.context.age = "old"  # type: ignore[assignment]  # refused: not an int
        return "done"


def test_class_api_mixes_async_and_sync_states() -> None:
    sender = AsyncRecordingSender()
    flow = Onboarding(InMemoryStateManager(), sender)
    assert "ask_name" in Onboarding.mermaid()

    async def main() -> None:
        assert await flow.handle_message_async("c", None) == "ask_age"
        assert await flow.handle_message_async("c", "x") == "ask_age"
        assert await flow.handle_message_async("c", "41") == "done"
        assert (await flow.context_of_async("c")) == Signup(age=41)
        with pytest.raises(ContextValidationError):
            await flow.handle_message_async("c", "again")
        assert await flow.state_of_async("c") == "done"
        await flow.reset_async("c")
        assert await flow.state_of_async("c") is None

    asyncio.run(main())
    assert [text for _, text in sender.sent] == ["What's your name?", "A number, please"]


def test_turn_send_names_the_right_spelling() -> None:
    class Wrong(Conversation[Signup]):
        @state(initial=True, final=True)
        async def only(self, turn: Turn[Signup]) -> Literal["only"]:
            turn.send("sync send in an async state")
            return "only"

    flow = Wrong(InMemoryStateManager(), RecordingSender())
    with pytest.raises(StepError, match="send_async"):
        asyncio.run(flow.handle_message_async("c", None))
