"""The generic inbound event: what any channel hands the engine, stores or a queue.

A channel (WhatsApp, Telegram) verifies and parses its own requests, then names each event as
a :class:`ChannelEvent`: the chat it belongs to (unique across channels in one store: the
channel builds it, never the user's step), the once-only key (unique across channels too), and
what the flow's step receives as ``user_input``. No provider field crosses this boundary
except as JSON-safe ``data``, so an event can be stored (a durable inbox) and replayed later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChannelEvent"]

_FIELDS = ("channel", "chat_id", "key", "kind")


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """One inbound event of any channel.

    ``kind``: ``text``, ``button`` (a tapped reply button or list row: ``user_input`` is the
    option id on every channel), ``location``, ``contact``, ``image``, ``edited``, ... .
    ``data`` holds JSON-safe extras (message id, button title, user name, ...).
    """

    channel: str
    chat_id: str
    key: str
    user_input: str | None
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON dict (``json.dumps`` accepts it); ``from_json`` reads it back."""
        return {
            "channel": self.channel,
            "chat_id": self.chat_id,
            "key": self.key,
            "user_input": self.user_input,
            "kind": self.kind,
            # A copy through JSON: a caller's later change to a nested dict cannot leak in, and
            # anything that is not JSON fails here, where the event was made, not at replay.
            "data": json.loads(json.dumps(dict(self.data), allow_nan=False)),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChannelEvent:
        """The event ``to_json`` wrote; ValueError naming the field for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a channel event must be a JSON object, got {type(data).__name__}")
        for name in _FIELDS:
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"a channel event's {name!r} must be a non-empty str")
        user_input = data.get("user_input")
        if user_input is not None and not isinstance(user_input, str):
            raise ValueError("a channel event's 'user_input' must be a str or null")
        extras = data.get("data", {})
        if not isinstance(extras, Mapping):
            raise ValueError("a channel event's 'data' must be a JSON object")
        return cls(
            channel=data["channel"],
            chat_id=data["chat_id"],
            key=data["key"],
            user_input=user_input,
            kind=data["kind"],
            data=dict(extras),
        )
