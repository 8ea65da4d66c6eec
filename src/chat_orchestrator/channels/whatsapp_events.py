"""Typed WhatsApp webhook events, parsed from every entry, change, message and status.

Unknown fields are ignored and unknown message types arrive as ``kind`` with their raw dict;
``from``/``wa_id`` may be absent (business-scoped user ids), so ``chat_id`` falls back to the
BSUID. Only the shape that routing needs is enforced: ``entry`` must be a list, ``messages``
and ``statuses`` lists; anything else in the envelope is a WebhookError (400).

One bad message or status inside a good envelope (no ``from``, a non-numeric latitude, a
timestamp that is not Unix seconds, an id that is not valid Unicode) is skipped and listed in
``WebhookBatch.skipped``: refusing the whole POST would make Meta redeliver it for days while
the good messages beside it never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat_orchestrator.errors import WebhookError

__all__ = [
    "InboundMessage",
    "Location",
    "Media",
    "ReplyChoice",
    "SkippedEvent",
    "StatusEvent",
    "WebhookBatch",
    "WebhookErrorDetail",
    "parse_message",
    "parse_payload",
]

MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})
#: Longest message id accepted (Meta's wamids are under 100 characters); bounds claim keys.
MAX_ID_CHARS = 1024
_MAX_TIMESTAMP = 10**12  # Unix seconds; anything longer is not a time Meta sends


@dataclass(frozen=True, slots=True)
class WebhookErrorDetail:
    code: int | None
    title: str | None
    message: str | None
    details: str | None


@dataclass(frozen=True, slots=True)
class ReplyChoice:
    """A tapped reply button, list row, or template quick-reply button."""

    id: str
    title: str | None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Media:
    kind: str
    id: str | None
    mime_type: str | None
    sha256: str | None
    caption: str | None
    filename: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str | None
    address: str | None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One user message. ``kind``: text, button_reply, list_reply, template_button, image, video,
    audio, document, sticker, location, unsupported, or whatever new type Meta sends."""

    id: str
    chat_id: str
    phone_number_id: str | None
    wa_id: str | None
    user_id: str | None
    contact_name: str | None
    timestamp: int
    kind: str
    text: str | None = None
    reply: ReplyChoice | None = None
    media: Media | None = None
    location: Location | None = None
    quoted_id: str | None = None
    errors: tuple[WebhookErrorDetail, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def user_input(self) -> str | None:
        """What the step receives: the text, the chosen reply id, or a media caption."""
        if self.text is not None:
            return self.text
        if self.reply is not None:
            return self.reply.id
        if self.media is not None:
            return self.media.caption
        return None


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A sent/delivered/read/failed/played report for a message the business sent."""

    message_id: str
    status: str
    timestamp: int
    recipient_id: str | None
    recipient_user_id: str | None
    phone_number_id: str | None
    callback_data: str | None
    errors: tuple[WebhookErrorDetail, ...] = ()


@dataclass(frozen=True, slots=True)
class SkippedEvent:
    """A message or status of a good envelope that could not be parsed, and why.

    ``message_id`` is printable (a lone surrogate is shown as an escape) or None if absent.
    """

    kind: str  # "message" or "status"
    message_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusEvent] = field(default_factory=list)
    errors: list[WebhookErrorDetail] = field(default_factory=list)
    skipped: list[SkippedEvent] = field(default_factory=list)


class _BadEventError(Exception):
    """One message or status is malformed; the envelope around it is fine."""


def _bad(message: str) -> WebhookError:
    return WebhookError(f"malformed webhook payload: {message}", status=400)


def _valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return False
    return True


def _printable(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value[:MAX_ID_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _BadEventError(f"{what} is missing")
    if len(value) > MAX_ID_CHARS or not _valid_text(value):
        raise _BadEventError(f"{what} is not a valid id")
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _timestamp(value: object) -> int:
    """Meta sends Unix seconds as a string; absent is 0, anything else skips the event."""
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)  # ASCII digits only: int("²") raises, int("9" * 5000) too
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_TIMESTAMP:
        return value
    raise _BadEventError("timestamp is not Unix seconds")


def _coordinate(value: object, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _BadEventError("a location needs numeric latitude and longitude")
    try:
        number = float(value)
    except ValueError:
        raise _BadEventError("a location needs numeric latitude and longitude") from None
    if not -bound <= number <= bound:  # also refuses NaN and infinities
        raise _BadEventError("a location's latitude or longitude is out of range")
    return number


def _list_of_objects(value: object, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _bad(f"{what} must be a list of objects")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(f"{what} must be a list")
    return value


def _errors(value: object) -> tuple[WebhookErrorDetail, ...]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            data = item.get("error_data")
            out.append(
                WebhookErrorDetail(
                    code=item.get("code") if isinstance(item.get("code"), int) else None,
                    title=_str(item.get("title")),
                    message=_str(item.get("message")),
                    details=_str(data.get("details")) if isinstance(data, dict) else _str(data),
                )
            )
    return tuple(out)


def parse_message(
    raw: dict[str, Any], phone_number_id: str | None, names: dict[str, str]
) -> InboundMessage:
    """One message object of a webhook (``value.messages[i]``), as the webhook parses it."""
    return _message(raw, phone_number_id, names)


def _message(
    raw: dict[str, Any], phone_number_id: str | None, names: dict[str, str]
) -> InboundMessage:
    message_id = _id(raw.get("id"), "the message id")
    wa_id, user_id = _str(raw.get("from")), _str(raw.get("from_user_id"))
    chat_id = _id(wa_id or user_id, "the sender (from or from_user_id)")
    kind = _str(raw.get("type")) or "unknown"
    fields: dict[str, Any] = {}
    content = _obj(raw.get(kind))
    if kind == "text":
        fields["text"] = _str(content.get("body")) or ""
    elif kind == "interactive":
        sub = _str(content.get("type")) or "unknown"
        choice = _obj(content.get(sub))
        if sub in {"button_reply", "list_reply"} and _str(choice.get("id")):
            kind = sub
            fields["reply"] = ReplyChoice(
                choice["id"], _str(choice.get("title")), _str(choice.get("description"))
            )
        else:
            kind = f"interactive.{sub}"
    elif kind == "button":  # a template quick-reply tap: payload is the id, text the title
        kind = "template_button"
        payload = _str(content.get("payload")) or _str(content.get("text")) or ""
        fields["reply"] = ReplyChoice(payload, _str(content.get("text")))
    elif kind in MEDIA_KINDS:
        fields["media"] = Media(
            kind,
            _str(content.get("id")),
            _str(content.get("mime_type")),
            _str(content.get("sha256")),
            _str(content.get("caption")),
            _str(content.get("filename")),
            _str(content.get("url")),
        )
    elif kind == "location":
        fields["location"] = Location(
            _coordinate(content.get("latitude"), 90.0),
            _coordinate(content.get("longitude"), 180.0),
            _str(content.get("name")),
            _str(content.get("address")),
        )
    quoted = raw.get("context")
    return InboundMessage(
        id=message_id,
        chat_id=chat_id,
        phone_number_id=phone_number_id,
        wa_id=wa_id,
        user_id=user_id,
        contact_name=names.get(wa_id or "") or names.get(user_id or ""),
        timestamp=_timestamp(raw.get("timestamp")),
        kind=kind,
        quoted_id=_str(quoted.get("id")) if isinstance(quoted, dict) else None,
        errors=_errors(raw.get("errors")),
        raw=raw,
        **fields,
    )


def _status(raw: dict[str, Any], phone_number_id: str | None) -> StatusEvent:
    message_id = _id(raw.get("id"), "the status's message id")
    status = _id(raw.get("status"), "the status")
    return StatusEvent(
        message_id=message_id,
        status=status,
        timestamp=_timestamp(raw.get("timestamp")),
        recipient_id=_str(raw.get("recipient_id")),
        recipient_user_id=_str(raw.get("recipient_user_id")),
        phone_number_id=phone_number_id,
        callback_data=_str(raw.get("biz_opaque_callback_data")),
        errors=_errors(raw.get("errors")),
    )


def _event(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _BadEventError("not a JSON object")
    return raw


def _event_id(raw: object) -> str | None:
    return _printable(raw.get("id")) if isinstance(raw, dict) else None


def parse_payload(payload: object) -> WebhookBatch:
    """Every message and status of a webhook POST body (already JSON-decoded)."""
    if not isinstance(payload, dict):
        raise _bad("the body must be a JSON object")
    batch = WebhookBatch()
    if payload.get("object") != "whatsapp_business_account":
        return batch  # another product's webhook: nothing for us
    if "entry" not in payload:
        raise _bad("'entry' is missing")
    for entry in _list_of_objects(payload["entry"], "entry"):
        for change in _list_of_objects(entry.get("changes"), "changes"):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                continue  # account updates, template status...: not routed here
            metadata = value.get("metadata")
            phone_id = _str(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
            if phone_id is not None and (len(phone_id) > MAX_ID_CHARS or not _valid_text(phone_id)):
                raise _bad("metadata.phone_number_id is not a valid id")
            names = {}
            for contact in _list_of_objects(value.get("contacts"), "contacts"):
                profile = contact.get("profile")
                name = _str(profile.get("name")) if isinstance(profile, dict) else None
                for key in ("wa_id", "user_id"):
                    if name and _str(contact.get(key)):
                        names[contact[key]] = name
            for raw in _list(value.get("messages"), "messages"):
                try:
                    batch.messages.append(_message(_event(raw), phone_id, names))
                except _BadEventError as exc:
                    batch.skipped.append(SkippedEvent("message", _event_id(raw), str(exc)))
            for raw in _list(value.get("statuses"), "statuses"):
                try:
                    batch.statuses.append(_status(_event(raw), phone_id))
                except _BadEventError as exc:
                    batch.skipped.append(SkippedEvent("status", _event_id(raw), str(exc)))
            batch.errors.extend(_errors(value.get("errors")))
    return batch
