"""Print replies to a terminal, and remember what each chat was last asked.

The console is where a flow is tried by hand, so it behaves like a chat app: reply buttons and
list rows are numbered and can be answered by number or by title (the step then gets the
choice's id, as a WhatsApp button reply does), and the messages of a chat's last turn can be
kept in a directory so a resumed chat shows the question it is waiting on.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from chat_orchestrator.senders.base import MessageSender

# Not the file backend's helpers: those need fcntl, and the console must also run on Windows
# (where there are no O_NOFOLLOW/O_DIRECTORY and no dir_fd; only the symlink checks weaken).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

__all__ = ["Choice", "ConsoleMessage", "ConsoleMessageSender", "LastMessages", "resolve_choice"]


@dataclass(frozen=True, slots=True)
class Choice:
    """A reply button or list row: what is shown, and what the step receives."""

    id: str
    title: str


@dataclass(frozen=True, slots=True)
class ConsoleMessage:
    text: str
    options: dict[str, Any] | None = None

    @property
    def choices(self) -> list[Choice]:
        return _choices(self.options)


#: The most messages kept per chat for :meth:`ConsoleMessageSender.turn_messages`.
_KEPT_PER_CHAT = 50


class ConsoleMessageSender(MessageSender):
    """Writes each reply on its own line; reply buttons and list rows are shown numbered.

    ``stream`` defaults to the *current* ``sys.stdout`` at send time, so redirection works.
    What each chat was sent since :meth:`begin_turn` is kept in :meth:`turn_messages`.
    """

    def __init__(self, stream: TextIO | None = None, *, prefix: str = "") -> None:
        self._stream = stream
        self._prefix = prefix
        self._turn: dict[str, list[ConsoleMessage]] = {}

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        message = ConsoleMessage(text, options)
        self.show(message)
        kept = self._turn.setdefault(chat_id, [])
        kept.append(message)
        del kept[:-_KEPT_PER_CHAT]  # bounded when nobody calls begin_turn (a user's own loop)
        return None

    def show(self, message: ConsoleMessage) -> None:
        """Print ``message`` as :meth:`send_message` does, without recording it."""
        out = self._stream if self._stream is not None else sys.stdout
        lines = [f"{self._prefix}{message.text}"]
        for number, choice in enumerate(message.choices, start=1):
            lines.append(f"  {number}. {choice.title}")
        out.write("\n".join(lines) + "\n")
        out.flush()

    def begin_turn(self, chat_id: str) -> None:
        """Forget what ``chat_id`` was sent so far: :meth:`turn_messages` starts empty."""
        self._turn.pop(chat_id, None)

    def turn_messages(self, chat_id: str) -> list[ConsoleMessage]:
        """The messages sent to ``chat_id`` since :meth:`begin_turn`."""
        return list(self._turn.get(chat_id, ()))


def resolve_choice(typed: str, messages: list[ConsoleMessage]) -> str:
    """What the step gets for ``typed``: the id of the choice it names by number or by title.

    Only the choices of the last message that had any count (the ones on screen); any other
    text is passed on unchanged.
    """
    choices = next((m.choices for m in reversed(messages) if m.choices), [])
    answer = typed.strip()
    if answer.isdecimal() and 1 <= int(answer) <= len(choices):
        return choices[int(answer) - 1].id
    for choice in choices:
        if answer.casefold() == choice.title.casefold():
            return choice.id
    return typed


class LastMessages:
    """Each chat's last turn of messages, one small JSON file per chat in ``directory``.

    File names are the SHA-256 of the chat id (as FileStateManager's), written through a temp
    file and a rename, so a killed console never leaves half a file. It is a convenience for
    resuming: a missing or unreadable file just means nothing to repeat. Each file holds the
    version of the chat's record it was written after, so messages are shown again only while
    the record is still that one (not after another channel or process moved the chat on).

    The directory lives in ``state_dir``, where nothing is opened through a symlink: the
    directory and every file are opened with ``O_NOFOLLOW`` relative to it, the temp file
    under a random name with ``O_EXCL`` (a symlink planted at a predictable name would
    otherwise overwrite its target), and only a regular file is read (a FIFO would hang).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @staticmethod
    def _name(chat_id: str) -> str:
        return f"{hashlib.sha256(chat_id.encode('utf-8')).hexdigest()}.json"

    def _path(self, chat_id: str) -> Path:
        return self.directory / self._name(chat_id)

    def _open_dir(self) -> int:
        return os.open(self.directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)

    def save(self, chat_id: str, messages: list[ConsoleMessage], version: int) -> None:
        """Keep ``messages``; raises OSError (the caller logs it: a resume is a convenience)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "chat_id": chat_id,
            "version": version,
            "messages": [{"text": m.text, "options": m.options} for m in messages],
        }
        # default=str: options may hold anything a sender accepts; they are only shown again.
        payload = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        name = self._name(chat_id)
        temp = f".{name}.{secrets.token_hex(8)}.tmp"
        dir_fd = self._open_dir()
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dir_fd
            )
            try:
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(temp, dir_fd=dir_fd)  # a full disk must not leave temp files behind
                raise
        finally:
            os.close(dir_fd)

    def load(self, chat_id: str, version: int) -> list[ConsoleMessage]:
        """The messages saved after record ``version`` of the chat; [] if none or another."""
        try:
            dir_fd = self._open_dir()
            try:
                fd = os.open(
                    self._name(chat_id), os.O_RDONLY | _NONBLOCK | _NOFOLLOW, dir_fd=dir_fd
                )
            finally:
                os.close(dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return []
                with os.fdopen(fd, "rb", closefd=False) as file:
                    data = json.loads(file.read().decode("utf-8"))
            finally:
                os.close(fd)
            if data["chat_id"] != chat_id or data["version"] != version:
                return []
            return [ConsoleMessage(str(m["text"]), m.get("options")) for m in data["messages"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []


def _choices(options: dict[str, Any] | None) -> list[Choice]:
    if not isinstance(options, dict):
        return []
    found: list[Choice] = []
    for button in options.get("buttons", ()):
        found.append(_choice(button))
    listing = options.get("list")
    for section in listing.get("sections", ()) if isinstance(listing, dict) else ():
        for row in section.get("rows", ()):
            found.append(_choice(row))
    return found


def _choice(item: object) -> Choice:
    if isinstance(item, dict):
        title = str(item.get("title", item.get("id", item)))
        return Choice(str(item.get("id", title)), title)
    return Choice(str(item), str(item))
