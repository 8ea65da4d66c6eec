"""Strict JSON encoding of contexts: what a step stores must load back equal, in every backend."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["decode_context", "encode_context"]

_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=True, separators=(",", ":")
).encode
_SCALARS = (str, int, bool, type(None))


def _check(value: Any, path: str) -> None:
    # json.dumps already refused sets, objects, NaN and cycles; what it silently *changes* is
    # left: non-str keys become strings and tuples become lists, so the value would not
    # load back as it was stored. Refuse those instead of corrupting the context quietly.
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"key {key!r} at {path} is not a str (JSON object keys are strings)"
                )
            if not isinstance(item, _SCALARS):
                _check(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, _SCALARS):
                _check(item, f"{path}[{index}]")
    elif isinstance(value, tuple):
        raise TypeError(f"tuple at {path} would load back as a list; store a list")


def encode_context(context: dict[str, Any]) -> str:
    """Encode a context dict as compact JSON, refusing anything that would not round-trip.

    Raises ``TypeError`` or ``ValueError`` (the engine wraps them into
    ``ContextSerializationError``).
    """
    if type(context) is not dict:
        raise TypeError(f"context must be a dict, got {type(context).__name__}")
    text = _encode(context)
    _check(context, "context")
    return text


def decode_context(text: str | bytes) -> dict[str, Any]:
    value = json.loads(text)
    if type(value) is not dict:
        raise ValueError(f"stored context is a {type(value).__name__}, not an object")
    return value
