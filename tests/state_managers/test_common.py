"""Behaviour every backend shares (run once per backend via the ``manager`` fixture)."""

from __future__ import annotations

from typing import Any

import pytest

from chat_orchestrator.errors import VersionConflictError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator

HOSTILE_IDS = [
    "../../etc/passwd",
    "a/b",
    "..",
    ".",
    "/",
    "\x00",
    "a\x00b",
    "x" * 10_000,
    "ünï😀",
    "CON",
    "con",
    "Con.txt",
    "UPPER",
    "upper",
    "{a}",
    "a:b",
    "*",
    " ",
    "with spaces ",
    "$where",
    '{"$ne": null}',
    "e\u0301",  # decomposed é ...
    "\u00e9",  # ... and the composed one: different ids, different chats
]


def hostile_ids(manager: StateManager) -> list[str]:
    """The hostile ids ``manager`` must store (a store that refuses NUL is tested for the
    refusal in its own tests)."""
    return [i for i in HOSTILE_IDS if manager.stores_nul or "\x00" not in i]


def test_hostile_ids_round_trip_and_never_collide(manager: StateManager) -> None:
    for index, chat_id in enumerate(hostile_ids(manager)):
        manager.set_state(chat_id, f"s{index}", {"id": chat_id})
    for index, chat_id in enumerate(hostile_ids(manager)):
        assert manager.get_state(chat_id) == (f"s{index}", {"id": chat_id}), repr(chat_id)
    manager.delete_state("CON")
    assert manager.get_state("CON") is None
    index = hostile_ids(manager).index("con")
    assert manager.get_state("con") == (f"s{index}", {"id": "con"})


def test_hostile_ids_through_turns(manager: StateManager) -> None:
    orchestrator = counter_orchestrator(manager, RecordingSender())
    for _ in range(2):
        for chat_id in hostile_ids(manager):
            orchestrator.handle_message(chat_id, None)
    for chat_id in hostile_ids(manager):
        record = manager.load(chat_id)
        assert record is not None
        assert record.context == {"n": 2}, repr(chat_id)


def test_conditional_write_rejects_a_stale_version(manager: StateManager) -> None:
    v1 = manager.save("c", "a", {"n": 1}, expected_version=0)
    with pytest.raises(VersionConflictError):
        manager.save("c", "b", {"n": 2}, expected_version=0)
    v2 = manager.save("c", "b", {"n": 2}, expected_version=v1)
    assert v2 != v1
    with pytest.raises(VersionConflictError):
        manager.save("c", "stale", {"n": 3}, expected_version=v1)
    record = manager.load("c")
    assert record is not None
    assert (record.state_id, record.context, record.version) == ("b", {"n": 2}, v2)


def test_a_write_during_a_turn_makes_the_turn_fail(manager: StateManager) -> None:
    """Even when locks are bypassed, the version check keeps the other write."""
    sender = RecordingSender()
    orchestrator = ChatOrchestrator(manager, sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if text == "interfere":
            # Another writer that does not take the chat's lock (an expired lease, say).
            manager.compare_and_set(chat_id, "start", {"by": 2}, expected_version=record_version())
        return "start", {"by": 1}

    def record_version() -> int:
        record = manager.load("c")
        return 0 if record is None else record.version

    orchestrator.handle_message("c", None)
    with pytest.raises(VersionConflictError):
        orchestrator.handle_message("c", "interfere")
    assert manager.get_state("c") == ("start", {"by": 2})


def test_delete_of_a_missing_chat_is_fine(manager: StateManager) -> None:
    manager.delete_state("nobody")
    assert manager.load("nobody") is None


def test_claims_are_once_only_per_key(manager: StateManager) -> None:
    assert manager.claim("wa:1:wamid.A", 3600) is True
    assert manager.claim("wa:1:wamid.A", 3600) is False
    assert manager.claim("wa:1:wamid.B", 3600) is True
    assert manager.claim("{weird}:key/../x", 3600) is True
    assert manager.claim("{weird}:key/../x", 3600) is False


def test_an_expired_claim_can_be_taken_again(manager: StateManager) -> None:
    import time

    assert manager.claim("short", 0.05) is True
    time.sleep(0.15)
    assert manager.claim("short", 3600) is True
    assert manager.claim("short", 3600) is False
