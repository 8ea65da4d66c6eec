"""Class-API turn against a decorator-API turn doing the same work, in memory.

Run by hand: ``uv run python bench/bench_class_api.py``. Target (issue 3): at most 1.5x.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare, report
from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender


class Ctx(BaseModel):
    name: str = "Bob"
    age: int = 42
    step: int = 0
    tags: list[str] = ["a", "b"]
    ok: bool = True


class Counting(Conversation[Ctx]):
    @state(initial=True)
    def start(self, turn: Turn[Ctx]) -> Literal["start"]:
        turn.context.step += 1
        return "start"


def main() -> None:
    ops = 2_000 if "--quick" in sys.argv else 50_000
    decorator = ChatOrchestrator(InMemoryStateManager(), RecordingSender())

    @decorator.register_step("start", to=["start"])
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        context["step"] = context.get("step", 0) + 1
        return "start", context

    decorator.state_manager.set_state("bench", "start", Ctx().model_dump(mode="json"))
    conversation = Counting(InMemoryStateManager(), RecordingSender())
    conversation.handle_message("bench", "hi")

    medians = compare(
        {
            "decorator-API turn": lambda: decorator.handle_message("bench", "hi"),
            "class-API turn": lambda: conversation.handle_message("bench", "hi"),
        },
        ops,
    )
    report("class API vs decorator API, same work, in memory", medians, "decorator-API turn")
    ratio = medians["class-API turn"] / medians["decorator-API turn"]
    print(f"\nclass-API turn cost: {ratio:.2f}x a decorator-API turn (target <= 1.5x)")


if __name__ == "__main__":
    main()
