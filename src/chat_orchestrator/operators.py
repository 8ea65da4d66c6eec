"""Operator tools on any store: list, show, set, reset, export and import chats.

Every change here is conditional on the version just read (``save(expected_version=...)``,
``delete_if``), and both take the chat's lock first, so an operator's change waits for a live
turn instead of landing inside it, and a turn that read the record before the change fails
its conditional write instead of overwriting it. Nothing is ever written unconditionally.

Export is JSON Lines, one chat a line::

    {"chat_id":"42","state_id":"ask_age","version":3,"updated_at":1764582000.123,"context":{...}}

``context`` is the stored JSON text itself (contexts are stored in one canonical encoding),
so a chat exported from one store and imported into another has a byte-identical context.
``import`` creates missing chats, leaves identical ones alone and refuses to overwrite a
record that is newer than the exported one (or whose age cannot be told) unless ``force``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from chat_orchestrator._jsonctx import decode_context, encode_context, load_json
from chat_orchestrator.conversation import Conversation
from chat_orchestrator.errors import (
    ChatImportError,
    UnknownStateError,
    VersionConflictError,
    describe_chat_id,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateManager,
    validate_chat_id,
    validate_state_id,
)

__all__ = [
    "ChatSnapshot",
    "ImportReport",
    "export_chats",
    "flow_states",
    "import_chats",
    "list_chats",
    "read_export",
    "reset_chat",
    "set_chat_state",
    "show_chat",
]

logger = logging.getLogger(__name__)

#: Reads of one chat retried while a live turn changes it between the two reads of a snapshot.
_SNAPSHOT_TRIES = 5

_FIELDS = {"chat_id", "state_id", "version", "updated_at", "context"}


@dataclass(frozen=True, slots=True)
class ChatSnapshot:
    """One chat as exported: its list line and its context as the stored JSON text."""

    chat_id: str
    state_id: str
    version: int
    updated_at: float | None
    context_json: str

    @property
    def context(self) -> dict[str, Any]:
        return decode_context(self.context_json)

    def to_line(self) -> str:
        """The JSON Lines form (with its newline); the context text is spliced in as stored."""
        head = json.dumps(
            {
                "chat_id": self.chat_id,
                "state_id": self.state_id,
                "version": self.version,
                "updated_at": self.updated_at,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return f'{head[:-1]},"context":{self.context_json}}}\n'


@dataclass
class ImportReport:
    """What :func:`import_chats` did, chat by chat."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Chats left alone: the store's record is newer than the exported one (no ``force``).
    skipped_newer: list[str] = field(default_factory=list)
    #: Chats a concurrent turn changed between our read and our write: left as that turn made.
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.skipped_newer)} skipped (newer in the store), "
            f"{len(self.conflicts)} changed by a live turn meanwhile"
        )


# -- reading -------------------------------------------------------------------------------
def list_chats(
    store: StateManager, *, state: str | None = None, idle_for: float | None = None
) -> Iterator[ChatInfo]:
    """The store's chats (streaming), optionally in ``state`` or idle ``idle_for`` seconds.

    A store that cannot list (a user's seed-only manager) raises StoreCapabilityError.
    """
    return store.iter_chats(state=state, idle_for=idle_for)


def show_chat(store: StateManager, chat_id: str) -> ChatSnapshot | None:
    """The chat's record with its last update, read consistently; ``None`` if there is none."""
    validate_chat_id(chat_id)
    snapshot = None
    for _ in range(_SNAPSHOT_TRIES):
        info = store.chat_info(chat_id)
        record = None if info is None else store.load(chat_id)
        if info is None or record is None:
            return None
        snapshot = ChatSnapshot(
            chat_id,
            record.state_id,
            record.version,
            info.updated_at,
            encode_context(record.context),
        )
        if record.version == info.version:
            return snapshot
        # A turn committed between the two reads: read again, so the time fits the record.
    return snapshot


# -- changing --------------------------------------------------------------------------------
Flow = ChatOrchestrator | type[Conversation[Any]] | Conversation[Any]


def flow_states(flow: Flow) -> frozenset[str]:
    """The state ids a flow defines."""
    if isinstance(flow, ChatOrchestrator):
        return frozenset(flow.states)
    return frozenset(flow.flow.states)


def set_chat_state(
    store: StateManager,
    chat_id: str,
    state_id: str,
    *,
    flow: Flow | None = None,
    expected_version: int | None = None,
) -> int:
    """Move a chat to ``state_id``, keeping its context; returns the new version.

    With ``flow``, the state must be one of the flow's (else UnknownStateError, nothing
    written). ``expected_version``: refuse unless the chat is at that version (what an
    operator saw in ``show``); by default the version read here. The write is conditional on
    it and takes the chat's lock, so a live turn is never overwritten: VersionConflictError.
    A chat with no record gets one, with an empty context.
    """
    validate_chat_id(chat_id)
    validate_state_id(state_id)
    if flow is not None:
        known = flow_states(flow)
        if state_id not in known:
            raise UnknownStateError(
                f"the flow has no state {state_id!r} (states: {', '.join(sorted(known))}); "
                "nothing was written",
                chat_id=chat_id,
                state_id=None,
            )
    record = store.load(chat_id)
    found = 0 if record is None else record.version
    if expected_version is not None and expected_version != found:
        raise VersionConflictError(
            f"chat {describe_chat_id(chat_id)} is at version {found}, not {expected_version}; "
            "nothing was written"
        )
    context = {} if record is None else record.context
    return store.save(chat_id, state_id, context, expected_version=found)


def reset_chat(store: StateManager, chat_id: str, *, expected_version: int | None = None) -> bool:
    """Forget a chat (its next message starts the flow again); False if it had no record.

    Conditional like :func:`set_chat_state`: VersionConflictError if a turn changed it.
    """
    record = store.load(validate_chat_id(chat_id))
    if record is None:
        if expected_version:
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} has no record, not version {expected_version}"
            )
        return False
    if expected_version is not None and expected_version != record.version:
        raise VersionConflictError(
            f"chat {describe_chat_id(chat_id)} is at version {record.version}, not "
            f"{expected_version}; nothing was deleted"
        )
    store.delete_if(chat_id, expected_version=record.version)
    return True


# -- export and import -------------------------------------------------------------------------
def export_chats(
    store: StateManager,
    out: TextIO,
    *,
    state: str | None = None,
    idle_for: float | None = None,
) -> int:
    """Write every chat (or those the filters pick) to ``out`` as JSON Lines; returns how many."""
    count = 0
    for info in store.iter_chats(state=state, idle_for=idle_for):
        snapshot = show_chat(store, info.chat_id)
        if snapshot is None:
            continue  # deleted since it was listed
        out.write(snapshot.to_line())
        count += 1
    return count


def read_export(lines: Iterable[str]) -> Iterator[ChatSnapshot]:
    """Parse JSON Lines written by :func:`export_chats`; ChatImportError names a bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        yield _parse_line(number, line)


def _parse_line(number: int, line: str) -> ChatSnapshot:
    try:
        data = load_json(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = _FIELDS - data.keys()
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        chat_id = validate_chat_id(data["chat_id"])
        state_id = validate_state_id(data["state_id"])
        version, updated_at, context = data["version"], data["updated_at"], data["context"]
        if type(version) is not int or version < 1:
            raise ValueError(f"bad version {version!r}")
        if updated_at is not None and (
            isinstance(updated_at, bool) or not isinstance(updated_at, int | float)
        ):
            raise ValueError(f"bad updated_at {updated_at!r}")
        if not isinstance(context, dict):
            raise ValueError("context is not a JSON object")
        text = encode_context(context)
    except (TypeError, ValueError) as exc:  # InvalidChatIdError is a ValueError too
        raise ChatImportError(f"line {number} of the export cannot be imported: {exc}") from exc
    stamp = None if updated_at is None else float(updated_at)
    return ChatSnapshot(chat_id, state_id, version, stamp, text)


def import_chats(store: StateManager, source: TextIO, *, force: bool = False) -> ImportReport:
    """Import JSON Lines from :func:`export_chats` into ``store``.

    A seekable ``source`` (a file) is checked in full first, so a bad line fails the import
    before anything is written. Each chat is then written conditionally on the version read
    (a concurrent turn wins and is reported in ``conflicts``). A chat whose stored record is
    at least as recent as the exported one (or whose age is unknown) and differs is left
    alone unless ``force``.
    """
    if _seekable(source):
        start = source.tell()
        for _ in read_export(source):
            pass
        source.seek(start)
    report = ImportReport()
    for snapshot in read_export(source):
        _import_one(store, snapshot, force, report)
    return report


def _seekable(source: TextIO) -> bool:
    try:
        return source.seekable()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _import_one(
    store: StateManager, snapshot: ChatSnapshot, force: bool, report: ImportReport
) -> None:
    current = show_chat(store, snapshot.chat_id)
    if current is not None:
        if (current.state_id, current.context_json) == (snapshot.state_id, snapshot.context_json):
            report.unchanged += 1
            return
        newer = (
            current.updated_at is None
            or snapshot.updated_at is None
            or current.updated_at >= snapshot.updated_at
        )
        if newer and not force:
            logger.info(
                "import: chat %s left as stored (its record is newer than the export's)",
                describe_chat_id(snapshot.chat_id),
            )
            report.skipped_newer.append(snapshot.chat_id)
            return
    expected = 0 if current is None else current.version
    try:
        store.save(
            snapshot.chat_id,
            snapshot.state_id,
            snapshot.context,
            expected_version=expected,
            encoded=snapshot.context_json,
        )
    except VersionConflictError:
        logger.info(
            "import: chat %s changed while importing; the live change was kept",
            describe_chat_id(snapshot.chat_id),
        )
        report.conflicts.append(snapshot.chat_id)
        return
    if current is None:
        report.created += 1
    else:
        report.updated += 1
