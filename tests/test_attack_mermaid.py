"""Attacks on the Mermaid drawing of a decorator flow (state ids are any str)."""

from __future__ import annotations

from typing import Any

from chat_orchestrator import ChatOrchestrator, InMemoryStateManager
from chat_orchestrator.testing import RecordingSender


def _flow(*steps: tuple[str, list[str]]) -> ChatOrchestrator:
    orchestrator = ChatOrchestrator(
        InMemoryStateManager(), RecordingSender(), initial_state=steps[0][0]
    )
    for name, targets in steps:

        def step(*args: Any, _name: str = name) -> tuple[str, dict[str, Any]]:
            return _name, {}

        orchestrator.add_step(name, step, to=targets)
    return orchestrator


def test_a_state_drawn_under_an_alias_never_merges_with_a_state_of_that_name() -> None:
    # Before: "has space" was drawn as s0, the id of the state named "s0": one box, and
    # the edge has space -> s0 came out as the self-loop s0 --> s0.
    diagram = _flow(("has space", ["s0"]), ("s0", ["has space"])).mermaid()
    edges = [line.strip() for line in diagram.splitlines() if " --> " in line]
    assert "s0 --> s0" not in edges
    assert len(edges) == 3  # [*] --> start, and the two edges
    assert len({edge.split(" --> ")[1] for edge in edges}) == 2  # two boxes, not one


def test_a_line_break_in_a_state_id_cannot_add_mermaid_statements() -> None:
    evil = "evil\nclick start call alert(1)"
    diagram = _flow(("start", [evil]), (evil, ["start"])).mermaid()
    assert not any(line.lstrip().startswith("click") for line in diagram.splitlines())
    assert 'state "evil click start call alert(1)" as s1' in diagram
