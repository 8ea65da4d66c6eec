"""InMemoryStateManager under threads."""

from __future__ import annotations

import sys
import threading
from typing import Any

from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator


def test_eight_threads_one_chat_lose_no_update() -> None:
    manager = InMemoryStateManager()
    orchestrator = counter_orchestrator(manager, RecordingSender())
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(200):
                orchestrator.handle_message("shared", "tick")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force the GIL to switch often, to expose races
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert manager.get_state("shared") == ("start", {"n": 1600})
    assert len(manager._locks) == 0  # per-chat locks are dropped when free


def test_different_chats_are_not_serialized_behind_one_lock() -> None:
    """Chat A's step waits until chat B has finished a whole turn: one global lock deadlocks."""
    manager = InMemoryStateManager(lock_timeout=5)
    orchestrator = ChatOrchestrator(manager, RecordingSender())
    a_inside, b_done = threading.Event(), threading.Event()
    a_saw_b: list[bool] = []

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if chat_id == "A":
            a_inside.set()
            a_saw_b.append(b_done.wait(timeout=5))
        return "start", {}

    thread_a = threading.Thread(target=orchestrator.handle_message, args=("A", None))
    thread_a.start()
    assert a_inside.wait(timeout=5)  # A holds its chat's lock and is inside its step
    orchestrator.handle_message("B", None)
    b_done.set()
    thread_a.join()
    assert a_saw_b == [True]
