"""Strict JSON encoding of contexts: what a step stores must load back equal, in every backend.

One definition of the rules serves both directions: :func:`encode_context` refuses a context
that breaks them, and :func:`decode_context` refuses stored text whose value would be refused
on the way in (so nothing read can fail the next write, and nothing deep can blow the stack).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "MAX_CONTEXT_DEPTH",
    "check_encoded",
    "check_text",
    "checked_context",
    "decode_context",
    "encode_context",
    "load_json",
]

#: Deepest nesting of objects/arrays in a context, the context object itself counting as 1.
#: JSON parsers recurse per level; a bound far below Python's recursion limit means a context
#: stored from a shallow stack always loads back from a deep one, and 2,000 levels are an error
#: of ours instead of a RecursionError.
MAX_CONTEXT_DEPTH = 100

_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=True, separators=(",", ":")
).encode
_SCALARS = (str, int, bool, type(None))
# A JSON text holding a surrogate escape may decode to a lone surrogate (a valid pair is fine,
# but only a walk can tell): such text is checked in full.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (stored contexts hold finite numbers only)")


_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def _check(value: Any, path: str, depth: int) -> None:
    # The rules json.dumps does not enforce by itself: it silently *changes* non-str keys
    # into strings and tuples into lists (the value would not load back as stored), and it
    # recurses without bound. NaN, sets, objects and cycles it refuses on its own.
    if depth > MAX_CONTEXT_DEPTH:
        raise ValueError(f"{path} is nested deeper than {MAX_CONTEXT_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"key {key!r} at {path} is not a str (JSON object keys are strings)"
                )
            if not isinstance(item, _SCALARS):
                _check(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, _SCALARS):
                _check(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, tuple):
        raise TypeError(f"tuple at {path} would load back as a list; store a list")


def check_text(text: str) -> None:
    """Refuse JSON text that is not valid Unicode (a lone surrogate cannot become UTF-8)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the context holds a lone surrogate at character {exc.start} "
                "(not valid Unicode; no backend can store it as UTF-8)"
            ) from None


def encode_context(context: dict[str, Any]) -> str:
    """Encode a context dict as compact JSON, refusing anything that would not round-trip.

    Refused: non-dict contexts, non-str keys, tuples, NaN/infinities, lone surrogates, cycles,
    non-JSON types and nesting deeper than :data:`MAX_CONTEXT_DEPTH`. Raises ``TypeError`` or
    ``ValueError`` (the engine and the managers wrap them into ``ContextSerializationError``).
    """
    if type(context) is not dict:
        raise TypeError(f"context must be a dict, got {type(context).__name__}")
    _check(context, "context", 1)  # first: the bounded walk keeps the encoder's stack bounded
    text = _encode(context)
    check_text(text)
    return text


def load_json(text: str | bytes) -> Any:
    """Parse stored JSON strictly; every failure is a ``ValueError`` (never RecursionError)."""
    try:
        if not isinstance(text, str):
            if not isinstance(text, bytes | bytearray | memoryview):
                raise ValueError(f"stored JSON is a {type(text).__name__}, not text")
            text = bytes(text).decode("utf-8")
        return _decode(text)
    except RecursionError:
        raise ValueError(f"stored JSON is nested deeper than {MAX_CONTEXT_DEPTH} levels") from None


def checked_context(value: Any, text: str | bytes, outer: int = 0) -> dict[str, Any]:
    """Return ``value`` (decoded from ``text``) if it obeys the rules of :func:`encode_context`.

    ``outer``: brackets of ``text`` that are not the context's (1 for a record object that
    embeds the context). Raises ``ValueError``. Cheap for ordinary contexts: a text with few
    brackets cannot be too deep, and only surrogate escapes can decode to a lone surrogate.
    """
    if type(value) is not dict:
        raise ValueError(f"stored context is a {type(value).__name__}, not an object")
    if isinstance(text, str):
        brackets = text.count("{") + text.count("[")
        escapes = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    else:
        raw = bytes(text)
        brackets = raw.count(b"{") + raw.count(b"[")
        escapes = b"\\u" in raw and _SURROGATE_ESCAPE_BYTES.search(raw) is not None
    if brackets - outer > MAX_CONTEXT_DEPTH or escapes:
        try:
            _check(value, "context", 1)
            check_text(_encode(value))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"the context breaks the context rules: {exc}") from None
    return value


def check_encoded(context: dict[str, Any], text: str) -> None:
    """Refuse a context another encoder (pydantic) produced that breaks the rules: too deep,
    a lone surrogate, or NaN/Infinity constants (``ser_json_inf_nan="constants"``)."""
    if "NaN" in text or "Infinity" in text:  # usually inside a string; the strict parse says
        load_json(text)
    # Inlined fast path of checked_context (this runs on every class-API turn).
    if "\\u" in text or (
        len(text) > MAX_CONTEXT_DEPTH and text.count("{") + text.count("[") > MAX_CONTEXT_DEPTH
    ):
        checked_context(context, text)
    if not text.isascii():
        check_text(text)


def decode_context(text: str | bytes) -> dict[str, Any]:
    """Decode a stored context; anything :func:`encode_context` would refuse is a ValueError."""
    if type(text) is str:
        # The hot path, inlined: a short text holds too few brackets to be too deep.
        try:
            value = _decode(text)
        except RecursionError:
            raise ValueError(
                f"stored JSON is nested deeper than {MAX_CONTEXT_DEPTH} levels"
            ) from None
        if type(value) is dict and len(text) <= MAX_CONTEXT_DEPTH and "\\u" not in text:
            return value
        return checked_context(value, text)
    return checked_context(load_json(text), text)
