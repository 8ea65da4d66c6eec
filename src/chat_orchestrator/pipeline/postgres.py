"""The pipeline in the PostgreSQL database of :class:`PostgresStateManager`, beside its chats.

Tables (``<schema>.<prefix>pipe_*``, created by the manager's versioned schema, step 2, so
by the first operation, ``setup()`` or ``chat-orchestrator store init``; never dropped):

* ``pipe_inbox``: one row per event key: ``key`` (the primary key: the dedup), ``seq``
  (from a sequence: a chat's rows sort in arrival order), ``chat``, ``body`` (the event's
  JSON; NULL once done, so a done event keeps only its key and expiry) and ``until`` (epoch
  ms after which a done key is forgotten). Partial indexes on ``(chat, seq) WHERE body IS
  NOT NULL`` (``pending``: the chat's pending rows only) and ``until WHERE body IS NULL``
  (the sweep of expired done keys).
* ``pipe_work``: one row per chat with something to do: ``ready_at`` (the chat's next due
  time: now for news, a timer's due time from ``section.next_due``, a lease's end; a partial
  index orders the takes and the timers), ``stamp`` (from the ``pipe_stamps`` sequence:
  global, so a row dropped and made again never reuses a stamp a late release holds),
  ``owner`` and ``until`` (0: no lease).
* ``pipe_dead``: dead letters by id, indexed by ``(at, id)`` and ``(chat, at, id)``.

Every operation is **one statement** (``_pg_sql``), so one round trip and one transaction:
``add`` stores the events and schedules the chat; ``take_pending`` leases the lowest ready
chat with ``FOR UPDATE SKIP LOCKED`` and returns its pending events; ``finish_release``
marks the events done and ends the lease. The statements run on the manager's pools, sync
or async (the same statements: the ops are generators), a connection checked out per
statement, so nothing is held while a step runs.

Idle workers wait for ``NOTIFY`` (sent by the statements that make a chat ready earlier)
on one dedicated listening connection per store (``_pg_listen``) instead of polling.

**Ids:** as for the records, PostgreSQL text cannot hold NUL: chat ids holding NUL are
refused with InvalidChatIdError, event keys with InvalidClaimKeyError, dead letter ids with
PipelineError, before anything is sent. Every other id round-trips exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from chat_orchestrator._io import Op
from chat_orchestrator.errors import (
    InvalidChatIdError,
    InvalidClaimKeyError,
    PipelineError,
    describe_chat_id,
)
from chat_orchestrator.pipeline._pg_listen import Listener
from chat_orchestrator.pipeline._pg_sql import PipelineStatements
from chat_orchestrator.pipeline.store import DeadLetter, PipelineStore
from chat_orchestrator.state_managers._postgres_pool import Command
from chat_orchestrator.state_managers.base import validate_chat_id, validate_claim_key

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.postgres import PostgresStateManager

__all__ = ["PostgresPipelineStore"]

logger = logging.getLogger(__name__)


def _chat(chat_id: str) -> str:
    validate_chat_id(chat_id)
    if "\x00" in chat_id:
        raise InvalidChatIdError(
            f"chat id {describe_chat_id(chat_id)} holds NUL, which PostgreSQL text cannot store"
        )
    return chat_id


def _key(key: str) -> str:
    validate_claim_key(key)
    if "\x00" in key:
        raise InvalidClaimKeyError(
            f"event key {describe_chat_id(key)} holds NUL, which PostgreSQL text cannot store"
        )
    return key


def _letter_id(letter_id: object) -> str:
    # Not validate_claim_key: a letter id is "event:" + a key, so it may be longer than one.
    if type(letter_id) is not str or not letter_id:
        raise PipelineError(f"a dead letter id must be a non-empty str, not {letter_id!r}")
    try:
        letter_id.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError("a dead letter id must be valid Unicode") from None
    if "\x00" in letter_id:
        raise PipelineError("a dead letter id cannot hold NUL in PostgreSQL")
    return letter_id


class PostgresPipelineStore(PipelineStore):
    """Inbox, work index and dead letters in the manager's schema (its pools)."""

    name = "postgres"

    def __init__(self, manager: PostgresStateManager) -> None:
        self._manager = manager
        self._sql = PipelineStatements(manager._names)
        self._listener = Listener(self._listen_connection, self._sql.channel)

    def __repr__(self) -> str:
        return f"PostgresPipelineStore(manager={self._manager!r})"

    # -- I/O: the manager's pools and its error translation ----------------------------------
    def _execute(self, command: Any) -> Any:
        return self._manager._execute(command)

    async def _execute_async(self, command: Any) -> Any:
        return await self._manager._execute_async(command)

    def _q(self, what: str, name: str | None, command: Command, *, retry: bool = True) -> Op[Any]:
        # Every statement here is safe to send again after a broken connection (a lost
        # reply at worst leaves a lease to expire), so by default it is retried once.
        return self._manager._query(what, name, command, retry=retry)

    def _listen_connection(self) -> psycopg.Connection[Any]:
        pool = self._manager._sync.pool
        conninfo = pool.conninfo if isinstance(pool.conninfo, str) else ""
        kwargs = dict(pool.kwargs) if isinstance(pool.kwargs, dict) else {}
        kwargs["autocommit"] = True
        return psycopg.connect(conninfo, **kwargs)

    # -- operations -------------------------------------------------------------------------
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        _chat(chat_id)
        keys = [_key(key) for key, _ in events]
        bodies = [text for _, text in events]
        command = Command(self._sql.add, (chat_id, now, now + retention_ms, keys, bodies))
        rows = yield from self._q("store the events of chat", chat_id, command)
        stored = set(rows[0][0] or ())
        return [key in stored for key in keys]

    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        _chat(chat_id)
        command = Command(self._sql.pending, (chat_id, max(0, limit)))
        rows = yield from self._q("read the inbox of chat", chat_id, command)
        return [row[0] for row in rows]

    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        _chat(chat_id)
        checked = [_key(key) for key in keys]
        command = Command(self._sql.finish, (chat_id, checked), "rowcount")
        yield from self._q("mark events done in chat", chat_id, command)

    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        _chat(chat_id)
        yield from self._q("schedule chat", chat_id, Command(self._sql.schedule, (chat_id, at)))

    def _take_rows(
        self, now: int, lease_ms: int, owner: str, limit: int
    ) -> Op[tuple[str, int, list[str]] | None]:
        command = Command(self._sql.take, (now, now + lease_ms, owner, max(0, limit)))
        rows = yield from self._q("take a chat from the work index", None, command)
        if not rows:
            return None
        return rows[0][0], int(rows[0][1]), [row[2] for row in rows if row[2] is not None]

    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        got = yield from self._take_rows(now, lease_ms, owner, 0)
        return None if got is None else (got[0], got[1])

    def _take_pending_op(
        self, now: int, lease_ms: int, owner: str, limit: int
    ) -> Op[tuple[str, int, list[str]] | None]:
        return (yield from self._take_rows(now, lease_ms, owner, limit))

    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        command = Command(self._sql.renew, (until, until, chat_id, owner), "rowcount")
        changed = yield from self._q("renew the pipeline lease of chat", chat_id, command)
        return bool(changed == 1)

    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        yield from self._finish_release_op(chat_id, (), owner, stamp, next_at)

    def _finish_release_op(
        self, chat_id: str, keys: Sequence[str], owner: str, stamp: int, next_at: int | None
    ) -> Op[None]:
        _chat(chat_id)
        checked = [_key(key) for key in keys]
        params = (chat_id, owner, stamp, next_at, checked)
        command = Command(self._sql.finish_release, params)
        yield from self._q("release chat", chat_id, command)

    def _next_ready_op(self) -> Op[int | None]:
        rows = yield from self._q("read the work index", None, Command(self._sql.next_ready))
        return None if not rows else int(rows[0][0])

    def _park_op(self, letter: DeadLetter) -> Op[None]:
        _letter_id(letter.id)
        _chat(letter.chat_id)
        params = (letter.id, letter.chat_id, letter.at, letter.to_json())
        command = Command(self._sql.park, params, "rowcount")
        yield from self._q("park a dead letter of chat", letter.chat_id, command)

    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        if chat_id is None:
            command = Command(self._sql.dead_all, (max(0, limit),))
        else:
            command = Command(self._sql.dead_of_chat, (_chat(chat_id), max(0, limit)))
        rows = yield from self._q("list dead letters", None, command)
        return [row[0] for row in rows]

    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        command = Command(self._sql.drop_dead, (_letter_id(letter_id),), "rowcount")
        changed = yield from self._q("drop a dead letter", None, command)
        return bool(changed == 1)

    # -- waiting for news -----------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        """Return on a NOTIFY of this store's channel (news or an earlier timer), or after
        ``timeout`` seconds."""
        self._listener.wait(timeout)

    async def wait_async(self, timeout: float) -> None:
        await self._listener.wait_async(timeout)

    def close(self) -> None:
        """Stop the listening thread and close its connection (the pools are the manager's)."""
        self._listener.close()
