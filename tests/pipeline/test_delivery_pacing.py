"""The delivery loop's limits: messages per second per worker, time between two per chat."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator
from chat_orchestrator.errors import SenderError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.outbox import RateLimiter, classify
from chat_orchestrator.pipeline.worker import Worker, WorkerSettings
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager


class ClockSender(MessageSender):
    def __init__(self) -> None:
        self.at: list[tuple[str, float]] = []

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        self.at.append((chat_id, time.monotonic()))
        return None


def chatty_bot(replies: int) -> tuple[ChatOrchestrator, ClockSender]:
    sender = ClockSender()
    bot = ChatOrchestrator(InMemoryStateManager(), sender)

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        for n in range(replies):
            sender.send_message(chat_id, f"reply {n}")
        return "start", {}

    return bot, sender


def test_the_rate_caps_messages_per_second() -> None:
    bot, sender = chatty_bot(1)
    store = bot.state_manager.pipeline_store()  # type: ignore[union-attr]
    for chat in range(30):
        store.add([Event(f"m{chat}", f"c{chat}", "hi")])
    Worker(bot, rate=50.0).drain()
    times = [at for _, at in sender.at]
    assert len(times) == 30
    assert times[-1] - times[0] >= 29 / 50 * 0.95  # 30 sends at 50/s take >= 0.58 s


def test_the_per_chat_interval_spaces_one_chats_messages() -> None:
    bot, sender = chatty_bot(3)
    store = bot.state_manager.pipeline_store()  # type: ignore[union-attr]
    store.add([Event("m", "c1", "hi")])
    worker = Worker(bot, per_chat_interval=0.2, rate=None)
    deadline = time.monotonic() + 5
    while len(sender.at) < 3 and time.monotonic() < deadline:
        worker.drain()
        time.sleep(0.01)
    times = [at for _, at in sender.at]
    assert len(times) == 3
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.19


@dataclass(frozen=True)
class Pacing:
    per_chat_interval: float
    per_second: float


class PacedSender(ClockSender):
    pacing = Pacing(0.5, 7.0)


def test_a_senders_declared_pacing_sets_the_defaults() -> None:
    bot = ChatOrchestrator(InMemoryStateManager(), PacedSender())
    worker = Worker(bot)
    assert (worker.settings.per_chat_interval, worker.settings.rate) == (0.5, 7.0)
    assert Worker(bot, rate=3.0).settings.rate == 3.0


def test_failures_are_classified_once() -> None:
    transient = SenderError("502")
    assert classify(transient, 1, 0.5, 60).permanent is False
    assert classify(transient, 3, 0.5, 60).delay == 2.0
    assert classify(transient, 30, 0.5, 60).delay == 60
    permanent = SenderError("blocked")
    permanent.permanent = True
    assert classify(permanent, 1, 0.5, 60).permanent
    paced = SenderError("pair rate limit")
    paced.retry_after = 6.0
    assert classify(paced, 1, 0.5, 60).delay == 6.0
    assert not classify(RuntimeError("bug"), 1, 0.5, 60).permanent  # never dropped silently


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "80", True])
def test_bad_rates_are_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        RateLimiter(bad)


@pytest.mark.parametrize(
    "field", ["lease", "batch", "max_attempts", "backoff", "rate", "per_chat_interval"]
)
@pytest.mark.parametrize("bad", [-1, float("inf"), "5", None])
def test_bad_worker_settings_are_refused(field: str, bad: Any) -> None:
    if field == "rate" and bad is None:
        WorkerSettings(rate=None)  # no cap: allowed
        return
    with pytest.raises((ValueError, TypeError)):
        WorkerSettings(**{field: bad})
