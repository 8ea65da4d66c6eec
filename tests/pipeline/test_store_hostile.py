"""Chat ids and event keys of every odd shape round-trip and never reach another chat."""

from __future__ import annotations

import pytest

from chat_orchestrator.errors import InvalidChatIdError, InvalidClaimKeyError, PipelineError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.store import DeadLetter
from chat_orchestrator.state_managers.base import MAX_CHAT_ID_LENGTH, StateManager

#: Ids that are separators, query operators, hash tags, paths or prefixes of each other.
ODD = [
    "a",
    "a\x00",
    "a\x00b",
    "\x00",
    "$where",
    "$",
    "a.b",
    "a.b.",
    "{}",
    "{a}",
    "{a}:b",
    ":",
    "a:b",
    "a:b:",
    "\U0001f600",
    "\u00e9",
    "e\u0301",  # decomposed é: another id than "\u00e9"
    " a ",
    "A",
    "../a",
    "'; DROP TABLE pipe_inbox; --",
    "x" * MAX_CHAT_ID_LENGTH,
    "x" * (MAX_CHAT_ID_LENGTH - 1),
]


def _odd_for(manager: StateManager) -> list[str]:
    """The odd ids this store keeps: all, or (PostgreSQL text) all but those holding NUL."""
    if getattr(manager, "stores_nul", True):
        return ODD
    return [odd for odd in ODD if "\x00" not in odd]


def test_odd_chat_ids_and_keys_round_trip_apart(pipe_manager: StateManager) -> None:
    store = pipe_manager.pipeline_store()
    ODD = _odd_for(pipe_manager)  # noqa: N806 - the module's list, narrowed for this store
    for n, odd in enumerate(ODD):
        # The key is the chat id too: keys and chats of one shape must not meet either.
        assert store.add([Event(odd, odd, f"text {n}")]) == [True]
    for n, odd in enumerate(ODD):
        assert store.pending(odd) == [Event(odd, odd, f"text {n}")]
    taken = set()
    while (got := store.take("w", 30)) is not None:
        taken.add(got.chat_id)
    assert taken == set(ODD)
    store.finish(ODD[0], [ODD[1]])  # another chat's key: nothing happens to either
    assert len(store.pending(ODD[1])) == 1
    assert len(store.pending(ODD[0])) == 1
    for odd in ODD:
        store.finish(odd, [odd])
        assert store.pending(odd) == []
        assert store.add([Event(odd, odd, "again")]) == [False]


def test_odd_dead_letter_ids_round_trip_apart(pipe_manager: StateManager) -> None:
    store = pipe_manager.pipeline_store()
    ODD = _odd_for(pipe_manager)  # noqa: N806 - the module's list, narrowed for this store
    letters = [
        DeadLetter(f"event:{odd}", odd, "event", Event(odd, odd, "x").to_json(), "boom", n)
        for n, odd in enumerate(ODD)
    ]
    for letter in letters:
        store.park(letter)
    assert store.dead_letters() == letters
    for letter in letters:
        assert store.dead_letters(chat_id=letter.chat_id) == [letter]
    assert store.drop_dead(letters[1].id)
    assert store.dead_letters(chat_id=ODD[0]) == [letters[0]]
    assert not store.drop_dead(letters[1].id)


def test_a_store_without_nul_refuses_nul_ids_and_stores_nothing(
    pipe_manager: StateManager,
) -> None:
    if getattr(pipe_manager, "stores_nul", True):
        pytest.skip("this store keeps NUL ids (test_odd_chat_ids_and_keys_round_trip_apart)")
    store = pipe_manager.pipeline_store()
    for odd in ODD:
        if "\x00" not in odd:
            continue
        with pytest.raises(InvalidChatIdError):
            store.add([Event("k", odd, "x")])
        with pytest.raises(InvalidClaimKeyError):
            store.add([Event(odd, "c", "x")])
        with pytest.raises(InvalidChatIdError):
            store.schedule(odd, 0)
        with pytest.raises(InvalidChatIdError):
            store.pending(odd)
        with pytest.raises(PipelineError):
            store.park(DeadLetter(f"event:{odd}", "c", "event", "{}", "boom", 1.0))
        with pytest.raises(InvalidChatIdError):
            store.park(DeadLetter("event:k", odd, "event", "{}", "boom", 1.0))
    assert store.pending("c") == []
    assert store.take("w", 30) is None
    assert store.dead_letters() == []
    assert store.add([Event("k", "c", "x")]) == [True]  # the refused key was never stored
