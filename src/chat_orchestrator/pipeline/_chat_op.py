"""One worker's pass over one chat, as a sans-I/O operation (``chat_orchestrator._io``).

Every decision of the pipeline's turn is here, once: which event runs next, what a failure
means, when to retry, what to deliver, when the chat needs looking at again. It yields the
commands below; the sync driver (threads) and the async driver (tasks) in ``worker`` carry
them out, so a thread worker and an asyncio worker on one store behave alike.

Each action happens under the chat's turn lease and ends in one conditional write of the
chat's record (``section``): a turn stores its new state, its event marked done, its replies
and its timers together; a delivery removes the message it sent; a failure stores its count.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chat_orchestrator._io import Op
from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import (
    ChatOrchestratorError,
    CorruptStateError,
    StateManagerError,
    TurnError,
    describe_chat_id,
)
from chat_orchestrator.pipeline.events import TIMER, Event
from chat_orchestrator.pipeline.outbox import classify
from chat_orchestrator.pipeline.scope import TIMEOUT_TIMER, TurnScope
from chat_orchestrator.pipeline.section import Failure, OutItem, Section, Timer, merge, split
from chat_orchestrator.pipeline.store import DeadLetter, Taken
from chat_orchestrator.state_managers.base import StateRecord, StateUpdate

if TYPE_CHECKING:
    from chat_orchestrator.orchestrator import ChatOrchestrator
    from chat_orchestrator.pipeline.worker import WorkerSettings

__all__ = ["chat_op"]

log = logging.getLogger("chat_orchestrator.pipeline.worker")


# -- commands -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Begin:
    chat_id: str


@dataclass(frozen=True, slots=True)
class Commit:
    lease: Any
    update: StateUpdate


@dataclass(frozen=True, slots=True)
class Close:
    lease: Any


@dataclass(frozen=True, slots=True)
class RunStep:
    step: Any
    state_id: str
    chat_id: str
    user_input: str | None
    context: dict[str, Any]
    scope: TurnScope


@dataclass(frozen=True, slots=True)
class Send:
    item: OutItem


@dataclass(frozen=True, slots=True)
class Park:
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class Release:
    """Mark ``keys`` done in the inbox and end the work lease (one command: stores fuse it)."""

    taken: Taken
    keys: list[str]
    next_at: float | None


@dataclass(frozen=True, slots=True)
class Mark:
    """Store a delivery's bookkeeping (no step ran) conditionally on ``expected``."""

    chat_id: str
    update: StateUpdate
    expected: int


@dataclass(slots=True)
class Outcome:
    """What one pass did (the worker's counters)."""

    turns: int = 0
    sent: int = 0
    parked: int = 0
    failed: int = 0


# -- the pass -------------------------------------------------------------------------------
def chat_op(
    orchestrator: ChatOrchestrator,
    settings: WorkerSettings,
    taken: Taken,
    events: list[Event],
    fast_mark: bool = False,
) -> Op[Outcome]:
    """Work on ``taken``'s chat (``events``: its oldest pending ones, read when it was taken)
    until it has nothing ready, or the pass's budget is spent."""
    chat_id = taken.chat_id
    outcome = Outcome()
    finished: list[str] = []
    next_at: float | None = None
    try:
        pending_keys = {event.key for event in events}
        for _ in range(settings.budget):
            lease = yield Begin(chat_id)
            try:
                action = yield from _one_action(
                    orchestrator, settings, lease, events, pending_keys, finished, outcome,
                    fast_mark,
                )  # fmt: skip
            except BaseException:
                yield Close(lease)
                raise
            yield Close(lease)
            if action is not None:  # nothing more to do now: come back at ``action``
                next_at = None if action == _IDLE else action
                break
        else:
            next_at = time.time()  # budget spent with work left: let other chats go first
    except StateManagerError as exc:
        # The store, not the step: nothing was written; look again soon (never drop).
        level = logging.ERROR if isinstance(exc, CorruptStateError) else logging.WARNING
        log.log(level, "chat %s deferred: %s", describe_chat_id(chat_id), exc)
        next_at = time.time() + (60.0 if isinstance(exc, CorruptStateError) else settings.retry)
    yield Release(taken, finished, next_at)
    return outcome


_IDLE = -1.0


def _one_action(
    orchestrator: ChatOrchestrator,
    settings: WorkerSettings,
    lease: Any,
    events: list[Event],
    pending_keys: set[str],
    finished: list[str],
    outcome: Outcome,
    fast_mark: bool = False,
) -> Op[float | None]:
    """Do the chat's next thing under ``lease``; None: done one, go on; else when to return.

    ``fast_mark``: the manager's ``compare_and_set`` is one atomic conditional write, so the
    replies of the chat's last turn are sent at once and marked sent by it (no new lease).
    """
    record: StateRecord | None = lease.record
    chat_id = lease.chat_id
    now = time.time()
    if record is not None:
        user_context, section = split(chat_id, record.context)
    else:
        user_context, section = {}, Section()
    # Events the record consumed whose inbox mark was lost (a crash between the two writes):
    # mark them now. Keys the inbox no longer holds are dropped from the record's list.
    for key in section.done:
        if key in pending_keys and key not in finished:
            finished.append(key)
    section.done = [key for key in section.done if key in pending_keys]

    # 1. Replies already committed go out first, in order. Their removal is stored by the
    #    next write under this lease (the next turn's, or one of its own), so a backlog
    #    costs one write per turn, not two; a crash before that write sends them again.
    changed = yield from _deliver_ready(settings, chat_id, section, outcome)
    now = time.time()

    # 2. Due timers, earliest first.
    due = [timer for timer in section.timers.values() if timer.due <= now]
    if due and record is not None:
        timer = min(due, key=lambda t: t.due)
        yield from _fire(
            orchestrator, settings, lease, record, user_context, section, timer, now, outcome
        )
        return None

    # 3. The oldest pending event the record has not consumed.
    event = next((e for e in events if e.key not in section.done and e.key not in finished), None)
    gated = None
    if event is not None:
        fail = section.fail
        if fail is not None and fail.key == event.key and fail.after > now:
            gated = fail.after
        else:
            committed = yield from _turn(
                orchestrator, settings, lease, record, user_context, section, event, now, outcome
            )
            if event.key in section.done:
                finished.append(event.key)
            more = any(e.key not in section.done and e.key not in finished for e in events)
            if committed is None or not fast_mark or more or not section.out:
                return None  # the next lease sends the replies (with the next turn's write)
            if _due_now(section, time.time()):
                return None
            return (yield from _send_committed(settings, chat_id, section, committed, outcome))
    if changed:
        yield Commit(lease, _rewrite(record, orchestrator, user_context, section, chat_id))
        if gated is None and not section.out and not _due_now(section, time.time()):
            nxt = section.next_due(time.time())
            return _IDLE if nxt is None else nxt
        return None
    nxt = _earliest(gated, section.next_due(now))
    return _IDLE if nxt is None else nxt


def _deliver_ready(
    settings: WorkerSettings, chat_id: str, section: Section, outcome: Outcome
) -> Op[bool]:
    """Send the chat's replies that are due, in order; True when the section changed."""
    changed = False
    now = time.time()
    while section.out:
        item = section.out[0]
        if max(item.after, section.last_sent + settings.per_chat_interval) > now:
            break
        changed = True
        if not (yield from _deliver(settings, chat_id, section, item, outcome)):
            break  # a transient failure: this chat's later replies wait behind it
        now = time.time()
    return changed


def _send_committed(
    settings: WorkerSettings,
    chat_id: str,
    section: Section,
    committed: tuple[int, StateUpdate],
    outcome: Outcome,
) -> Op[float | None]:
    """Deliver the replies the turn just committed, then mark them with one conditional
    write on the version that commit made. Returns when to look at the chat again."""
    version, update = committed
    if (yield from _deliver_ready(settings, chat_id, section, outcome)):
        yield Mark(chat_id, merge(update, section, chat_id), version)
    if section.out and section.out[0].after <= time.time():
        return None
    nxt = section.next_due(time.time())
    return _IDLE if nxt is None else nxt


def _due_now(section: Section, now: float) -> bool:
    return any(timer.due <= now for timer in section.timers.values())


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _rewrite(
    record: StateRecord | None,
    orchestrator: ChatOrchestrator,
    user_context: dict[str, Any],
    section: Section,
    chat_id: str,
) -> StateUpdate:
    """The record as it is, with a new section (no step ran)."""
    state_id = orchestrator.initial_state if record is None else record.state_id
    update = StateUpdate(state_id, user_context, encode_context(user_context))
    return merge(update, section, chat_id)


def _deliver(
    settings: WorkerSettings, chat_id: str, section: Section, item: OutItem, outcome: Outcome
) -> Op[bool]:
    """Send the chat's first reply; True when it left the outbox (sent, or given up on)."""
    try:
        yield Send(item)
    except Exception as exc:
        verdict = classify(exc, item.tries + 1, settings.send_backoff, settings.max_send_backoff)
        item.tries += 1
        item.error = verdict.error[:2000]
        if not verdict.permanent and item.tries < settings.max_send_tries:
            item.after = time.time() + verdict.delay
            log.warning(
                "message %d to chat %s not sent (try %d), retrying in %.1f s: %s",
                item.n,
                describe_chat_id(item.chat_id),
                item.tries,
                verdict.delay,
                verdict.error,
            )
            return False
        # Given up: the message becomes a dead letter an operator can see and resend.
        log.error(
            "message %d to chat %s failed for good after %d tries: %s",
            item.n,
            describe_chat_id(item.chat_id),
            item.tries,
            verdict.error,
        )
        letter = DeadLetter(
            f"send:{chat_id}:{item.n}",  # stable: a crash before the record write re-parks it
            chat_id,
            "send",
            _item_json(item),
            verdict.error[:2000],
            time.time(),
        )
        yield Park(letter)
        section.out.pop(0)
        outcome.parked += 1
        return True
    section.out.pop(0)
    if settings.per_chat_interval:
        section.last_sent = time.time()
    outcome.sent += 1
    return True


def _item_json(item: OutItem) -> str:
    return json.dumps(item.to_dict(), ensure_ascii=False, separators=(",", ":"))


def _fire(
    orchestrator: ChatOrchestrator,
    settings: WorkerSettings,
    lease: Any,
    record: StateRecord,
    user_context: dict[str, Any],
    section: Section,
    timer: Timer,
    now: float,
    outcome: Outcome,
) -> Op[None]:
    chat_id = lease.chat_id
    del section.timers[timer.name]
    if timer.state is not None and timer.state != record.state_id:
        # Bound to a state the chat has left: the chat moved on, so the timer is dropped.
        log.info(
            "timer %r of chat %s dropped: set in state %r, the chat is in %r",
            timer.name,
            describe_chat_id(chat_id),
            timer.state,
            record.state_id,
        )
        yield Commit(lease, _rewrite(record, orchestrator, user_context, section, chat_id))
        return
    event = Event(
        key=f"timer:{timer.name}:{timer.due!r}",
        chat_id=chat_id,
        user_input=None,
        kind=TIMER,
        data={"timer": timer.name, "due": timer.due, "state": timer.state, **timer.data},
    )
    yield from _turn(
        orchestrator,
        settings,
        lease,
        record,
        user_context,
        section,
        event,
        now,
        outcome,
        state=timer.target,
        is_timer=True,
    )


def _turn(
    orchestrator: ChatOrchestrator,
    settings: WorkerSettings,
    lease: Any,
    record: StateRecord | None,
    user_context: dict[str, Any],
    section: Section,
    event: Event,
    now: float,
    outcome: Outcome,
    *,
    state: str | None = None,
    is_timer: bool = False,
) -> Op[tuple[int, StateUpdate] | None]:
    """Run ``event``'s turn; (new version, the step's update) when it committed with a
    version to build on (None: failed, or the manager reports no version)."""
    chat_id = lease.chat_id
    scope = TurnScope(event, now)
    # The turn's bookkeeping is staged on a copy: output that cannot be stored (a reserved
    # key, a lone surrogate, too deep, not JSON) fails the turn like a failing step (retried,
    # then parked) and leaves the section as it was for that bookkeeping.
    staged = _copy(section)
    try:
        step, state_id, context, _ = orchestrator._prepare(chat_id, record, state)
        if record is not None:
            context = user_context
        result, sent = yield RunStep(step, state_id, chat_id, event.user_input, context, scope)
        update = orchestrator._finish(chat_id, state_id, step, result)
        # Success: one write holds the new state, the event consumed, the replies, the timers.
        if not is_timer:
            staged.done.append(event.key)
        if staged.fail is not None and staged.fail.key == event.key:
            staged.fail = None
        for chat, text, options in sent:
            staged.out.append(OutItem(staged.next_n, chat, text, options))
            staged.next_n += 1
        _apply_timers(orchestrator, staged, scope, update.state_id)
        version = yield Commit(lease, merge(update, staged, chat_id))
    except TurnError as exc:
        # The step's fault: count the try, retry with backoff, park after the last one.
        if is_timer:
            log.error("timer turn failed for chat %s: %s", describe_chat_id(chat_id), exc)
            outcome.failed += 1
            # A timer that fails is parked at once: it has no sender to redeliver it.
            yield from _park_event(
                settings,
                lease,
                record,
                orchestrator,
                user_context,
                section,
                event,
                str(exc),
                outcome,
            )
            return None
        yield from _failed(
            settings, lease, record, orchestrator, user_context, section, event, exc, outcome
        )
        return None
    _adopt(section, staged)
    outcome.turns += 1
    return None if version is None else (version, update)


def _copy(section: Section) -> Section:
    """A copy a turn may change (it only appends and replaces, never edits an item)."""
    return Section(
        list(section.done),
        list(section.out),
        section.next_n,
        dict(section.timers),
        section.fail,
        section.last_sent,
    )


def _adopt(section: Section, staged: Section) -> None:
    """Make ``section`` (the pass's own object) what the committed ``staged`` is."""
    section.done, section.out, section.next_n = staged.done, staged.out, staged.next_n
    section.timers, section.fail, section.last_sent = staged.timers, staged.fail, staged.last_sent


def _apply_timers(
    orchestrator: ChatOrchestrator, section: Section, scope: TurnScope, new_state: str
) -> None:
    for name in scope.cancelled:
        section.timers.pop(name, None)
    for name, request in scope.timers.items():
        section.timers[name] = Timer(
            name, request.due, new_state if request.bound else None, request.data
        )
    timeout = orchestrator.timeouts.get(new_state)
    if timeout is not None:
        seconds, target = timeout
        section.timers[TIMEOUT_TIMER] = Timer(
            TIMEOUT_TIMER, scope.now + seconds, new_state, {}, target
        )
    else:
        section.timers.pop(TIMEOUT_TIMER, None)


def _failed(
    settings: WorkerSettings,
    lease: Any,
    record: StateRecord | None,
    orchestrator: ChatOrchestrator,
    user_context: dict[str, Any],
    section: Section,
    event: Event,
    exc: ChatOrchestratorError,
    outcome: Outcome,
) -> Op[None]:
    chat_id = lease.chat_id
    outcome.failed += 1
    tries = (section.fail.tries if section.fail and section.fail.key == event.key else 0) + 1
    error = f"{type(exc).__name__}: {exc}"
    if tries >= settings.max_attempts:
        yield from _park_event(
            settings, lease, record, orchestrator, user_context, section, event, error, outcome
        )
        return
    delay = min(settings.max_backoff, settings.backoff * 2 ** (tries - 1))
    log.warning(
        "event %s of chat %s failed (try %d of %d), retrying in %.1f s: %s",
        event.key,
        describe_chat_id(chat_id),
        tries,
        settings.max_attempts,
        delay,
        error,
    )
    section.fail = Failure(event.key, tries, error[:2000], time.time() + delay)
    yield Commit(lease, _rewrite(record, orchestrator, user_context, section, chat_id))


def _park_event(
    settings: WorkerSettings,
    lease: Any,
    record: StateRecord | None,
    orchestrator: ChatOrchestrator,
    user_context: dict[str, Any],
    section: Section,
    event: Event,
    error: str,
    outcome: Outcome,
) -> Op[None]:
    chat_id = lease.chat_id
    log.error("event %s of chat %s parked: %s", event.key, describe_chat_id(chat_id), error)
    # The letter first: a crash before the record write runs the event again (and parks the
    # same letter again, under the same id), never loses it.
    yield Park(
        DeadLetter(
            f"event:{event.key}", chat_id, "event", event.to_json(), error[:2000], time.time()
        )
    )
    if event.kind != TIMER:
        section.done.append(event.key)
    if section.fail is not None and section.fail.key == event.key:
        section.fail = None
    outcome.parked += 1
    yield Commit(lease, _rewrite(record, orchestrator, user_context, section, chat_id))
