"""Telegram ``Update`` objects parsed into generic :class:`ChannelEvent` values.

Chat identity (``chat_id`` of the event, unique beside WhatsApp's digits in one store):

* a private chat: ``tg:<chat id>`` (the user's id);
* a group: ``tg:<chat id>`` with ``group_mode="chat"`` (the group shares one conversation),
  ``tg:<chat id>:u<user id>`` with ``group_mode="user"`` (each member has their own);
* a forum topic (``is_topic_message``) with ``topics=True``: ``tg:<chat id>:t<thread id>``
  (``...:t<thread>:u<user>`` per user); the sender replies into that topic.

What each update becomes (``Parsed.run``: a turn runs; otherwise it is only recorded):

* ``message``: text (``text``), photo (``image``: the caption, ``file_id`` of the largest
  size), location, contact (``user_input`` the phone number), other media with their caption;
  service messages (members joining, pins, ...) are recorded as ``service``.
* ``callback_query``: ``button`` with the option id as ``user_input``, as a WhatsApp button
  reply; always answered (``answer_callback``) so the user's spinner stops. Without a message
  (inline mode) or with data we cannot resolve it is answered and recorded, not run.
* ``edited_message``: recorded as ``edited`` (a flow has moved on; re-running would answer
  twice); ``my_chat_member``: ``blocked`` (status ``kicked`` in a private chat), ``unblocked``,
  or ``member`` elsewhere, recorded.
* anything else: recorded as ``unsupported`` with its type.

An update without an integer ``update_id`` is refused (400: it cannot be deduplicated, and
Telegram never sends one); a malformed part of a good update is ``skipped`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.errors import WebhookError

__all__ = ["GroupMode", "Parsed", "parse_update", "update_key"]

GroupMode = Literal["chat", "user"]
_MAX_ID = 2**63  # Bot API ids fit in 64 bits (52 significant in practice)
_KNOWN = ("message", "edited_message", "callback_query", "my_chat_member")
_MEDIA = ("video", "audio", "voice", "document", "animation", "video_note", "sticker")


@dataclass(frozen=True, slots=True)
class Parsed:
    """One update: its id, the event (None when skipped), whether it runs a turn, the
    callback query to answer, and why it was skipped (None when it was not)."""

    update_id: int
    event: ChannelEvent | None
    run: bool = False
    callback_query_id: str | None = None
    skipped: str | None = None
    mapped_data: str | None = None  # a ``~digest`` callback_data still to resolve


class _BadUpdateError(Exception):
    pass


def update_key(bot_id: str, update_id: int) -> str:
    """The once-only key: ``tg:<bot id>:<update id>`` (a bot id is digits: never ambiguous)."""
    return f"tg:{bot_id}:{update_id}"


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -_MAX_ID < value < _MAX_ID:
        raise _BadUpdateError(f"{what} is not an integer id")
    return value


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadUpdateError(f"{what} is missing or not an object")
    return value


def _str(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _chat_id(
    message: dict[str, Any], user: dict[str, Any] | None, group_mode: GroupMode, topics: bool
) -> str:
    chat = _obj(message.get("chat"), "chat")
    chat_id = _int(chat.get("id"), "chat.id")
    out = f"tg:{chat_id}"
    if topics and message.get("is_topic_message") is True and "message_thread_id" in message:
        out += f":t{_int(message['message_thread_id'], 'message_thread_id')}"
    if chat.get("type") in ("group", "supergroup") and group_mode == "user" and user is not None:
        out += f":u{_int(user.get('id'), 'from.id')}"
    return out


def _user_data(user: dict[str, Any] | None) -> dict[str, Any]:
    if user is None:
        return {}
    data: dict[str, Any] = {"user_id": user.get("id") if isinstance(user.get("id"), int) else None}
    for name in ("username", "first_name", "language_code"):
        if _str(user.get(name)) is not None:
            data[name] = _str(user.get(name))
    return data


def _message_event(
    message: dict[str, Any], key: str, group_mode: GroupMode, topics: bool, edited: bool
) -> tuple[ChannelEvent, bool]:
    user = message.get("from") if isinstance(message.get("from"), dict) else None
    chat_id = _chat_id(message, user, group_mode, topics)
    data = {"message_id": _int(message.get("message_id"), "message_id")} | _user_data(user)
    user_input: str | None = None
    kind = "service"
    if isinstance(message.get("text"), str):
        kind, user_input = "text", _str(message["text"])
    elif isinstance(message.get("photo"), list) and message["photo"]:
        sizes = [p for p in message["photo"] if isinstance(p, dict)]
        largest = sizes[-1] if sizes else {}
        kind, user_input = "image", _str(message.get("caption"))
        data["file_id"] = _str(largest.get("file_id"))
    elif isinstance(message.get("location"), dict):
        location = message["location"]
        lat, lon = location.get("latitude"), location.get("longitude")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
            raise _BadUpdateError("a location needs numeric latitude and longitude")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise _BadUpdateError("a location's latitude or longitude is out of range")
        kind, data["latitude"], data["longitude"] = "location", float(lat), float(lon)
    elif isinstance(message.get("contact"), dict):
        contact = message["contact"]
        kind, user_input = "contact", _str(contact.get("phone_number"))
        data["contact_user_id"] = (
            contact.get("user_id") if isinstance(contact.get("user_id"), int) else None
        )
    else:
        for media in _MEDIA:
            if isinstance(message.get(media), dict):
                kind, user_input = media, _str(message.get("caption"))
                data["file_id"] = _str(message[media].get("file_id"))
                break
    if edited:
        data["edited_kind"] = kind
        kind = "edited"
    event = ChannelEvent("telegram", chat_id, key, user_input, kind, data)
    return event, not edited and kind != "service"


def _callback(
    query: dict[str, Any], key: str, group_mode: GroupMode, topics: bool
) -> tuple[ChannelEvent | None, str | None]:
    """The button event (None: nothing to run) and why not."""
    user = query.get("from") if isinstance(query.get("from"), dict) else None
    message = query.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("chat"), dict):
        return None, "callback query without a message (inline mode): not run"
    data = _str(query.get("data"))
    if not data:
        return None, "callback query without data (a game button): not run"
    chat_id = _chat_id(message, user, group_mode, topics)
    extras = {"message_id": message.get("message_id")} | _user_data(user)
    title = _title(message, query.get("data"))
    if title is not None:
        extras["title"] = title
    return ChannelEvent("telegram", chat_id, key, data, "button", extras), None


def _title(message: dict[str, Any], data: object) -> str | None:
    markup = message.get("reply_markup")
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    for row in rows if isinstance(rows, list) else ():
        for button in row if isinstance(row, list) else ():
            if isinstance(button, dict) and button.get("callback_data") == data:
                return _str(button.get("text"))
    return None


def _member(update: dict[str, Any], key: str) -> ChannelEvent:
    change = _obj(update.get("my_chat_member"), "my_chat_member")
    chat = _obj(change.get("chat"), "my_chat_member.chat")
    new = _obj(change.get("new_chat_member"), "new_chat_member")
    status = _str(new.get("status")) or "unknown"
    user = change.get("from") if isinstance(change.get("from"), dict) else None
    chat_id = f"tg:{_int(chat.get('id'), 'chat.id')}"
    if chat.get("type") == "private":
        kind = "blocked" if status == "kicked" else "unblocked"
    else:
        kind = "member"
    return ChannelEvent("telegram", chat_id, key, None, kind, {"status": status} | _user_data(user))


def parse_update(
    update: object, *, bot_id: str, group_mode: GroupMode = "chat", topics: bool = True
) -> Parsed:
    """What one update means; WebhookError (400) if it is not an update at all."""
    if not isinstance(update, dict):
        raise WebhookError("the body must be a JSON object (an Update)", status=400)
    raw_id = update.get("update_id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, int) or not 0 <= raw_id < _MAX_ID:
        raise WebhookError("the update has no integer update_id", status=400)
    key = update_key(bot_id, raw_id)
    kind = next((name for name in _KNOWN if name in update), None)
    try:
        if kind in ("message", "edited_message"):
            message = _obj(update[kind], kind)
            event, run = _message_event(message, key, group_mode, topics, kind != "message")
            return Parsed(raw_id, event, run)
        if kind == "callback_query":
            query = _obj(update["callback_query"], "callback_query")
            query_id = _str(query.get("id"))
            if not query_id:
                raise _BadUpdateError("callback_query.id is missing")
            pressed, why = _callback(query, key, group_mode, topics)
            data = pressed.user_input if pressed is not None else None
            mapped = data if data is not None and data.startswith("~") else None
            return Parsed(raw_id, pressed, pressed is not None, query_id, why, mapped)
        if kind == "my_chat_member":
            return Parsed(raw_id, _member(update, key))
    except _BadUpdateError as exc:
        return Parsed(raw_id, None, skipped=f"malformed {kind}: {exc}")
    others = sorted(k for k in update if k != "update_id")
    name = others[0][:64] if others else "empty"
    unsupported = ChannelEvent(
        "telegram", "tg:unknown", key, None, "unsupported", {"update_type": name}
    )
    return Parsed(raw_id, unsupported)
