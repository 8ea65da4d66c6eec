"""The conformance kit through the async API: the same rules, awaited.

Re-exported by :mod:`chat_orchestrator.testing.conformance`. What the engine's async path
needs of a store, checked for a built-in manager (sync and async faces), a user's sync
manager (its threaded defaults) and a user's own :class:`AsyncStateManager`:

* ``begin_turn_async`` -> ``commit``/``close``, ``load_async`` and ``delete_state_async``
  agree with a dict model (a rule-based machine; a manager with a sync face also runs sync
  turns in between, so both faces must read and write the same records);
* arbitrary JSON contexts and Unicode chat ids round-trip;
* input rules: bad chat ids and claim keys are refused quickly by every async method,
  touching no other chat; claims never alias and ``release_claim_async`` frees a key;
* cancellation: a turn cancelled mid-step (``asyncio.timeout``) leaves the record and frees
  the chat at once, and so does a task cancelled while it waits for a busy chat.

The conditional write itself (stale versions) is checked by the sync kit, which can write
behind a turn's back; the async API has no write outside a turn.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import (
    InvalidChatIdError,
    InvalidClaimKeyError,
    MissingDependencyError,
)
from chat_orchestrator.state_managers.async_base import AsyncStateManager
from chat_orchestrator.state_managers.base import StateManager, StateRecord, StateUpdate
from chat_orchestrator.testing._input_rules import BAD_CHAT_IDS, BAD_CLAIM_KEYS, judge_refusal
from chat_orchestrator.testing._strategies import (
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
        precondition,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - the kit needs hypothesis
    raise MissingDependencyError("hypothesis", "testing") from exc

__all__ = [
    "AnyManager",
    "check_async_state_manager",
    "run_async_cancellation",
    "run_async_input_rules",
    "run_async_round_trips",
    "run_async_rule_based",
]

#: A manager served through its async methods: a built-in or user sync one, or an async one.
AnyManager: TypeAlias = StateManager | AsyncStateManager
T = TypeVar("T")

_VICTIM = "conformance-victim"
#: Longer than any honest release takes; shorter than every lease or timeout that a leaked
#: lock would have to outlive (the built-in leases are seconds).
_AT_ONCE = 1.0


def _update(state_id: str, context: dict[str, Any]) -> StateUpdate:
    return StateUpdate(state_id, context, encode_context(context))


async def _commit(
    manager: AnyManager, chat_id: str, state_id: str, context: dict[str, Any]
) -> None:
    async with await manager.begin_turn_async(chat_id) as turn:
        await turn.commit(_update(state_id, context))


async def _fields(manager: AnyManager, chat_id: str) -> tuple[str, dict[str, Any], int] | None:
    record = await manager.load_async(chat_id)
    return None if record is None else (record.state_id, record.context, record.version)


async def _assert_free(manager: AnyManager, chat_id: str, what: str) -> None:
    """The chat's next turn begins at once (a leaked lock or lease would make it wait)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(_AT_ONCE):
            turn = await manager.begin_turn_async(chat_id)
    except TimeoutError:
        raise AssertionError(f"{what} left chat {chat_id!r} locked") from None
    await turn.close()
    assert time.monotonic() - started < _AT_ONCE, f"{what} left chat {chat_id!r} locked"


async def _expect(
    error: type[Exception], what: str, call: Callable[..., Coroutine[Any, Any, object]], *args: Any
) -> None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(_AT_ONCE * 5):  # a manager spinning on a bad id fails, not hangs
            await call(*args)
    except Exception as exc:
        judge_refusal(error, what, started, exc)
    else:
        judge_refusal(error, what, started, None)


async def _close(manager: AnyManager) -> None:
    await manager.close_async()


def _run(
    factory: Callable[[], AnyManager], rules: Callable[[AnyManager], Coroutine[Any, Any, None]]
) -> None:
    manager = factory()

    async def main() -> None:
        try:
            await rules(manager)
        finally:
            await _close(manager)

    asyncio.run(main())


# -- input rules ------------------------------------------------------------------------------
def run_async_input_rules(factory: Callable[[], AnyManager]) -> None:
    """Every async method refuses bad chat ids and claim keys, touching no other chat."""
    _run(factory, _input_rules)


async def _input_rules(manager: AnyManager) -> None:
    await _commit(manager, _VICTIM, "kept", {"n": 1})
    before = await _fields(manager, _VICTIM)

    async def turn(chat_id: Any) -> None:
        await (await manager.begin_turn_async(chat_id)).close()

    calls: dict[str, Callable[[Any], Coroutine[Any, Any, object]]] = {
        "begin_turn_async": turn,
        "load_async": manager.load_async,
        "delete_state_async": manager.delete_state_async,
    }
    for method, call in calls.items():
        for bad in BAD_CHAT_IDS:
            await _expect(InvalidChatIdError, f"{method}({bad!r:.40})", call, bad)
        assert await _fields(manager, _VICTIM) == before, f"{method} changed another chat"
        await _assert_free(manager, _VICTIM, method)
    for name in ("5", "None", "b'x'"):  # what a refused id would alias to, had it been used
        assert await manager.load_async(name) is None, f"a refused id wrote chat {name!r}"

    assert await manager.claim_async("conformance-taken", 3600) is True, "a fresh key must claim"
    for bad in BAD_CLAIM_KEYS:
        await _expect(InvalidClaimKeyError, f"claim_async({bad!r})", manager.claim_async, bad, 60)
        await _expect(
            InvalidClaimKeyError, f"release_claim_async({bad!r})", manager.release_claim_async, bad
        )
    assert await manager.claim_async("1", 3600) is True, "claim_async(1) claimed '1'"
    assert await manager.claim_async("b'x'", 3600) is True, "claim_async(b'x') claimed \"b'x'\""
    assert await manager.claim_async("conformance-taken", 3600) is False, "claimed twice"
    await manager.release_claim_async("conformance-taken")
    await manager.release_claim_async("conformance-never-claimed")
    assert await manager.claim_async("conformance-taken", 3600) is True, "release did not free it"
    assert await manager.claim_async("1", 3600) is False, "release_claim_async freed another key"
    assert await _fields(manager, _VICTIM) == before


# -- cancellation -------------------------------------------------------------------------------
def run_async_cancellation(factory: Callable[[], AnyManager]) -> None:
    """A cancelled turn or wait leaves the record as it was and the chat free at once."""
    _run(factory, _cancellation)


async def _cancellation(manager: AnyManager) -> None:
    from chat_orchestrator.orchestrator import ChatOrchestrator
    from chat_orchestrator.senders.base import AsyncMessageSender
    from chat_orchestrator.testing.recording import RecordingSender

    bot = ChatOrchestrator(manager, RecordingSender())
    never = asyncio.Event()

    async def stuck(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await never.wait()  # a step awaiting an LLM that does not answer
        return "kept", {"n": -1}

    bot.register_step("start")(stuck)
    bot.register_step("kept")(stuck)
    await _commit(manager, _VICTIM, "kept", {"n": 1})
    before = await _fields(manager, _VICTIM)
    for chat_id in (_VICTIM, "conformance-new"):
        for _ in range(3):
            try:
                async with asyncio.timeout(0.05):
                    await bot.handle_message_async(chat_id, "x")
            except TimeoutError:
                pass
            else:
                raise AssertionError("the stuck step returned")
            await _assert_free(manager, chat_id, "a turn cancelled mid-step")
    assert await _fields(manager, _VICTIM) == before, "a cancelled turn changed the record"
    assert await manager.load_async("conformance-new") is None, "a cancelled turn stored a chat"

    holder = await manager.begin_turn_async(_VICTIM)
    try:
        waiters = [asyncio.create_task(manager.begin_turn_async(_VICTIM)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            try:
                await waiter
            except asyncio.CancelledError:
                continue
            raise AssertionError("a turn began while another held the chat")
    finally:
        await holder.close()
    await asyncio.sleep(0.05)  # a wait that outlived its cancellation would take the chat now
    await _assert_free(manager, _VICTIM, "a task cancelled while waiting for the chat")
    assert await _fields(manager, _VICTIM) == before


# -- the model -------------------------------------------------------------------------------------
def run_async_rule_based(factory: Callable[[], AnyManager], *, max_examples: int = 40) -> None:
    """Random async turns, deletes and loads (and sync turns, where the manager has them)."""
    nul = stores_nul(factory)
    pool = id_pool(nul)

    class AsyncConformance(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.runner = asyncio.Runner()
            self.manager = factory()
            self.model: dict[str, tuple[str, dict[str, Any]]] = {}
            self.versions: dict[str, int] = {}  # what load_async last showed

        def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return self.runner.run(coroutine)

        def _check_read(self, chat_id: str, record: StateRecord | None) -> None:
            expected = self.model.get(chat_id)
            if expected is None:
                assert record is None, f"{chat_id!r} should be absent, found {record!r}"
                return
            assert record is not None, f"{chat_id!r} vanished"
            assert (record.state_id, record.context) == expected, chat_id
            assert record.version != 0, "a stored record has version 0"
            if chat_id in self.versions:
                assert record.version == self.versions[chat_id], "version changed with no write"

        @rule(
            chat_id=st.sampled_from(pool),
            state_id=state_ids(nul),
            context=json_contexts(),
            commit=st.booleans(),
        )
        def turn(self, chat_id: str, state_id: str, context: dict[str, Any], commit: bool) -> None:
            async def go() -> None:
                turn = await self.manager.begin_turn_async(chat_id)
                try:
                    self._check_read(chat_id, turn.record)
                    if commit:
                        await turn.commit(_update(state_id, context))
                finally:
                    await turn.close()

            self.run(go())
            if commit:
                # A copy: a store that keeps (or hands back) the caller's own dict is caught.
                self.model[chat_id] = (state_id, copy.deepcopy(context))
                self.versions.pop(chat_id, None)

        @precondition(lambda self: isinstance(self.manager, StateManager))
        @rule(chat_id=st.sampled_from(pool), context=json_contexts())
        def sync_turn(self, chat_id: str, context: dict[str, Any]) -> None:
            # The sync face of the same manager must see and make the same records.
            assert isinstance(self.manager, StateManager)
            with self.manager.begin_turn(chat_id) as turn:
                self._check_read(chat_id, turn.record)
                turn.commit(_update("sync", context))
            self.model[chat_id] = ("sync", copy.deepcopy(context))
            self.versions.pop(chat_id, None)

        @rule(chat_id=st.sampled_from(pool))
        def delete(self, chat_id: str) -> None:
            self.run(self.manager.delete_state_async(chat_id))
            self.model.pop(chat_id, None)
            self.versions.pop(chat_id, None)

        @invariant()
        def matches_model(self) -> None:
            for chat_id in pool:
                record = self.run(self.manager.load_async(chat_id))
                self._check_read(chat_id, record)
                if record is not None:
                    self.versions[chat_id] = record.version

        def teardown(self) -> None:
            try:
                self.run(_close(self.manager))
            finally:
                self.runner.close()

    run_state_machine_as_test(
        AsyncConformance,
        settings=settings(max_examples=max_examples, stateful_step_count=25, **SETTINGS),
    )


def run_async_round_trips(factory: Callable[[], AnyManager], *, max_examples: int = 60) -> None:
    """Arbitrary JSON contexts and Unicode chat ids go through async turns and back exactly."""
    manager = factory()
    nul = getattr(manager, "stores_nul", True)
    with asyncio.Runner() as runner:
        try:

            @settings(max_examples=max_examples, **SETTINGS)
            @given(chat_id=chat_ids(nul), context=json_contexts(), other=chat_ids(nul))
            def round_trip(chat_id: str, context: dict[str, Any], other: str) -> None:
                runner.run(_round_trip(manager, chat_id, context, other))

            round_trip()
        finally:
            runner.run(_close(manager))


async def _round_trip(
    manager: AnyManager, chat_id: str, context: dict[str, Any], other: str
) -> None:
    await _commit(manager, chat_id, "s", context)
    record = await manager.load_async(chat_id)
    assert record is not None, "a committed chat vanished"
    assert (record.state_id, record.context) == ("s", context)
    if other != chat_id:
        await _commit(manager, other, "o", {})
        record = await manager.load_async(chat_id)
        assert record is not None, "writing another id deleted this one"
        assert record.context == context, "two ids share a record"
        await manager.delete_state_async(other)
    await manager.delete_state_async(chat_id)
    assert await manager.load_async(chat_id) is None


def check_async_state_manager(factory: Callable[[], AnyManager], *, max_examples: int = 40) -> None:
    """Run the async kit; ``factory()`` must return a manager over an empty store each call.

    Works for built-in managers, a user's sync manager and a user's own
    :class:`~chat_orchestrator.state_managers.async_base.AsyncStateManager`.
    """
    run_async_input_rules(factory)
    run_async_cancellation(factory)
    run_async_rule_based(factory, max_examples=max_examples)
    run_async_round_trips(factory, max_examples=max_examples)
