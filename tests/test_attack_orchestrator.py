"""Attacks on the decorator API's definitions that once got through to every turn."""

from __future__ import annotations

from typing import Any

import pytest

from chat_orchestrator import ChatOrchestrator, InMemoryStateManager, InvalidStateIdError
from chat_orchestrator.testing import RecordingSender


@pytest.mark.parametrize("state_id", ["x" * 1_025, "bad\ud800"], ids=["too-long", "surrogate"])
def test_a_state_no_store_can_hold_is_refused_when_registered(state_id: str) -> None:
    # Before: registered and validated fine; then every turn ran the step, sent its reply
    # and failed with InvalidStateIdError when storing, so the chat could never move on.
    sender = RecordingSender()
    orchestrator = ChatOrchestrator(InMemoryStateManager(), sender, initial_state=state_id)

    def step(
        chat_id: str, text: Any, context: dict[str, Any], out: Any
    ) -> tuple[str, dict[str, Any]]:
        out.send_message(chat_id, "sent")
        return state_id, {}

    with pytest.raises(InvalidStateIdError):
        orchestrator.register_step(state_id)(step)
    with pytest.raises(InvalidStateIdError):
        orchestrator.add_step(state_id, step)
    assert sender.texts("c") == []


def test_the_longest_storable_state_is_still_accepted() -> None:
    orchestrator = ChatOrchestrator(
        InMemoryStateManager(), RecordingSender(), initial_state="s" * 1_024
    )
    orchestrator.add_step("s" * 1_024, lambda c, t, ctx, out: ("s" * 1_024, {"n": 1}))
    assert orchestrator.handle_message("c", "hi") == "s" * 1_024
