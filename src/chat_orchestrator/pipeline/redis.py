"""The pipeline in Redis (standalone or Cluster), beside :class:`RedisStateManager`'s records.

Keys (scripts in ``pipeline._redis_scripts``):

* per chat, under the chat's own hash tag (the slot of its record and lock):
  ``<prefix>{<digest>}:q:<chat>`` (ZSET pending event key -> arrival seq),
  ``...:b:<chat>`` (HASH event key -> event JSON) and ``...:d:<chat>`` (ZSET event key -> the
  end of its dedup retention, epoch ms; the whole key expires a retention after its last add);
* global, under ``<prefix>{pipeline}:``: ``r`` (ZSET chat -> when it can be taken), ``w``
  (HASH chat -> work entry: ready_at, stamp, lease owner and until), ``n`` (stamp counter),
  and the dead letters ``x`` (HASH id -> JSON), ``xo`` (ZSET id -> at) and ``xc:<chat>``.

Chat ids and event keys are never parsed out of key names: a key name is a fixed prefix, a
fixed-length tag, one letter and the id verbatim, and event keys are ZSET members and hash
fields (binary safe), so NUL, braces, colons or emoji cannot collide or reach another chat.

Every operation is one Lua script (atomic on the server; on a cluster every script touches
one slot), except ``add``: the append (per-chat slot) and the schedule (global slot) are two
scripts, in that order. How each stays correct when workers race or a reply is lost (the
manager's ``_command_op`` retries a lost reply once, so every script may run twice):

* ``add``: dedup and append are one script; a repeat finds its keys seen and appends nothing
  (it then reports them as not new). A lost schedule is repaired by Meta's redelivery, which
  re-schedules even when every event was seen. Dedup is per chat (the mark lives in the
  chat's slot): an event key reused in another chat is not suppressed there.
* ``schedule``: ``min`` and a new stamp; a repeat only bumps the stamp again (a release then
  sees "news" and leaves the chat ready: one extra look, never a lost event).
* ``take``: the first chat in ``r`` with a score <= now. Its score is when it can be taken:
  ``ready_at`` or, while leased, ``max(ready_at, until)``, so the first due chat is always free
  and a take is one ``ZRANGEBYSCORE ... LIMIT`` (O(log n)), however many chats are leased or
  have news. Two takes are serialised by the server; the loser sees the new lease. A lost
  reply leaves the chat leased to a worker that does not know it: it comes back when the
  lease ends (one lease of delay, nothing lost).
* ``renew`` / ``release``: keyed by owner and stamp, so a repeat is a no-op or the same
  change; a release by a worker whose lease was taken over keeps the new owner's lease in the
  score, so the chat still comes back if that owner dies.
* ``finish``, ``park``: idempotent; ``drop_dead`` repeated reports False the second time.

Differences from ``MemoryPipelineStore`` (deliberate): ``next_ready`` reports when the first
chat can be *taken* (a leased chat with news counts from its lease's end, not from the
news), and a chat leased with no ``ready_at`` (a stale owner's release) comes back at the end
of the lease instead of being forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chat_orchestrator._io import Op
from chat_orchestrator.errors import PipelineError
from chat_orchestrator.pipeline import _redis_scripts as lua
from chat_orchestrator.pipeline.store import DeadLetter, PipelineStore
from chat_orchestrator.state_managers.base import validate_chat_id, validate_claim_key
from chat_orchestrator.state_managers.redis import _tagged, _text

if TYPE_CHECKING:
    from chat_orchestrator.state_managers._redis_scripts import Script
    from chat_orchestrator.state_managers.redis import RedisStateManager

__all__ = ["RedisPipelineStore"]

#: How many times a dead letter's park/drop follows a letter that moves to another chat.
_MOVES = 8


def _letter_id(letter_id: object) -> str:
    if type(letter_id) is not str or not letter_id:
        raise PipelineError(f"a dead letter id must be a non-empty str, not {letter_id!r}")
    try:
        letter_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PipelineError(f"a dead letter id cannot be stored: {exc}") from exc
    return letter_id


def _limit(limit: object) -> int:
    if type(limit) is not int:
        raise PipelineError(f"limit must be an int, not {type(limit).__name__}")
    return limit


class RedisPipelineStore(PipelineStore):
    """Inbox, work index and dead letters in the manager's Redis, through its clients."""

    name = "redis"

    def __init__(self, manager: RedisStateManager) -> None:
        self._manager = manager
        base = f"{manager._prefix}{{pipeline}}:"
        self._ready, self._work, self._stamps = f"{base}r", f"{base}w", f"{base}n"
        self._dead, self._dead_order, self._dead_chat = f"{base}x", f"{base}xo", f"{base}xc:"

    def __repr__(self) -> str:
        return f"RedisPipelineStore({self._manager!r})"

    # -- keys and plumbing ------------------------------------------------------------------
    def _inbox_keys(self, chat_id: str) -> tuple[str, str, str]:
        base = _tagged(self._manager._prefix, chat_id)
        return f"{base}q:{chat_id}", f"{base}b:{chat_id}", f"{base}d:{chat_id}"

    def _script(
        self, what: str, subject: str, script: Script, keys: tuple[str, ...], *args: str | int
    ) -> Op[Any]:
        # The manager's own plumbing: EVALSHA with the EVAL fallback, one retry of a lost
        # reply, errors of our tree with credentials redacted.
        return (yield from self._manager._script_op(what, subject, script, keys, *args))

    def _execute(self, command: Any) -> Any:
        return self._manager._execute(command)

    async def _execute_async(self, command: Any) -> Any:
        return await self._manager._execute_async(command)

    # -- inbox ------------------------------------------------------------------------------
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        args: list[str | int] = [retention_ms, now]
        for key, text in events:
            args += [key, text]
        keys = self._inbox_keys(chat_id)
        added = yield from self._script("append to the inbox of", chat_id, lua.ADD, keys, *args)
        # Second command, other slot: a lost one is repaired by the redelivery (see above).
        yield from self._schedule_op(chat_id, now)
        return [bool(flag) for flag in added]

    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        chat_id, limit = validate_chat_id(chat_id), _limit(limit)
        if limit < 1:
            return []
        queue, bodies, _ = self._inbox_keys(chat_id)
        texts = yield from self._script(
            "read the inbox of", chat_id, lua.PENDING, (queue, bodies), limit
        )
        return [_text(text) for text in texts]

    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        chat_id = validate_chat_id(chat_id)
        checked = [validate_claim_key(key) for key in keys]
        queue, bodies, _ = self._inbox_keys(chat_id)
        yield from self._script(
            "mark events done in the inbox of", chat_id, lua.FINISH, (queue, bodies), *checked
        )

    # -- work index ---------------------------------------------------------------------------
    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        keys = (self._ready, self._work, self._stamps)
        yield from self._script("schedule", chat_id, lua.SCHEDULE, keys, chat_id, at)

    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        keys = (self._ready, self._work)
        got = yield from self._script(
            "take a ready chat for", owner, lua.TAKE, keys, now, lease_ms, owner
        )
        if not got:
            return None
        return _text(got[0]), int(got[1])

    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        renewed = yield from self._script(
            "renew the pipeline lease of", chat_id, lua.RENEW, (self._ready, self._work),
            chat_id, owner, until,
        )  # fmt: skip
        return bool(renewed)

    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        yield from self._script(
            "release the pipeline lease of", chat_id, lua.RELEASE, (self._ready, self._work),
            chat_id, owner, stamp, "" if next_at is None else next_at,
        )  # fmt: skip

    def _next_ready_op(self) -> Op[int | None]:
        score = yield from self._script(
            "read the work index for", "next_ready", lua.NEXT_READY, (self._ready,)
        )
        return None if score is None else int(float(_text(score)))

    # -- dead letters ---------------------------------------------------------------------
    def _park_op(self, letter: DeadLetter) -> Op[None]:
        letter_id, chat_id = _letter_id(letter.id), validate_chat_id(letter.chat_id)
        # An int is a float to the type checker (and to the other stores): accept it.
        at = letter.at
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise PipelineError(f"a dead letter's time must be a finite number, not {at!r}")
        text = letter.to_json()
        keys = (self._dead, self._dead_order, self._dead_chat + chat_id)
        args: tuple[str | int, ...] = (letter_id, chat_id, repr(float(at)), text)
        reply = yield from self._script("park a dead letter of", chat_id, lua.PARK, keys, *args)
        for _ in range(_MOVES):
            if not isinstance(reply, list):
                return
            # Replacing a letter filed under another chat: that chat's index key too.
            old = _text(reply[0])
            reply = yield from self._script(
                "park a dead letter of", chat_id, lua.PARK_MOVE,
                (*keys, self._dead_chat + old), *args, old,
            )  # fmt: skip
        raise PipelineError(f"dead letter {letter_id!r} keeps moving between chats")

    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        limit = _limit(limit)
        if chat_id is not None:
            chat_id = validate_chat_id(chat_id)
        if limit < 1:
            return []
        order = self._dead_order if chat_id is None else self._dead_chat + chat_id
        texts = yield from self._script(
            "list the dead letters of", chat_id or "*", lua.DEAD, (self._dead, order), limit
        )
        return [_text(text) for text in texts]

    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        letter_id = _letter_id(letter_id)
        text = yield from self._manager._command_op(
            "read dead letter", letter_id, ("HGET", self._dead, letter_id)
        )
        for _ in range(_MOVES):
            if text is None:
                return False
            chat_id = DeadLetter.from_json(text).chat_id
            keys = (self._dead, self._dead_order, self._dead_chat + chat_id)
            reply = yield from self._script(
                "drop dead letter", letter_id, lua.DROP_DEAD, keys, letter_id, chat_id
            )
            if not isinstance(reply, list):
                return bool(reply)
            text = yield from self._manager._command_op(
                "read dead letter", letter_id, ("HGET", self._dead, letter_id)
            )
        raise PipelineError(f"dead letter {letter_id!r} keeps moving between chats")
