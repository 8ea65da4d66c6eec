"""Request bodies for the Bot API's ``sendMessage``, ``sendPhoto`` and ``sendChatAction``.

Checked against the Bot API's limits before any HTTP (InvalidMessageError, nothing sent):
text 1-4,096 characters and a photo caption 0-1,024 (counted in UTF-16 code units, as
Telegram counts them: an emoji outside the BMP is two), a button's ``callback_data`` 1-64
bytes. A text over the limit is **refused, not split**: a split message would carry its
buttons on one part only and could be half-delivered; the step decides how to shorten it.

No ``parse_mode`` is set unless the step asks (``options["parse_mode"]``), so a user's
``*name*`` is shown as typed, never rendered as Markdown by accident.

Buttons take the same ``options`` as the console and WhatsApp senders (``buttons``: ids and
titles or plain titles; ``list``: sections of rows). They become an inline keyboard (one
button a row; a press arrives as a ``callback_query`` whose data is the option id) or, with
``keyboard="reply"``, a one-time reply keyboard (a press arrives as the title, typed).
An option id longer than 64 bytes (or starting with ``~``) is sent as ``~`` and a digest of
it, and remembered in the sender's ``callback_ids`` store so the bot can resolve it back:
never cut, so two long ids can never collide into one.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from chat_orchestrator.errors import InvalidMessageError

__all__ = [
    "CALLBACK_DATA_MAX",
    "CAPTION_MAX",
    "TEXT_MAX",
    "CallbackIds",
    "MemoryCallbackIds",
    "StoredCallbackIds",
    "TelegramChat",
    "build_chat_action",
    "build_message",
    "callback_token",
    "parse_chat_id",
    "utf16_length",
]

TEXT_MAX = 4096
CAPTION_MAX = 1024
CALLBACK_DATA_MAX = 64
BUTTON_TEXT_MAX = 128  # not documented; clients cut longer labels, so refuse them early
BUTTONS_MAX = 100  # the Bot API documents none; a keyboard beyond this is unusable anyway
_MAPPED = "~"  # the first character of a digest-mapped callback_data
_KNOWN_OPTIONS = frozenset(
    {
        "buttons",
        "list",
        "header",
        "footer",
        "preview_url",
        "reply_to",
        "callback_data",  # WhatsApp's status-webhook echo: Telegram has none, so ignored
        "keyboard",
        "parse_mode",
        "image",
        "remove_keyboard",
    }
)
_PARSE_MODES = frozenset({"MarkdownV2", "HTML", "Markdown"})
_CHAT = re.compile(r"tg:(-?[0-9]{1,20})(?::t([0-9]{1,20}))?(?::u([0-9]{1,20}))?")
_RAW_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z0-9_]{5,32}")


def utf16_length(text: str) -> int:
    """Telegram's count of ``text``: UTF-16 code units (a lone surrogate counts one)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class TelegramChat:
    """Where a chat id points: the Bot API ``chat_id`` and, in a forum, the topic."""

    __slots__ = ("chat_id", "thread_id")

    def __init__(self, chat_id: int | str, thread_id: int | None) -> None:
        self.chat_id, self.thread_id = chat_id, thread_id

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chat_id": self.chat_id}
        if self.thread_id is not None:
            out["message_thread_id"] = self.thread_id
        return out


def parse_chat_id(chat_id: str) -> TelegramChat:
    """Our chat ids (``tg:<chat>``, ``tg:<chat>:t<topic>``, ``...:u<user>``) or a raw Bot API
    chat id (``-100123``, ``@channel``). A per-user group chat id sends to the group."""
    if not isinstance(chat_id, str):
        raise InvalidMessageError(f"a Telegram chat id must be a str, got {type(chat_id).__name__}")
    found = _CHAT.fullmatch(chat_id)
    if found:
        thread = found.group(2)
        return TelegramChat(int(found.group(1)), int(thread) if thread else None)
    if _RAW_CHAT.fullmatch(chat_id):
        return TelegramChat(int(chat_id) if chat_id[0] != "@" else chat_id, None)
    raise InvalidMessageError(f"{chat_id[:80]!r} is not a Telegram chat id (tg:<chat id>)")


class CallbackIds(Protocol):
    """Where long option ids are kept so a button press can be resolved back to its id."""

    def remember(self, token: str, option_id: str) -> None: ...

    def recall(self, token: str) -> str | None: ...


class MemoryCallbackIds:
    """Process-local ids (tests, one process): lost on restart, so a press on an old keyboard
    after a restart is recorded as unresolvable. Use :class:`StoredCallbackIds` in production."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def remember(self, token: str, option_id: str) -> None:
        self._ids[token] = option_id

    def recall(self, token: str) -> str | None:
        return self._ids.get(token)


class StoredCallbackIds:
    """Long option ids kept as records of the state manager (``tg-callback:<digest>``), so
    every worker and every restart resolves them. Needs a sync manager (or a dual one)."""

    STATE = "telegram_callback_id"

    def __init__(self, state_manager: Any) -> None:
        from chat_orchestrator.state_managers.async_base import require_sync

        self._manager = require_sync(state_manager)

    def remember(self, token: str, option_id: str) -> None:
        if self.recall(token) != option_id:  # one write per id, not one per keyboard sent
            self._manager.set_state(f"tg-callback:{token}", self.STATE, {"id": option_id})

    def recall(self, token: str) -> str | None:
        found = self._manager.get_state(f"tg-callback:{token}")
        if found is None or found[0] != self.STATE:
            return None
        value = found[1].get("id")
        return value if isinstance(value, str) else None


def callback_token(option_id: str) -> str:
    """The ``callback_data`` for a long id: ``~`` + 43 characters of its SHA-256 (256 bits)."""
    digest = hashlib.sha256(option_id.encode("utf-8", "surrogatepass")).digest()
    return _MAPPED + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def needs_mapping(option_id: str) -> bool:
    return option_id.startswith(_MAPPED) or len(option_id.encode("utf-8")) > CALLBACK_DATA_MAX


def is_mapped(data: str) -> bool:
    return data.startswith(_MAPPED)


def _text(what: str, value: object, limit: int, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{what} must be a str, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidMessageError(f"{what} must not be empty")
    if utf16_length(value) > limit:
        raise InvalidMessageError(
            f"{what} is {utf16_length(value)} characters (UTF-16); Telegram allows {limit} "
            "(refused, not split)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessageError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def _choices(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, title) of every button or list row, in order."""
    items: list[object] = []
    if "buttons" in options:
        buttons = options["buttons"]
        if not isinstance(buttons, Sequence) or isinstance(buttons, str) or not buttons:
            raise InvalidMessageError("buttons must be a non-empty list")
        items.extend(buttons)
    if "list" in options:
        spec = options["list"]
        sections = spec.get("sections") if isinstance(spec, Mapping) else None
        if not isinstance(sections, Sequence) or isinstance(sections, str) or not sections:
            raise InvalidMessageError("list must be a dict with a non-empty list of sections")
        for index, section in enumerate(sections):
            rows = section.get("rows") if isinstance(section, Mapping) else None
            if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
                raise InvalidMessageError(f"section {index} needs a non-empty list of rows")
            items.extend(rows)
    if len(items) > BUTTONS_MAX:
        raise InvalidMessageError(f"{len(items)} buttons; at most {BUTTONS_MAX} are sent")
    out = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"id": item, "title": item}
        if not isinstance(item, Mapping):
            raise InvalidMessageError(f"button {index} must be a str or a dict with id and title")
        title = _text(f"button {index} title", item.get("title"), BUTTON_TEXT_MAX)
        option_id = _text(f"button {index} id", item.get("id"), 4096)
        out.append((option_id, title))
    return out


def _keyboard(
    choices: list[tuple[str, str]], kind: object, callback_ids: CallbackIds | None
) -> dict[str, Any]:
    if kind == "reply":
        return {
            "keyboard": [[{"text": title}] for _, title in choices],
            "resize_keyboard": True,
            "one_time_keyboard": True,
        }
    if kind not in (None, "inline"):
        raise InvalidMessageError("keyboard must be 'inline' or 'reply'")
    rows = []
    for option_id, title in choices:
        data = option_id
        if needs_mapping(option_id):
            if callback_ids is None:
                raise InvalidMessageError(
                    f"option id {option_id[:40]!r}... is over {CALLBACK_DATA_MAX} bytes; give "
                    "the sender callback_ids= (StoredCallbackIds) to map it"
                )
            data = callback_token(option_id)
            callback_ids.remember(data, option_id)
        rows.append([{"text": title, "callback_data": data}])
    return {"inline_keyboard": rows}


def build_message(
    chat_id: str,
    text: str,
    options: Mapping[str, Any] | None,
    callback_ids: CallbackIds | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(method, body)`` for a text or photo message (see TelegramSender.send_message)."""
    options = dict(options or {})
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise InvalidMessageError(f"unknown options {unknown}; known: {sorted(_KNOWN_OPTIONS)}")
    if not isinstance(text, str):
        raise InvalidMessageError(f"text must be a str, got {type(text).__name__}")
    # A header and footer (WhatsApp's) become lines of the text: Telegram has no such fields.
    header, footer = options.get("header"), options.get("footer")
    parts = [_text("header", header, 60)] if header is not None else []
    parts.append(text)
    if footer is not None:
        parts.append(_text("footer", footer, 60))
    full = "\n\n".join(parts)
    body: dict[str, Any] = parse_chat_id(chat_id).fields()
    image = options.get("image")
    if image is not None:
        method = "sendPhoto"
        body["photo"] = _text("image (a URL or a file_id)", image, 4096)
        if full:
            body["caption"] = _text("caption", full, CAPTION_MAX)
    else:
        method = "sendMessage"
        body["text"] = _text("text", full, TEXT_MAX)
        preview = options.get("preview_url", False)
        if not isinstance(preview, bool):
            raise InvalidMessageError("preview_url must be a bool")
        if not preview:  # as on WhatsApp: a link preview only when asked for
            body["link_preview_options"] = {"is_disabled": True}
    mode = options.get("parse_mode")
    if mode is not None:
        if mode not in _PARSE_MODES:
            raise InvalidMessageError(f"parse_mode must be one of {sorted(_PARSE_MODES)}")
        body["parse_mode"] = mode
    choices = _choices(options) if "buttons" in options or "list" in options else []
    if choices:
        body["reply_markup"] = _keyboard(choices, options.get("keyboard"), callback_ids)
    elif options.get("remove_keyboard"):
        body["reply_markup"] = {"remove_keyboard": True}
    reply_to = options.get("reply_to")
    if reply_to is not None:
        if isinstance(reply_to, bool) or not isinstance(reply_to, int | str):
            raise InvalidMessageError("reply_to must be a message id")
        if not str(reply_to).isascii() or not str(reply_to).isdigit():
            raise InvalidMessageError("reply_to must be a Telegram message id (digits)")
        body["reply_parameters"] = {
            "message_id": int(reply_to),
            "allow_sending_without_reply": True,
        }
    return method, body


def build_chat_action(chat_id: str, action: str = "typing") -> dict[str, Any]:
    return parse_chat_id(chat_id).fields() | {"action": _text("action", action, 32)}
