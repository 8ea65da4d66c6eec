"""What an operator does with the pipeline's dead letters: list, replay, drop.

A dead letter is an event whose step kept failing (parked after the worker's last try) or a
message no retry could deliver (a permanent channel error, or too many transient ones).
Replaying an event puts a copy at the end of its chat's inbox (under a new key, so the
original's dedup mark does not hide it); replaying a message puts it back in its chat's
outbox, in the same conditional write as any turn. Each drops the letter only after that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import PipelineError, VersionConflictError
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.section import OutItem, merge, split
from chat_orchestrator.pipeline.store import DeadLetter, PipelineStore
from chat_orchestrator.state_managers.base import (
    MAX_CLAIM_KEY_LENGTH,
    StateManager,
    StateUpdate,
)

__all__ = ["drop_letter", "find_letter", "replay_letter"]

log = logging.getLogger(__name__)


def find_letter(store: PipelineStore, letter_id: str) -> DeadLetter:
    for letter in store.dead_letters(limit=1_000_000):
        if letter.id == letter_id:
            return letter
    raise PipelineError(f"no dead letter {letter_id!r}")


def drop_letter(store: PipelineStore, letter_id: str) -> None:
    if not store.drop_dead(letter_id):
        raise PipelineError(f"no dead letter {letter_id!r}")
    log.info("dead letter %s dropped by an operator", letter_id)


def replay_letter(manager: StateManager, letter_id: str) -> str:
    """Put the letter's event back in the inbox (or its message in the outbox); its new key."""
    store = manager.pipeline_store()
    letter = find_letter(store, letter_id)
    if letter.kind == "event":
        event = Event.from_json(letter.body)
        key = _replay_key(letter, event.key)
        copy = Event(key, event.chat_id, event.user_input, event.kind, event.channel, event.data)
        store.add([copy])
    elif letter.kind == "send":
        key = _resend(manager, letter)
    else:
        raise PipelineError(f"dead letter {letter_id!r} is of unknown kind {letter.kind!r}")
    store.drop_dead(letter_id)
    log.info("dead letter %s replayed by an operator as %s", letter_id, key)
    return key


def _replay_key(letter: DeadLetter, key: str) -> str:
    """The copy's key: new (the original's dedup mark must not hide it), but the same for
    every replay of this letter, so a replay repeated after a failed drop stores nothing
    twice. Bounded: a key of the longest size still replays."""
    name = f"{letter.id}\x00{letter.at!r}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(name).hexdigest()[:24]
    head = f"replay:{digest}:"
    return head + key[: MAX_CLAIM_KEY_LENGTH - len(head)]


def _resend(manager: StateManager, letter: DeadLetter) -> str:
    try:
        item = OutItem.from_dict(json.loads(letter.body))
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"dead letter {letter.id!r} holds no message: {exc}") from exc
    for _ in range(10):  # a conditional write; a turn in between just means try again
        turn = manager.begin_turn(letter.chat_id)
        try:
            record = turn.record
            if record is None:
                raise PipelineError(f"chat {letter.chat_id!r} has no record to send from")
            context, section = split(letter.chat_id, record.context)
            fresh = OutItem(section.next_n, item.chat_id, item.text, item.options)
            section.out.append(fresh)
            section.next_n += 1
            update = StateUpdate(record.state_id, context, encode_context(context))
            turn.commit(merge(update, section, letter.chat_id))
        except VersionConflictError:
            continue
        finally:
            turn.close()
        manager.pipeline_store().schedule(letter.chat_id, time.time())
        return f"outbox:{fresh.n}"
    raise PipelineError(f"chat {letter.chat_id!r} kept changing; try the replay again")
