"""Class-API onboarding: asks a name and an age (re-asking on a non-number), confirms, ends.

Run it with ``uv run examples/onboarding.py [--store URL]``; ``quit`` leaves. The store is
``--store URL``, else ``$CHAT_STORE``, else memory (``sqlite:///chats.db`` keeps each chat).
Diagram: ``uv run chat-orchestrator graph examples/onboarding.py:Onboarding``.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chat_orchestrator.cli import chat_loop
from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.senders.console import ConsoleMessageSender
from chat_orchestrator.stores import open_store, store_url


class Signup(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    name: str | None = None
    age: int | None = Field(default=None, ge=0, le=150)
    age_retries: int = 0


class Onboarding(Conversation[Signup]):
    @state(initial=True)
    def ask_name(self, turn: Turn[Signup]) -> Literal["got_name"]:
        turn.send("Hi! What's your name?")
        return "got_name"

    @state
    def got_name(self, turn: Turn[Signup]) -> Literal["got_name", "got_age"]:
        name = (turn.text or "").strip()
        if not name:
            turn.send("Please tell me your name.")
            return "got_name"
        turn.context.name = name
        turn.send(f"Nice to meet you, {name}! How old are you?")
        return "got_age"

    @state
    def got_age(self, turn: Turn[Signup]) -> Literal["got_age", "confirm"]:
        text = (turn.text or "").strip()
        # isdecimal, not isdigit ("²" is a digit int() refuses); the length check keeps
        # int() away from its 4,300-digit limit.
        if not text.isdecimal() or len(text) > 3 or int(text) > 150:
            turn.context.age_retries += 1
            turn.send(f"Please answer with a number (try {turn.context.age_retries + 1}).")
            return "got_age"
        turn.context.age = int(text)
        turn.send(
            f"So you are {turn.context.name}, {text} years old. Is that right? (yes/no)",
            {"buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]},
        )
        return "confirm"

    @state
    def confirm(self, turn: Turn[Signup]) -> Literal["got_name", "done", "confirm"]:
        answer = (turn.text or "").strip().lower()
        if answer in {"yes", "y"}:
            turn.send(f"All set, {turn.context.name}. Welcome aboard!")
            return "done"
        if answer in {"no", "n"}:
            turn.context = Signup()
            turn.send("Let's start over. What's your name?")
            return "got_name"
        turn.send("Please answer yes or no.")
        return "confirm"

    @state(final=True)
    def done(self, turn: Turn[Signup]) -> Literal["done"]:
        turn.send(f"You're already signed up, {turn.context.name}.")
        return "done"


if __name__ == "__main__":
    bot = Onboarding(open_store(store_url()), ConsoleMessageSender())
    raise SystemExit(chat_loop(bot.orchestrator, "console_user"))
