"""Request bodies for ``POST /{phone_number_id}/messages``, checked against Meta's limits.

Any limit broken raises InvalidMessageError before any HTTP: Meta rejects the whole message
rather than truncating it. Lengths are counted in code points.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from chat_orchestrator.errors import InvalidMessageError

__all__ = ["build_message", "build_read_receipt", "build_template", "recipient_fields"]

TEXT_MAX = 4096
BUTTON_BODY_MAX = 1024
LIST_BODY_MAX = 4096
HEADER_MAX = FOOTER_MAX = 60
BUTTONS_MAX, BUTTON_TITLE_MAX, BUTTON_ID_MAX = 3, 20, 256
LIST_LABEL_MAX, SECTIONS_MAX, ROWS_MAX = 20, 10, 10
SECTION_TITLE_MAX, ROW_TITLE_MAX, ROW_ID_MAX, ROW_DESCRIPTION_MAX = 24, 24, 200, 72
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9]{1,128}$")
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
_KNOWN_OPTIONS = frozenset(
    {"buttons", "list", "preview_url", "reply_to", "header", "footer", "callback_data"}
)


def _check_text(what: str, value: object, limit: int, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{what} must be a str, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidMessageError(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidMessageError(f"{what} is {len(value)} characters; WhatsApp allows {limit}")
    return value


def recipient_fields(chat_id: str) -> dict[str, str]:
    """``to`` for a phone number (with its +), ``recipient`` for a business-scoped user id."""
    if _BSUID.match(chat_id):
        return {"recipient": chat_id}
    if _PHONE.match(chat_id):
        # Without "+", Meta prepends the business number's own country code.
        return {"to": chat_id if chat_id.startswith("+") else f"+{chat_id}"}
    raise InvalidMessageError(f"{chat_id!r} is neither a phone number nor a WhatsApp user id")


def _base(chat_id: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual"} | recipient_fields(
        chat_id
    )


def _buttons(buttons: object) -> list[dict[str, Any]]:
    if not isinstance(buttons, Sequence) or isinstance(buttons, str) or not buttons:
        raise InvalidMessageError("buttons must be a non-empty list")
    if len(buttons) > BUTTONS_MAX:
        raise InvalidMessageError(f"{len(buttons)} buttons; WhatsApp allows {BUTTONS_MAX}")
    result, titles = [], set()
    for index, button in enumerate(buttons):
        if isinstance(button, str):
            button = {"id": button, "title": button}
        if not isinstance(button, Mapping):
            raise InvalidMessageError(f"button {index} must be a str or a dict with id and title")
        title = _check_text(f"button {index} title", button.get("title"), BUTTON_TITLE_MAX)
        button_id = _check_text(f"button {index} id", button.get("id"), BUTTON_ID_MAX)
        if title in titles:
            raise InvalidMessageError(f"button title {title!r} is used twice; titles must differ")
        titles.add(title)
        result.append({"type": "reply", "reply": {"id": button_id, "title": title}})
    return result


def _sections(spec: object) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(spec, Mapping):
        raise InvalidMessageError("list must be a dict with 'button' and 'sections'")
    label = _check_text("list button label", spec.get("button"), LIST_LABEL_MAX)
    sections = spec.get("sections")
    if not isinstance(sections, Sequence) or isinstance(sections, str) or not sections:
        raise InvalidMessageError("list sections must be a non-empty list")
    if len(sections) > SECTIONS_MAX:
        raise InvalidMessageError(f"{len(sections)} sections; WhatsApp allows {SECTIONS_MAX}")
    out, total = [], 0
    for s_index, section in enumerate(sections):
        if not isinstance(section, Mapping):
            raise InvalidMessageError(f"section {s_index} must be a dict")
        rows = section.get("rows")
        if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
            raise InvalidMessageError(f"section {s_index} needs a non-empty list of rows")
        total += len(rows)
        if total > ROWS_MAX:
            raise InvalidMessageError(f"the list has more than {ROWS_MAX} rows in all sections")
        built_rows = []
        for r_index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidMessageError(f"row {r_index} of section {s_index} must be a dict")
            where = f"row {r_index} of section {s_index}"
            built = {
                "id": _check_text(f"{where} id", row.get("id"), ROW_ID_MAX),
                "title": _check_text(f"{where} title", row.get("title"), ROW_TITLE_MAX),
            }
            if row.get("description") is not None:
                built["description"] = _check_text(
                    f"{where} description", row.get("description"), ROW_DESCRIPTION_MAX
                )
            built_rows.append(built)
        entry: dict[str, Any] = {"rows": built_rows}
        if section.get("title") is not None or len(sections) > 1:
            entry["title"] = _check_text(
                f"section {s_index} title", section.get("title"), SECTION_TITLE_MAX
            )
        out.append(entry)
    return label, out


def build_message(chat_id: str, text: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The body for a text, reply-button or list message (see WhatsAppSender.send_message)."""
    options = dict(options or {})
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise InvalidMessageError(f"unknown options {unknown}; known: {sorted(_KNOWN_OPTIONS)}")
    if "buttons" in options and "list" in options:
        raise InvalidMessageError("a message has either buttons or a list, not both")
    body = _base(chat_id)
    if "buttons" in options or "list" in options:
        interactive: dict[str, Any]
        if "buttons" in options:
            interactive = {
                "type": "button",
                "body": {"text": _check_text("text", text, BUTTON_BODY_MAX)},
                "action": {"buttons": _buttons(options["buttons"])},
            }
        else:
            label, sections = _sections(options["list"])
            interactive = {
                "type": "list",
                "body": {"text": _check_text("text", text, LIST_BODY_MAX)},
                "action": {"button": label, "sections": sections},
            }
        if options.get("header") is not None:
            header = _check_text("header", options["header"], HEADER_MAX)
            interactive["header"] = {"type": "text", "text": header}
        if options.get("footer") is not None:
            interactive["footer"] = {"text": _check_text("footer", options["footer"], FOOTER_MAX)}
        body |= {"type": "interactive", "interactive": interactive}
    else:
        if "header" in options or "footer" in options:
            raise InvalidMessageError("header and footer need buttons or a list")
        preview = options.get("preview_url", False)
        if not isinstance(preview, bool):
            raise InvalidMessageError("preview_url must be a bool")
        body |= {
            "type": "text",
            "text": {"preview_url": preview, "body": _check_text("text", text, TEXT_MAX)},
        }
    if options.get("reply_to") is not None:
        body["context"] = {"message_id": _check_text("reply_to", options["reply_to"], 256)}
    if options.get("callback_data") is not None:
        body["biz_opaque_callback_data"] = _check_text(
            "callback_data", options["callback_data"], 512
        )
    return body


def build_template(
    chat_id: str, name: str, language: str, components: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    if not re.fullmatch(r"[a-z0-9_]{1,512}", name or ""):
        raise InvalidMessageError("template name must be 1-512 lowercase letters, digits or _")
    _check_text("template language", language, 32)
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = [dict(component) for component in components]
    return _base(chat_id) | {"type": "template", "template": template}


def build_read_receipt(message_id: str, *, typing: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": _check_text("message_id", message_id, 256),
    }
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body
