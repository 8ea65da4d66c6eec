"""Print replies to a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from chat_orchestrator.senders.base import MessageSender

__all__ = ["ConsoleMessageSender"]


class ConsoleMessageSender(MessageSender):
    """Writes each reply on its own line; reply buttons and list rows are shown numbered.

    ``stream`` defaults to the *current* ``sys.stdout`` at send time, so redirection works.
    """

    def __init__(self, stream: TextIO | None = None, *, prefix: str = "") -> None:
        self._stream = stream
        self._prefix = prefix

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        out = self._stream if self._stream is not None else sys.stdout
        lines = [f"{self._prefix}{text}"]
        for number, choice in enumerate(_choices(options), start=1):
            lines.append(f"  {number}. {choice}")
        out.write("\n".join(lines) + "\n")
        out.flush()
        return None


def _choices(options: dict[str, Any] | None) -> list[str]:
    if not options:
        return []
    choices: list[str] = []
    for button in options.get("buttons", ()):
        choices.append(
            str(button.get("title", button)) if isinstance(button, dict) else str(button)
        )
    for section in options.get("list", {}).get("sections", ()):
        for row in section.get("rows", ()):
            choices.append(str(row.get("title", row)))
    return choices
