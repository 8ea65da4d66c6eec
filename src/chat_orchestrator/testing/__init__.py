"""Public test kit: doubles and helpers for testing your flows and your own backends."""

from chat_orchestrator.testing.recording import RecordingSender, SentMessage

__all__ = ["RecordingSender", "SentMessage"]
