"""Public test kit: doubles and helpers for testing your flows and your own backends."""

from chat_orchestrator.testing.recording import RecordingSender, SentMessage
from chat_orchestrator.testing.tester import ConversationTester

__all__ = ["ConversationTester", "RecordingSender", "SentMessage"]
