"""Issue 8: every public method of every built-in manager refuses bad input before the store.

Run once per backend (real redis-server and nx-27017 via the fixtures). Each bad call must
raise an error of our tree, read nothing, write nothing and leave another chat untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from chat_orchestrator._jsonctx import MAX_CONTEXT_DEPTH
from chat_orchestrator.errors import (
    ContextSerializationError,
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidStateIdError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import MAX_CHAT_ID_LENGTH, StateManager
from chat_orchestrator.testing import RecordingSender
from chat_orchestrator.testing.conformance import BAD_CHAT_IDS, nested_context
from chat_orchestrator.testing.conformance import BAD_CONTEXTS as KIT_CONTEXTS
from tests.helpers import DictSeedManager

BAD_IDS: list[Any] = [*BAD_CHAT_IDS, "a\udfffb", ["a"]]
SEED_METHODS = ["get_state", "set_state", "delete_state"]
ENGINE_METHODS = ["load", "save", "compare_and_set", "lock", "begin_turn"]


def call(manager: StateManager, method: str, chat_id: Any) -> None:
    if method == "get_state":
        manager.get_state(chat_id)
    elif method == "set_state":
        manager.set_state(chat_id, "evil", {"x": 1})
    elif method == "delete_state":
        manager.delete_state(chat_id)
    elif method == "load":
        manager.load(chat_id)
    elif method == "save":
        manager.save(chat_id, "evil", {"x": 1}, expected_version=0)
    elif method == "compare_and_set":
        manager.compare_and_set(chat_id, "evil", {"x": 1}, expected_version=0)
    elif method == "lock":
        with manager.lock(chat_id):
            pass
    else:
        manager.begin_turn(chat_id).close()


def snapshot(manager: StateManager, chat_id: str) -> tuple[str, dict[str, Any], int] | None:
    record = manager.load(chat_id)
    return None if record is None else (record.state_id, record.context, record.version)


def assert_free(manager: StateManager, chat_id: str) -> None:
    """Nobody holds the chat's lock (a bad call must not have leased it)."""
    started = time.monotonic()
    manager.begin_turn(chat_id).close()
    assert time.monotonic() - started < 2.0, "the chat was left leased"


@pytest.mark.parametrize("method", SEED_METHODS + ENGINE_METHODS)
def test_bad_chat_ids_are_refused_by_every_method(manager: StateManager, method: str) -> None:
    if method in SEED_METHODS and isinstance(manager, DictSeedManager):
        pytest.skip("a user's own seed methods are the user's code")
    manager.set_state("victim", "safe", {"n": 1})
    before = snapshot(manager, "victim")
    for bad in BAD_IDS:
        started = time.monotonic()
        with pytest.raises(InvalidChatIdError) as raised:
            call(manager, method, bad)
        assert type(raised.value) is InvalidChatIdError, (method, bad)
        assert time.monotonic() - started < 1.0, f"{method}({bad!r}) waited before refusing"
    assert snapshot(manager, "victim") == before
    assert_free(manager, "victim")


def test_query_operators_never_reach_another_chat(manager: StateManager) -> None:
    """The MongoDB attacks of the issue, checked on every backend."""
    manager.set_state("victim", "safe", {"n": 1})
    before = snapshot(manager, "victim")
    for attack in ({"$ne": None}, {"$gt": ""}):
        with pytest.raises(InvalidChatIdError):
            manager.save(attack, "evil", {}, expected_version=0)  # type: ignore[arg-type]
        with pytest.raises(InvalidChatIdError):
            manager.begin_turn(attack)  # type: ignore[arg-type]
        with pytest.raises(InvalidChatIdError):
            manager.compare_and_set(attack, "evil", {}, expected_version=1)  # type: ignore[arg-type]
        if not isinstance(manager, DictSeedManager):
            with pytest.raises(InvalidChatIdError):
                manager.set_state(attack, "evil", {})  # type: ignore[arg-type]
            with pytest.raises(InvalidChatIdError):
                manager.delete_state(attack)  # type: ignore[arg-type]
    assert snapshot(manager, "victim") == before
    assert_free(manager, "victim")


def test_claim_keys_are_validated_and_never_alias(manager: StateManager) -> None:
    assert manager.claim("taken", 3600) is True
    for bad in (1, b"x", "", "\ud800", None, {"$gt": ""}, "k" * (MAX_CHAT_ID_LENGTH + 1)):
        with pytest.raises(InvalidClaimKeyError):
            manager.claim(bad, 60)  # type: ignore[arg-type]
        with pytest.raises(InvalidClaimKeyError):
            manager.release_claim(bad)  # type: ignore[arg-type]
    # Refused keys claimed nothing: their str look-alikes are still free, "taken" still taken.
    assert manager.claim("1", 3600) is True
    assert manager.claim("b'x'", 3600) is True
    assert manager.claim("taken", 3600) is False


def test_release_claim_lets_the_key_be_claimed_again(manager: StateManager) -> None:
    assert manager.claim("wa:1:wamid.A", 3600) is True
    assert manager.claim("wa:1:wamid.B", 3600) is True
    manager.release_claim("wa:1:wamid.A")
    manager.release_claim("never-claimed")  # no error
    assert manager.claim("wa:1:wamid.A", 3600) is True
    assert manager.claim("wa:1:wamid.A", 3600) is False
    assert manager.claim("wa:1:wamid.B", 3600) is False, "release touched another key"


@pytest.mark.parametrize("bad", [5, "", None, b"s", "\ud800", "s" * 5000])
def test_bad_state_ids_are_refused_and_nothing_is_written(manager: StateManager, bad: Any) -> None:
    writes: list[Callable[[], object]] = [
        lambda: manager.save("c", bad, {}, expected_version=0),
        lambda: manager.compare_and_set("c", bad, {}, expected_version=0),
    ]
    if not isinstance(manager, DictSeedManager):
        writes.append(lambda: manager.set_state("c", bad, {}))
    for write in writes:
        with pytest.raises(InvalidStateIdError):
            write()
        assert manager.load("c") is None
    manager.set_state("c", "ok", {})  # the chat is still usable
    assert manager.get_state("c") == ("ok", {})


BAD_CONTEXTS: dict[str, Any] = {**KIT_CONTEXTS, "lone surrogate key": {"\udc00": 1}}


@pytest.mark.parametrize("name", sorted(BAD_CONTEXTS))
def test_bad_contexts_are_refused_by_direct_writes(manager: StateManager, name: str) -> None:
    bad = BAD_CONTEXTS[name]
    manager.set_state("c", "kept", {"n": 1})
    before = snapshot(manager, "c")
    writes: list[Callable[[], object]] = [
        lambda: manager.save("c", "s", bad, expected_version=before[2] if before else 0),
        lambda: manager.compare_and_set("c", "s", bad, expected_version=before[2] if before else 0),
        lambda: manager.save("new", "s", bad, expected_version=0),
    ]
    if not isinstance(manager, DictSeedManager):
        writes.append(lambda: manager.set_state("c", "s", bad))
        writes.append(lambda: manager.set_state("new", "s", bad))
    for write in writes:
        with pytest.raises(ContextSerializationError):
            write()
    assert snapshot(manager, "c") == before
    assert manager.load("new") is None


def test_the_depth_limit_is_exact(manager: StateManager) -> None:
    deepest = nested_context(MAX_CONTEXT_DEPTH)
    manager.set_state("deep", "s", deepest)
    assert manager.get_state("deep") == ("s", deepest)
    version = snapshot(manager, "deep")
    assert version is not None
    with pytest.raises(ContextSerializationError):
        manager.save(
            "deep", "s", nested_context(MAX_CONTEXT_DEPTH + 1), expected_version=version[2]
        )
    assert manager.get_state("deep") == ("s", deepest)


def _returning(manager: StateManager, context: Any) -> ChatOrchestrator:
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, ctx: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context if text == "bad" else {"n": 1}

    return orchestrator


@pytest.mark.parametrize("name", sorted(set(BAD_CONTEXTS) - {"not a dict"}))  # that one is
def test_bad_contexts_are_refused_through_handle_message(  # an InvalidStepResultError
    manager: StateManager, name: str
) -> None:
    orchestrator = _returning(manager, BAD_CONTEXTS[name])
    orchestrator.handle_message("c", None)
    before = snapshot(manager, "c")
    with pytest.raises(ContextSerializationError):
        orchestrator.handle_message("c", "bad")
    assert snapshot(manager, "c") == before
    assert_free(manager, "c")


def test_a_deep_context_reads_back_from_a_deep_stack(manager: StateManager) -> None:
    """What was stored from a shallow stack loads back with little stack left."""
    import sys

    deepest = nested_context(MAX_CONTEXT_DEPTH)
    manager.set_state("deep", "s", deepest)
    limit = sys.getrecursionlimit()

    def at_depth(frames: int) -> tuple[str, dict[str, Any]] | None:
        return at_depth(frames - 1) if frames else manager.get_state("deep")

    # Leave roughly 3 x MAX_CONTEXT_DEPTH frames for the backend, its driver and the parser.
    assert at_depth(limit - 3 * MAX_CONTEXT_DEPTH - 100) == ("s", deepest)
