"""Conformance rules for input: every public method refuses what no backend may store.

Part of the public kit (re-exported by :mod:`chat_orchestrator.testing.conformance`). Each
rule calls a method with bad input and checks that an error of our tree came back *and* that
nothing was read, written or locked: a victim chat keeps its record and its lock is free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chat_orchestrator._jsonctx import MAX_CONTEXT_DEPTH
from chat_orchestrator.errors import ContextSerializationError, InvalidChatIdError
from chat_orchestrator.state_managers.base import (
    MAX_CHAT_ID_LENGTH,
    MAX_STATE_ID_LENGTH,
    StateManager,
)

__all__ = [
    "BAD_CHAT_IDS",
    "BAD_CLAIM_KEYS",
    "BAD_CONTEXTS",
    "BAD_STATE_IDS",
    "NUL_IDS",
    "judge_refusal",
    "nested_context",
    "run_input_rules",
]

#: Ids every method must refuse with InvalidChatIdError (claim keys: InvalidClaimKeyError).
#: Ids a store with ``stores_nul = False`` must refuse (and every other store must keep).
NUL_IDS: tuple[str, ...] = ("\x00", "a\x00b")

BAD_CHAT_IDS: tuple[Any, ...] = (
    5,
    None,
    "",
    "\ud800",
    b"x",
    {"$ne": None},
    {"$gt": ""},
    "x" * (MAX_CHAT_ID_LENGTH + 1),
)
#: State ids a write must refuse with InvalidStateIdError.
BAD_STATE_IDS: tuple[Any, ...] = (5, None, "", b"s", "\udc00", "s" * (MAX_STATE_ID_LENGTH + 1))


def nested_context(levels: int) -> dict[str, Any]:
    """A context ``levels`` objects deep (the context itself is level 1)."""
    context: dict[str, Any] = {}
    for _ in range(levels - 1):
        context = {"a": context}
    return context


#: Contexts a write must refuse with ContextSerializationError.
BAD_CONTEXTS: dict[str, Any] = {
    "NaN": {"x": float("nan")},
    "infinity": {"x": [float("-inf")]},
    "tuple": {"x": (1, 2)},
    "non-str key": {"x": {1: "a"}},
    "lone surrogate": {"x": "\ud800"},
    "too deep": nested_context(MAX_CONTEXT_DEPTH + 1),
    "depth 2000": nested_context(2_000),
    "not a dict": ["x"],
}

_VICTIM = "conformance-victim"


def _expect(error: type[Exception], what: str, call: Callable[..., object], *args: Any) -> None:
    started = time.monotonic()
    try:
        call(*args)
    except Exception as exc:
        judge_refusal(error, what, started, exc)
    else:
        judge_refusal(error, what, started, None)


def judge_refusal(
    error: type[Exception], what: str, started: float, raised: Exception | None
) -> None:
    """The verdict on one bad-input call (sync or async): refused with ``error``, quickly."""
    if raised is None:
        raise AssertionError(f"{what} was accepted; expected {error.__name__}")
    if not isinstance(raised, error):
        raise AssertionError(
            f"{what} raised {type(raised).__name__}: {raised}, not {error.__name__}"
        ) from raised
    # A manager that locks before validating (MongoDB once spun on lock(b"x")) is caught.
    assert time.monotonic() - started < 1.0, f"{what} waited before refusing"


#: Claim keys every claim method must refuse (InvalidClaimKeyError); none may alias its str.
BAD_CLAIM_KEYS: tuple[Any, ...] = (1, b"x", "", "\ud800", None, {"$gt": ""})


def _record(manager: StateManager) -> tuple[str, dict[str, Any], int] | None:
    record = manager.load(_VICTIM)
    return None if record is None else (record.state_id, record.context, record.version)


def _check_untouched(manager: StateManager, before: object, what: str) -> None:
    assert _record(manager) == before, f"{what} changed another chat's record"
    started = time.monotonic()
    manager.begin_turn(_VICTIM).close()
    assert time.monotonic() - started < 1.0, f"{what} left another chat locked"


def _id_calls(manager: StateManager, seed_methods: bool) -> dict[str, Callable[[Any], object]]:
    def lock(chat_id: Any) -> None:
        with manager.lock(chat_id):
            pass

    calls: dict[str, Callable[[Any], object]] = {
        "load": manager.load,
        "save": lambda c: manager.save(c, "s", {}, expected_version=0),
        "compare_and_set": lambda c: manager.compare_and_set(c, "s", {}, expected_version=0),
        "lock": lock,
        "begin_turn": lambda c: manager.begin_turn(c).close(),
    }
    if seed_methods:
        calls["get_state"] = manager.get_state
        calls["set_state"] = lambda c: manager.set_state(c, "s", {})
        calls["delete_state"] = manager.delete_state
    return calls


def run_input_rules(factory: Callable[[], StateManager], *, seed_methods: bool = True) -> None:
    """Check that every public method refuses bad ids, claim keys, state ids and contexts.

    ``seed_methods=False`` skips ``get_state``/``set_state``/``delete_state`` for a manager
    whose seed methods are only ever reached through the engine (which validates first).
    """
    manager = factory()
    try:
        manager.save(_VICTIM, "kept", {"n": 1}, expected_version=_version_of(manager, _VICTIM))
        before = _record(manager)
        # A store that cannot hold NUL must refuse it (and touch nothing), like any bad id.
        nul_ids = () if getattr(manager, "stores_nul", True) else NUL_IDS
        for method, call in _id_calls(manager, seed_methods).items():
            for bad in (*BAD_CHAT_IDS, *nul_ids):
                _expect(InvalidChatIdError, f"{method}({bad!r:.40})", call, bad)
            _check_untouched(manager, before, method)

        _claim_rules(manager, nul_ids)

        for bad in (*BAD_STATE_IDS, *nul_ids):
            for name, write in _writes(manager, "conformance-new", seed_methods).items():
                what = f"{name} with state id {bad!r:.40}"
                _expect(InvalidChatIdError, what, write, bad, {})
                assert manager.load("conformance-new") is None, f"{name} stored state id {bad!r}"

        for label, context in BAD_CONTEXTS.items():
            for name, write in _writes(manager, _VICTIM, seed_methods).items():
                _expect(
                    ContextSerializationError,
                    f"{name} with a context holding {label}",
                    write,
                    "s",
                    context,
                )
            _check_untouched(manager, before, f"a write with a context holding {label}")

        deepest = nested_context(MAX_CONTEXT_DEPTH)
        manager.save("conformance-deep", "s", deepest, expected_version=0)
        assert manager.get_state("conformance-deep") == ("s", deepest), "deepest context lost"
    finally:
        manager.close()


def _writes(
    manager: StateManager, chat_id: str, seed_methods: bool
) -> dict[str, Callable[[Any, Any], object]]:
    writes: dict[str, Callable[[Any, Any], object]] = {
        "save": lambda s, c: manager.save(
            chat_id, s, c, expected_version=_version_of(manager, chat_id)
        ),
        "compare_and_set": lambda s, c: manager.compare_and_set(
            chat_id, s, c, expected_version=_version_of(manager, chat_id)
        ),
    }
    if seed_methods:
        writes["set_state"] = lambda s, c: manager.set_state(chat_id, s, c)
    return writes


def _version_of(manager: StateManager, chat_id: str) -> int:
    record = manager.load(chat_id)
    return 0 if record is None else record.version


def _claim_rules(manager: StateManager, nul_ids: tuple[str, ...] = ()) -> None:
    assert manager.claim("conformance-taken", 3600) is True, "a fresh key must claim"
    for bad in (*BAD_CLAIM_KEYS, *nul_ids):
        _expect(InvalidChatIdError, f"claim({bad!r})", manager.claim, bad, 60)
        release = f"release_claim({bad!r})"
        _expect(InvalidChatIdError, release, manager.release_claim, bad)
    # A refused key claimed nothing, and no non-str key aliases its str form.
    assert manager.claim("1", 3600) is True, "claim(1) was refused but claimed '1'"
    assert manager.claim("b'x'", 3600) is True, "claim(b'x') was refused but claimed \"b'x'\""
    assert manager.claim("conformance-taken", 3600) is False, "a claimed key claimed twice"
    manager.release_claim("conformance-taken")
    manager.release_claim("conformance-never-claimed")
    assert manager.claim("conformance-taken", 3600) is True, "release_claim did not free the key"
    assert manager.claim("1", 3600) is False, "release_claim freed another key"
