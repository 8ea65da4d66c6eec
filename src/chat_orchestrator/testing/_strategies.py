"""Hypothesis strategies and settings shared by the sync and the async conformance kits."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from chat_orchestrator.errors import MissingDependencyError
from chat_orchestrator.state_managers.base import MAX_CHAT_ID_LENGTH

try:
    from hypothesis import HealthCheck
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - the kit needs hypothesis
    raise MissingDependencyError("hypothesis", "testing") from exc

__all__ = [
    "CHAT_ID_POOL",
    "SETTINGS",
    "chat_ids",
    "id_pool",
    "json_contexts",
    "state_ids",
    "stores_nul",
]

#: Chat ids the rule-based test mixes: path tricks, key-naming tricks, case, unicode, NUL.
CHAT_ID_POOL = (
    "alice",
    "Alice",
    "../../etc/passwd",
    "{a}",
    "a:b",
    "*",
    "chat:{x}:l:y",
    "$where",
    "ünï😀",
    "a\x00b",
)

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not math.isnan(f))
    | st.text(max_size=30)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def json_contexts() -> st.SearchStrategy[dict[str, Any]]:
    """Arbitrary JSON objects (str keys, finite numbers, nesting)."""
    return st.dictionaries(st.text(max_size=12), _json_values, max_size=6)


def chat_ids(nul: bool = True) -> st.SearchStrategy[str]:
    """Arbitrary valid chat ids: any non-empty Unicode text without lone surrogates (and
    without NUL for a store that refuses it)."""
    return st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="" if nul else "\x00"),
        min_size=1,
        max_size=MAX_CHAT_ID_LENGTH // 64,
    )


def state_ids(nul: bool = True) -> st.SearchStrategy[str]:
    """Short arbitrary state ids (without NUL for a store that refuses it)."""
    if nul:
        return st.text(min_size=1, max_size=8)
    alphabet = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
    return st.text(alphabet, min_size=1, max_size=8)


def id_pool(nul: bool = True) -> tuple[str, ...]:
    """:data:`CHAT_ID_POOL`, less the ids holding NUL for a store that refuses them."""
    return CHAT_ID_POOL if nul else tuple(i for i in CHAT_ID_POOL if "\x00" not in i)


def stores_nul(factory: Callable[[], Any]) -> bool:
    """Whether the managers ``factory`` builds store NUL in ids (``StateManager.stores_nul``)."""
    manager = factory()
    try:
        return bool(getattr(manager, "stores_nul", True))
    finally:
        close = getattr(manager, "close", None)
        if close is not None and not _is_coroutine_function(close):
            close()


SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _is_coroutine_function(function: Any) -> bool:
    return inspect.iscoroutinefunction(function)
