"""The worker from a user's side: events in, turns once, replies after the commit, timers.

Every test runs on each store that holds the pipeline (``PIPELINE_BACKENDS``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator, RecordingSender
from chat_orchestrator.errors import SenderError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.scope import cancel_timer, current_event, schedule_timer
from chat_orchestrator.pipeline.section import PIPELINE_KEY
from chat_orchestrator.pipeline.worker import Worker, WorkerSettings
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from tests.pipeline.conftest import PipeFactory

FAST = WorkerSettings(backoff=0.01, max_backoff=0.02, send_backoff=0.01, max_send_backoff=0.02)


def counter_bot(manager: StateManager, sender: MessageSender | None = None) -> ChatOrchestrator:
    """Counts each chat's messages and echoes ``n:text``; special texts fail or set timers."""
    orchestrator = ChatOrchestrator(manager, sender or RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        event = current_event()
        if text == "boom":
            raise RuntimeError("the step failed")
        n = context.get("n", 0) + 1
        label = "timer" if event is not None and event.is_timer else text
        sender.send_message(chat_id, f"{n}:{label}")
        if text == "remind":
            schedule_timer("nudge", after=0.2)
        if text == "remind-unbound":
            schedule_timer("nudge", after=0.2, bound=False)
        if text == "cancel":
            cancel_timer("nudge")
        if text == "move":
            return "elsewhere", {"n": n}
        return "start", {"n": n, "seen": [*context.get("seen", []), label]}

    @orchestrator.register_step("elsewhere")
    def elsewhere(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, f"elsewhere:{text}")
        return "start", context

    return orchestrator


def msgs(chat: str, *texts: str, prefix: str = "m") -> list[Event]:
    return [Event(f"{prefix}:{chat}:{i}", chat, text) for i, text in enumerate(texts)]


def sent_texts(sender: Any, chat: str | None = None) -> list[str]:
    return list(sender.texts(chat))


def test_events_run_once_in_order_and_replies_go_out_after_the_commit(
    pipe_manager: StateManager,
) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "a", "b", "c"))
    store.add(msgs("c2", "x"))
    assert sender.texts() == []  # storing runs nothing
    outcome = Worker(bot, settings=FAST).drain()
    assert (outcome.turns, outcome.sent) == (4, 4)
    assert sent_texts(sender, "c1") == ["1:a", "2:b", "3:c"]
    assert sent_texts(sender, "c2") == ["1:x"]
    record = pipe_manager.load("c1")
    assert record is not None
    assert record.context["seen"] == ["a", "b", "c"]
    # Redelivered: nothing runs twice.
    store.add(msgs("c1", "a", "b", "c"))
    assert Worker(bot).drain().turns == 0
    assert sent_texts(sender, "c1") == ["1:a", "2:b", "3:c"]


def test_the_step_never_sees_the_pipeline_section(pipe_manager: StateManager) -> None:
    seen: list[dict[str, Any]] = []
    bot = ChatOrchestrator(pipe_manager, RecordingSender())

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        seen.append(dict(context))
        sender.send_message(chat_id, "hi")
        if current_event() is not None:  # in a worker (direct turns have no timers)
            schedule_timer("t", after=60)
        return "start", {"k": text}

    pipe_manager.pipeline_store().add(msgs("c1", "a", "b"))
    Worker(bot).drain()
    assert seen == [{}, {"k": "a"}]
    # A direct turn keeps the section (the pending timer) too.
    bot.handle_message("c1", "direct")
    record = pipe_manager.load("c1")
    assert record is not None
    assert "t" in record.context[PIPELINE_KEY]["timers"]
    assert seen[-1] == {"k": "b"}


def test_a_failing_step_is_retried_then_parked_and_the_chat_goes_on(
    pipe_manager: StateManager,
) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "boom", "after"))
    worker = Worker(bot, max_attempts=3, settings=FAST)
    deadline = time.time() + 10
    while time.time() < deadline and sent_texts(sender, "c1") != ["1:after"]:
        worker.drain()
        time.sleep(0.02)
    assert sent_texts(sender, "c1") == ["1:after"]  # the failed turn sent nothing
    assert worker.outcome.failed == 3
    assert worker.outcome.parked == 1
    [letter] = store.dead_letters()
    assert letter.kind == "event"
    assert letter.chat_id == "c1"
    assert "the step failed" in letter.error
    assert Event.from_json(letter.body).user_input == "boom"


def test_a_failed_try_leaves_the_state_as_it_was(pipe_manager: StateManager) -> None:
    bot = counter_bot(pipe_manager)
    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "a"))
    Worker(bot).drain()
    before = pipe_manager.load("c1")
    store.add(msgs("c1", "boom", prefix="b"))
    Worker(bot, max_attempts=5, backoff=60).drain()
    after = pipe_manager.load("c1")
    assert before is not None
    assert after is not None
    assert after.state_id == before.state_id
    assert {k: v for k, v in after.context.items() if k != PIPELINE_KEY} == {
        k: v for k, v in before.context.items() if k != PIPELINE_KEY
    }
    assert after.context[PIPELINE_KEY]["fail"]["r"] == 1


class FlakySender(MessageSender):
    """Fails ``failures`` times (transient or permanent), then records like RecordingSender."""

    def __init__(self, failures: int, *, permanent: bool = False) -> None:
        self.failures = failures
        self.permanent = permanent
        self.tries = 0
        self.inner = RecordingSender()

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        self.tries += 1
        if self.failures > 0:
            self.failures -= 1
            error = SenderError("the channel is down")
            error.permanent = self.permanent
            raise error
        return self.inner.send_message(chat_id, text, options)

    def texts(self, chat_id: str | None = None) -> list[str]:
        return self.inner.texts(chat_id)


def test_transient_send_errors_are_retried_in_order_and_never_undo_the_turn(
    pipe_manager: StateManager,
) -> None:
    sender = FlakySender(3)
    bot = counter_bot(pipe_manager, sender)
    pipe_manager.pipeline_store().add(msgs("c1", "a", "b"))
    worker = Worker(bot, settings=FAST)
    deadline = time.time() + 10
    while time.time() < deadline and len(sender.texts()) < 2:
        worker.drain()
        time.sleep(0.02)
    assert sender.texts("c1") == ["1:a", "2:b"]
    record = pipe_manager.load("c1")
    assert record is not None
    assert record.context["n"] == 2


def test_a_permanent_send_error_is_a_dead_letter_and_the_next_reply_goes(
    pipe_manager: StateManager,
) -> None:
    sender = FlakySender(1, permanent=True)
    bot = counter_bot(pipe_manager, sender)
    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "a", "b"))
    Worker(bot, settings=FAST).drain()
    assert sender.texts("c1") == ["2:b"]
    [letter] = store.dead_letters()
    assert letter.kind == "send"
    assert "the channel is down" in letter.error
    assert '"1:a"' in letter.body


def test_a_timer_fires_once_as_a_timer_event(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    pipe_manager.pipeline_store().add(msgs("c1", "remind"))
    worker = Worker(bot)
    worker.drain()
    assert sender.texts("c1") == ["1:remind"]
    worker.drain()
    assert sender.texts("c1") == ["1:remind"]  # not due yet
    time.sleep(0.3)
    worker.drain()
    worker.drain()
    assert sender.texts("c1") == ["1:remind", "2:timer"]


def test_a_bound_timer_is_dropped_when_the_chat_moved_on(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "remind", "move"))
    worker = Worker(bot)
    worker.drain()
    time.sleep(0.3)
    worker.drain()
    assert sender.texts("c1") == ["1:remind", "2:move"]
    record = pipe_manager.load("c1")
    assert record is not None
    assert record.state_id == "elsewhere"


def test_an_unbound_timer_fires_wherever_the_chat_is(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    pipe_manager.pipeline_store().add(msgs("c1", "remind-unbound", "move"))
    worker = Worker(bot)
    worker.drain()
    time.sleep(0.3)
    worker.drain()
    assert sender.texts("c1") == ["1:remind-unbound", "2:move", "elsewhere:None"]


def test_a_cancelled_timer_never_fires(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    bot = counter_bot(pipe_manager, sender)
    pipe_manager.pipeline_store().add(msgs("c1", "remind", "cancel"))
    worker = Worker(bot)
    worker.drain()
    time.sleep(0.3)
    worker.drain()
    assert sender.texts("c1") == ["1:remind", "2:cancel"]


def test_threads_and_tasks_share_the_work_and_run_each_event_once(
    pipe_factory: PipeFactory,
) -> None:
    manager = pipe_factory()
    sender = RecordingSender()
    bot = counter_bot(manager, sender)
    store = manager.pipeline_store()
    for chat in range(10):
        store.add(msgs(f"c{chat}", *[str(i) for i in range(5)]))
    stop = threading.Event()
    threaded = Worker(bot, name="threads")
    runner = threading.Thread(target=threaded.run, args=(stop,), kwargs={"threads": 3})
    runner.start()

    async def tasks() -> None:
        worker = Worker(counter_bot(pipe_factory(), sender), name="tasks")
        done = asyncio.Event()

        async def watch() -> None:
            while len(sender.texts()) < 50:
                await asyncio.sleep(0.02)
            done.set()

        await asyncio.wait_for(asyncio.gather(worker.run_async(done, tasks=3), watch()), 30)

    asyncio.run(tasks())
    stop.set()
    runner.join(10)
    for chat in range(10):
        assert sender.texts(f"c{chat}") == [f"{i + 1}:{i}" for i in range(5)]


def test_async_steps_run_on_the_async_worker(pipe_manager: StateManager) -> None:
    sender = RecordingSender()
    bot = ChatOrchestrator(pipe_manager, sender)

    @bot.register_step("start")
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: Any
    ) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(0)
        await sender.send_message(chat_id, f"async:{text}")
        if text is not None:  # the timer's own turn sets no new one
            schedule_timer("t", after=0.01)
        return "start", {}

    pipe_manager.pipeline_store().add(msgs("c1", "a"))

    async def main() -> None:
        worker = Worker(bot)
        await worker.drain_async()
        await asyncio.sleep(0.05)
        await worker.drain_async()

    asyncio.run(main())
    assert sender.texts("c1") == ["async:a", "async:None"]


def test_timers_outside_a_worker_are_a_clear_error(pipe_manager: StateManager) -> None:
    from chat_orchestrator.errors import PipelineError, StepError

    bot = counter_bot(pipe_manager)
    with pytest.raises(StepError) as caught:
        bot.handle_message("c1", "remind")
    assert isinstance(caught.value.__cause__, PipelineError)
    assert pipe_manager.load("c1") is None


def test_a_step_longer_than_the_work_lease_keeps_its_chat(pipe_manager: StateManager) -> None:
    started = threading.Event()
    bot = ChatOrchestrator(pipe_manager, RecordingSender())

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        started.set()
        time.sleep(1.0)  # three leases long: the worker's renewer must keep the chat
        return "start", {"n": context.get("n", 0) + 1}

    store = pipe_manager.pipeline_store()
    store.add(msgs("c1", "slow"))
    worker = Worker(bot, lease=0.3)
    runner = threading.Thread(target=worker.drain)
    runner.start()
    assert started.wait(5)
    stolen = []
    while runner.is_alive():
        taken = store.take("intruder", 0.3)
        if taken is not None:
            stolen.append(taken)
        time.sleep(0.05)
    runner.join()
    assert stolen == []
    record = pipe_manager.load("c1")
    assert record is not None
    assert record.context["n"] == 1
