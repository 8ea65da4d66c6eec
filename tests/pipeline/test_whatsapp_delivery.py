"""The outbox against the Graph API stand-in: WhatsApp's own error codes decide retry or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.whatsapp.graph_standin import GraphStandIn


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    standin = GraphStandIn().start()
    yield standin
    standin.stop()


def replying_bot(graph: GraphStandIn) -> tuple[ChatOrchestrator, WhatsAppSender]:
    sender = WhatsAppSender(graph.token, graph.phone_number_id, base_url=graph.base_url)
    bot = ChatOrchestrator(InMemoryStateManager(), sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        sender.send_message(chat_id, f"re: {text}")
        return "start", {}

    return bot, sender


def texts(graph: GraphStandIn) -> list[str]:
    return [r.body["text"]["body"] for r in graph.received if r.body.get("type") == "text"]


def drain_until(worker: Worker, done: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        worker.drain()
        time.sleep(0.05)


def test_a_permanent_whatsapp_error_is_a_dead_letter_and_the_chat_goes_on(
    graph: GraphStandIn,
) -> None:
    bot, sender = replying_bot(graph)
    graph.respond(400, "error_131026_undeliverable.json")
    store = bot.state_manager.pipeline_store()  # type: ignore[union-attr]
    store.add([Event("m1", "15550001", "one"), Event("m2", "15550001", "two")])
    worker = Worker(bot)
    drain_until(worker, lambda: len(graph.received) >= 2)
    assert texts(graph) == ["re: one", "re: two"]  # tried once each: 131026 is never retried
    [letter] = store.dead_letters()
    assert letter.kind == "send"
    assert "131026" in letter.error
    sender.close()


@pytest.mark.slow
def test_the_pair_rate_limit_pauses_that_chat_and_then_delivers(graph: GraphStandIn) -> None:
    bot, sender = replying_bot(graph)
    graph.respond(400, "error_131056_pair_rate_limit.json")
    store = bot.state_manager.pipeline_store()  # type: ignore[union-attr]
    store.add([Event("m1", "15550002", "one")])
    worker = Worker(bot)
    started = time.monotonic()
    drain_until(worker, lambda: len(graph.received) >= 2)
    elapsed = time.monotonic() - started
    assert texts(graph) == ["re: one", "re: one"]  # refused, then sent after the pause
    assert elapsed >= 5.5  # WhatsApp asks about 6 s between messages to one user
    assert store.dead_letters() == []
    sender.close()


def test_the_worker_sends_through_a_single_try_sender(graph: GraphStandIn) -> None:
    bot, sender = replying_bot(graph)
    for _ in range(3):
        graph.respond(500, {"error": {"message": "down", "code": 1, "is_transient": True}})
    store = bot.state_manager.pipeline_store()  # type: ignore[union-attr]
    store.add([Event("m1", "15550003", "one")])
    worker = Worker(bot, send_backoff=0.01, max_send_backoff=0.05)
    worker.drain()
    # One HTTP attempt per delivery try: the sender's own retries are off in the worker.
    assert len(graph.received) == 1
    drain_until(worker, lambda: texts(graph)[-1:] == ["re: one"] and len(graph.received) == 4)
    assert len(graph.received) == 4
    sender.close()
