"""``WhatsAppBot(mode="queue")`` over real HTTP: a POST only stores; workers run the turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook, inbound_message
from chat_orchestrator.errors import StateManagerUnavailableError, StoreCapabilityError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, Served
from tests.whatsapp.graph_standin import fixture_bytes
from tests.whatsapp.payloads import text_batch

Serve = Callable[[WhatsAppBot], Served]


def queued_bot(
    manager: StateManager | None = None, *, step_sleep: float = 0.0
) -> tuple[WhatsAppBot, RecordingSender]:
    sender = RecordingSender()
    orchestrator = ChatOrchestrator(InMemoryStateManager() if manager is None else manager, sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        message = inbound_message()  # rebuilt from the stored event in the worker
        assert message is not None
        time.sleep(step_sleep)
        n = context.get("n", 0) + 1
        sender.send_message(chat_id, f"{n}|{message.kind}|{text}|{message.contact_name}")
        return "start", {"n": n}

    webhook = WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET)
    return WhatsAppBot(orchestrator, webhook, mode="queue"), sender


@pytest.fixture
def running() -> Iterator[Callable[[WhatsAppBot], Worker]]:
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(bot: WhatsAppBot) -> Worker:
        worker = Worker(bot, poll=0.01)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        return worker

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(5)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_a_post_is_stored_and_answered_and_a_worker_runs_it(serve: Serve) -> None:
    bot, sender = queued_bot()
    served = serve(bot)
    response = served.post(fixture_bytes("batch_two_messages.json"))
    assert response.status_code == 200
    assert sender.texts() == []  # nothing ran inside the request
    Worker(bot).drain()
    assert sender.texts() == [
        "1|text|first message (user A)|Test User A",
        "1|text|second message (user B)|Test User B",
    ]


def test_meta_redelivering_every_post_runs_nothing_twice(
    serve: Serve, running: Callable[[WhatsAppBot], Worker]
) -> None:
    bot, sender = queued_bot()
    served = serve(bot)
    running(bot)
    bodies = [text_batch([("15550001", f"wamid.{n}", f"m{n}")]) for n in range(10)]
    for body in bodies + bodies + bodies:
        assert served.post(body).status_code == 200
    wait_for(lambda: len(sender.texts()) >= 10)
    time.sleep(0.2)
    assert sender.texts("15550001") == [f"{n + 1}|text|m{n}|User 15550001" for n in range(10)]


def test_the_ack_never_waits_for_a_slow_step(
    serve: Serve, running: Callable[[WhatsAppBot], Worker]
) -> None:
    bot, sender = queued_bot(step_sleep=1.0)
    served = serve(bot)
    running(bot)
    started = time.monotonic()
    for n in range(3):
        assert served.post(text_batch([("15550002", f"wamid.s{n}", "hi")])).status_code == 200
    assert time.monotonic() - started < 1.0  # three acks, while the first step still sleeps
    wait_for(lambda: len(sender.texts()) == 3)


class _DownPipeline(InMemoryStateManager):
    """A manager whose pipeline store is unreachable (its add raises like a dead server)."""

    def pipeline_store(self) -> Any:
        store = super().pipeline_store()

        def down(*args: object, **kwargs: object) -> list[bool]:
            raise StateManagerUnavailableError("the store is not answering")

        async def down_async(*args: object, **kwargs: object) -> list[bool]:
            down()
            return []

        store.add = down  # type: ignore[method-assign]
        store.add_async = down_async  # type: ignore[method-assign]
        return store


def test_a_post_whose_events_cannot_be_stored_is_answered_503(serve: Serve) -> None:
    bot, sender = queued_bot(_DownPipeline())
    served = serve(bot)
    response = served.post(fixture_bytes("batch_two_messages.json"))
    assert response.status_code == 503
    assert sender.texts() == []


def test_queue_mode_on_a_store_that_cannot_hold_it_fails_when_the_bot_is_built(
    tmp_path: Any,
) -> None:
    with pytest.raises(StoreCapabilityError, match="sqlite"):
        queued_bot(FileStateManager(state_dir=str(tmp_path)))


def test_an_unknown_mode_is_refused() -> None:
    bot, _ = queued_bot()
    with pytest.raises(ValueError, match="mode"):
        WhatsAppBot(bot.orchestrator, bot.webhook, mode="later")
