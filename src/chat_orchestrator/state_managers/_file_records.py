"""The file backend's record format: one JSON object per chat, parsed strictly.

``{"format": 1, "chat_id": ..., "state_id": ..., "version": n, "context": {...}}``; the
chat id inside proves the file belongs to the chat whose hash names it.
"""

from __future__ import annotations

import json
from pathlib import Path

from chat_orchestrator._jsonctx import checked_context, load_json
from chat_orchestrator.errors import CorruptStateError, describe_chat_id
from chat_orchestrator.state_managers.base import StateRecord

__all__ = ["encode_record", "parse_record"]

_FORMAT = 1


def encode_record(chat_id: str, state_id: str, version: int, context_text: str) -> bytes:
    """The bytes of a record; ``context_text`` is the context's (validated) JSON text."""
    return (
        f'{{"format":{_FORMAT},"chat_id":{json.dumps(chat_id)},'
        f'"state_id":{json.dumps(state_id)},"version":{version},"context":{context_text}}}'
    ).encode()


def parse_record(chat_id: str, path: Path, raw: bytes) -> StateRecord:
    who = f"chat {describe_chat_id(chat_id)}"
    try:
        data = load_json(raw)  # strict: NaN and over-deep nesting are ValueErrors here
    except ValueError as exc:
        raise CorruptStateError(
            f"the record of {who} ({path.name}) is not valid JSON: {exc}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise CorruptStateError(f"the record of {who} ({path.name}) is not a format-1 record")
    state_id, version, context = data.get("state_id"), data.get("version"), data.get("context")
    if data.get("chat_id") != chat_id:
        raise CorruptStateError(f"{path.name} holds another chat's record, not {who}")
    if (
        not isinstance(state_id, str)
        or type(version) is not int
        or version < 1
        or not isinstance(context, dict)
    ):
        raise CorruptStateError(f"the record of {who} ({path.name}) has missing or bad fields")
    try:
        checked_context(context, raw, outer=1)  # the record's own braces are not the context's
    except ValueError as exc:
        raise CorruptStateError(f"the record of {who} ({path.name}) cannot be read: {exc}") from exc
    return StateRecord(state_id, context, version)
