"""What the inbox holds: one inbound event (a message, a button press, a fired timer).

An event is channel-neutral: the channel that received it names the chat and the event's
dedup ``key``, and puts what the step needs into ``user_input`` and ``data``. Events are
stored as compact JSON, so every store keeps them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chat_orchestrator.errors import PipelineError
from chat_orchestrator.state_managers.base import validate_chat_id, validate_claim_key

if TYPE_CHECKING:  # the channels package imports the pipeline: no import cycle at run time
    from chat_orchestrator.channels.events import ChannelEvent

__all__ = ["MAX_EVENT_BYTES", "TIMER", "Event"]

#: ``Event.kind`` of a fired timer.
TIMER = "timer"
#: An event's JSON may not exceed this (a WhatsApp text is at most 4,096 characters).
MAX_EVENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One inbound event for ``chat_id``; ``key`` is unique across channels (dedup)."""

    key: str
    chat_id: str
    user_input: str | None
    kind: str = "message"
    channel: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_channel(cls, event: ChannelEvent, **extra: Any) -> Event:
        """The inbox form of a channel's event; ``extra`` JSON-safe fields join its data."""
        data = {**event.data, **extra} if extra else dict(event.data)
        return cls(event.key, event.chat_id, event.user_input, event.kind, event.channel, data)

    @property
    def is_timer(self) -> bool:
        return self.kind == TIMER

    def to_json(self) -> str:
        """The stored form; PipelineError for ids or data no store could keep."""
        validate_claim_key(self.key)
        validate_chat_id(self.chat_id)
        if self.user_input is not None and type(self.user_input) is not str:
            raise PipelineError(f"user_input must be a str or None, not {type(self.user_input)}")
        if type(self.kind) is not str or type(self.channel) is not str:
            raise PipelineError("an event's kind and channel must be str")
        body = {
            "k": self.key,
            "c": self.chat_id,
            "i": self.user_input,
            "t": self.kind,
            "ch": self.channel,
            "d": dict(self.data),
        }
        try:
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            text.encode("utf-8")  # a lone surrogate fails here, not in the store
        except (TypeError, ValueError, RecursionError) as exc:
            raise PipelineError(f"event {self.key!r} cannot be stored as JSON: {exc}") from exc
        if len(text) > MAX_EVENT_BYTES:
            raise PipelineError(f"event {self.key!r} is larger than {MAX_EVENT_BYTES} bytes")
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """An event read back; PipelineError when the stored text is not one of ours."""
        try:
            body = json.loads(text)
            event = cls(
                key=body["k"],
                chat_id=body["c"],
                user_input=body["i"],
                kind=body["t"],
                channel=body.get("ch", ""),
                data=body.get("d") or {},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PipelineError(f"a stored event cannot be read: {exc}") from exc
        if type(event.key) is not str or type(event.chat_id) is not str:
            raise PipelineError("a stored event has no key or chat id")
        return event
