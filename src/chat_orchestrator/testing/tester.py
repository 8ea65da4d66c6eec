"""ConversationTester: script a class-API conversation in a test."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

from chat_orchestrator.conversation import Conversation
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing.recording import RecordingSender, SentMessage

__all__ = ["ConversationTester"]

C = TypeVar("C", bound=BaseModel)


class ConversationTester(Generic[C]):
    """Drives one chat of a conversation with in-memory state and a RecordingSender.

    >>> tester = ConversationTester(Onboarding)            # doctest: +SKIP
    >>> tester.send(None)                                  # doctest: +SKIP
    ["Hi! What's your name?"]
    >>> tester.send("Ada"); tester.state; tester.context.name   # doctest: +SKIP
    """

    def __init__(
        self,
        conversation: type[Conversation[C]],
        *,
        chat_id: str = "test-chat",
        state_manager: StateManager | None = None,
    ) -> None:
        self.sender = RecordingSender()
        self.state_manager = state_manager if state_manager is not None else InMemoryStateManager()
        self.conversation = conversation(self.state_manager, self.sender)
        self.chat_id = chat_id

    def send(self, text: str | None) -> list[str]:
        """Run one turn with ``text``; returns the texts the bot replied in that turn."""
        return [message.text for message in self.send_full(text)]

    def send_full(self, text: str | None) -> list[SentMessage]:
        """Like :meth:`send`, with each reply's options (buttons, lists)."""
        before = len(self.sender.sent)
        self.conversation.handle_message(self.chat_id, text)
        return [m for m in self.sender.sent[before:] if m.chat_id == self.chat_id]

    @property
    def state(self) -> str | None:
        """The chat's current state (None before the first turn)."""
        return self.conversation.state_of(self.chat_id)

    @property
    def context(self) -> C:
        """The chat's stored context, typed (a fresh model before the first turn)."""
        context = self.conversation.context_of(self.chat_id)
        return context if context is not None else self.conversation._model()()
