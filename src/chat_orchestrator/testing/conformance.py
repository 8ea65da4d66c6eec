"""A conformance kit for state managers: run it on your own backend in a test.

::

    from chat_orchestrator.testing.conformance import check_state_manager

    def test_my_manager_conforms():
        check_state_manager(lambda: MyStateManager(...))   # each call: an empty store

It runs Hypothesis property tests (``pip install "chat-orchestrator[testing]"``):

* a rule-based state machine driving ``get_state``/``set_state``/``delete_state``/``load``/
  ``save`` (with current, stale and zero versions) and whole turns (``begin_turn`` ->
  ``commit``/``close``) over a small pool of awkward chat ids, against a plain dict model;
* round trips of arbitrary JSON contexts and of arbitrary Unicode chat ids;
* input rules (:func:`run_input_rules`): every public method refuses bad chat ids, claim
  keys, state ids and contexts (NaN, tuples, non-str keys, lone surrogates, nesting deeper
  than ``MAX_CONTEXT_DEPTH``) with an error of our tree, touching no other chat; claims
  never alias (``1`` vs ``"1"``) and ``release_claim`` frees a key.

The async kit, :func:`check_async_state_manager` (same factory rule), drives the same rules
through ``begin_turn_async``/``commit``/``close``, ``load_async``, ``delete_state_async``,
``claim_async`` and ``release_claim_async``, and checks that a cancelled turn or wait leaves
the record and frees the chat at once; it takes a built-in manager, a user's sync manager
or a user's own ``AsyncStateManager``.

Versions are compared as the manager reports them, so a manager with content-fingerprint
versions (the default for the three seed methods) passes as well as a counting one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import MissingDependencyError, VersionConflictError
from chat_orchestrator.state_managers.base import StateManager, StateUpdate
from chat_orchestrator.testing._async_rules import (
    check_async_state_manager,
    run_async_cancellation,
    run_async_input_rules,
    run_async_round_trips,
    run_async_rule_based,
)
from chat_orchestrator.testing._input_rules import (
    BAD_CHAT_IDS,
    BAD_CONTEXTS,
    BAD_STATE_IDS,
    nested_context,
    run_input_rules,
)
from chat_orchestrator.testing._strategies import (
    CHAT_ID_POOL,
    SETTINGS,
    chat_ids,
    id_pool,
    json_contexts,
    state_ids,
    stores_nul,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - the kit needs hypothesis
    raise MissingDependencyError("hypothesis", "testing") from exc

__all__ = [
    "BAD_CHAT_IDS",
    "BAD_CONTEXTS",
    "BAD_STATE_IDS",
    "CHAT_ID_POOL",
    "chat_ids",
    "check_async_state_manager",
    "check_state_manager",
    "id_pool",
    "json_contexts",
    "nested_context",
    "run_async_cancellation",
    "run_async_input_rules",
    "run_async_round_trips",
    "run_async_rule_based",
    "run_input_rules",
    "run_json_round_trips",
    "run_rule_based",
]


@dataclass
class _Expected:
    state_id: str
    context: dict[str, Any]
    version: int
    #: Every version this chat has shown; any but the current one is stale.
    seen: set[int] = field(default_factory=set)


def run_rule_based(factory: Callable[[], StateManager], *, max_examples: int = 40) -> None:
    """Drive a fresh manager per run with random operations; compare with a dict model."""
    nul = stores_nul(factory)
    pool = id_pool(nul)

    class Conformance(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.manager = factory()
            self.model: dict[str, _Expected] = {}

        def _observe(self, chat_id: str) -> None:
            record = self.manager.load(chat_id)
            assert record is not None, f"{chat_id!r} vanished"
            expected = self.model[chat_id]
            expected.version = record.version
            expected.seen.add(record.version)

        @rule(
            chat_id=st.sampled_from(pool),
            state_id=state_ids(nul),
            context=json_contexts(),
        )
        def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
            self.manager.set_state(chat_id, state_id, context)
            old = self.model.get(chat_id)
            self.model[chat_id] = _Expected(
                state_id, context, 0, set() if old is None else old.seen
            )
            self._observe(chat_id)

        @rule(chat_id=st.sampled_from(pool))
        def delete_state(self, chat_id: str) -> None:
            self.manager.delete_state(chat_id)
            self.model.pop(chat_id, None)

        @rule(
            chat_id=st.sampled_from(pool),
            context=json_contexts(),
            which=st.sampled_from(["current", "stale", "zero"]),
        )
        def save(self, chat_id: str, context: dict[str, Any], which: str) -> None:
            expected = self.model.get(chat_id)
            current = 0 if expected is None else expected.version
            if which == "current":
                version = current
            elif which == "zero":
                version = 0
            else:
                stale = sorted((expected.seen if expected else set()) - {current})
                version = stale[0] if stale else current + 1_000_003
            if version != current:
                try:
                    self.manager.save(chat_id, "saved", context, expected_version=version)
                except VersionConflictError:
                    return
                raise AssertionError(f"save with stale version {version} (now {current}) passed")
            new_version = self.manager.save(chat_id, "saved", context, expected_version=version)
            assert new_version != 0
            seen = set() if expected is None else expected.seen
            self.model[chat_id] = _Expected("saved", context, new_version, seen | {new_version})
            self._observe(chat_id)
            assert self.model[chat_id].version == new_version, "load disagrees with save's version"

        @rule(chat_id=st.sampled_from(pool), context=json_contexts(), commit=st.booleans())
        def turn(self, chat_id: str, context: dict[str, Any], commit: bool) -> None:
            lease = self.manager.begin_turn(chat_id)
            try:
                expected = self.model.get(chat_id)
                if expected is None:
                    assert lease.record is None
                else:
                    assert lease.record is not None
                    assert (lease.record.state_id, lease.record.context) == (
                        expected.state_id,
                        expected.context,
                    )
                if commit:
                    lease.commit(StateUpdate("turned", context, encode_context(context)))
            finally:
                lease.close()
            if commit:
                old = self.model.get(chat_id)
                self.model[chat_id] = _Expected(
                    "turned", context, 0, set() if old is None else old.seen
                )
                self._observe(chat_id)

        @invariant()
        def matches_model(self) -> None:
            for chat_id in pool:
                expected = self.model.get(chat_id)
                got = self.manager.get_state(chat_id)
                if expected is None:
                    assert got is None, f"{chat_id!r} should be absent, found {got!r}"
                else:
                    assert got == (expected.state_id, expected.context), chat_id
                    record = self.manager.load(chat_id)
                    assert record is not None
                    assert record.version == expected.version

        def teardown(self) -> None:
            self.manager.close()

    run_state_machine_as_test(
        Conformance,
        settings=settings(max_examples=max_examples, stateful_step_count=25, **SETTINGS),
    )


def run_json_round_trips(factory: Callable[[], StateManager], *, max_examples: int = 60) -> None:
    """Arbitrary JSON contexts and arbitrary Unicode chat ids store and load back exactly."""
    manager = factory()
    nul = getattr(manager, "stores_nul", True)
    try:

        @settings(max_examples=max_examples, **SETTINGS)
        @given(chat_id=chat_ids(nul), context=json_contexts(), other=chat_ids(nul))
        def round_trip(chat_id: str, context: dict[str, Any], other: str) -> None:
            manager.set_state(chat_id, "s", context)
            assert manager.get_state(chat_id) == ("s", context)
            if other != chat_id:
                manager.set_state(other, "o", {})
                assert manager.get_state(chat_id) == ("s", context), "two ids share a record"
                manager.delete_state(other)
            manager.delete_state(chat_id)
            assert manager.get_state(chat_id) is None

        round_trip()
    finally:
        manager.close()


def check_state_manager(
    factory: Callable[[], StateManager], *, max_examples: int = 40, seed_methods: bool = True
) -> None:
    """Run the whole kit; ``factory()`` must return a manager over an empty store each call.

    ``seed_methods=False``: see :func:`run_input_rules`.
    """
    run_input_rules(factory, seed_methods=seed_methods)
    run_rule_based(factory, max_examples=max_examples)
    run_json_round_trips(factory, max_examples=max_examples)
