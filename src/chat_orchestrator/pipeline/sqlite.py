"""The pipeline in the SQLite database file of :class:`SQLiteStateManager`, beside its records.

Tables (created on first use, ``IF NOT EXISTS``: idempotent, and a database without them
still opens with older code, so ``user_version`` stays as it is):

* ``pipe_inbox``: one row per event key: ``seq`` (AUTOINCREMENT, so it only grows and a
  chat's rows sort in arrival order even after old rows are deleted), ``key`` (UNIQUE: the
  dedup), ``chat``, ``body`` (the event's JSON; NULL once done, so a done event keeps only
  its key and deadline), ``until`` (epoch ms after which the key is forgotten). A partial
  index on ``(chat, seq) WHERE body IS NOT NULL`` makes ``pending`` a range read of the
  chat's pending rows only; a partial index on ``until WHERE body IS NULL`` makes the sweep
  of expired done keys a range read.
* ``pipe_work``: one row per chat with something to do: ``ready_at`` (partial index, NULL:
  nothing to do but a live lease), ``stamp``, ``owner`` and ``until`` (0: no lease).
* ``pipe_stamp``: one row, the counter stamps come from. A global counter, not a per-row
  one: a row dropped and made again must never get a stamp a late release still holds.
* ``pipe_dead``: dead letters by id, indexed by ``(at, id)`` and ``(chat, at, id)``.

Ids and keys are bound parameters (TEXT, compared byte for byte): NUL, emoji, ``$``, quotes
are plain data and never reach another chat's rows.

Atomicity and races. Every write op is one statement or one ``BEGIN IMMEDIATE``
transaction, and SQLite serialises writers on the database, so two workers never interleave
inside an op:

* ``add``: sweep (at most :data:`SWEEP_BATCH` expired done keys), then per event "forget its
  key if expired and done" + ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING``, then the
  schedule, all in one transaction. A retried add (reply lost) finds its keys and stores
  nothing twice, and still schedules the chat. A pending event is never swept, even past the
  retention: its key keeps deduplicating until it is done (safer than forgetting it).
* ``take``: a lock-free read first (idle workers poll every ~50 ms and must not queue on
  the write lock nor fsync), then, only if some chat is ready, one ``UPDATE ... WHERE chat =
  (SELECT ... ORDER BY ready_at LIMIT 1) RETURNING``: the choice and the lease are one
  statement, so two racing workers never take one chat; the loser gets the next chat or
  None. A take whose reply is lost leaves a lease that ends after ``lease``: the chat comes
  back then, as for a crashed worker.
* ``renew`` and ``finish``: single conditional statements (idempotent on retry).
* ``release``: one transaction (update, then drop the row if it has no work and no lease);
  a retried release finds the lease already gone and the stamp unchanged: same result.
* ``schedule``: one transaction (bump the counter, upsert ``min(ready_at, at)``).

Durability: the inbox, schedules and dead letters are written at the manager's
``synchronous`` level (an acked webhook must survive a power cut); take, renew and release
at the lease level (at most NORMAL), because losing one only makes a chat come back when
its lease ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from chat_orchestrator._io import Op
from chat_orchestrator.errors import PipelineError
from chat_orchestrator.pipeline.store import BlockingPipelineStore, DeadLetter
from chat_orchestrator.state_managers.base import validate_chat_id, validate_claim_key

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

__all__ = ["SCHEMA", "SWEEP_BATCH", "SQLitePipelineStore"]

T = TypeVar("T")

#: Expired done keys deleted by one add at most (bounds the add's cost; adds outnumber
#: finishes, so the sweep keeps up).
SWEEP_BATCH = 100

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pipe_inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        chat TEXT NOT NULL,
        body TEXT,
        until INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pipe_inbox_pending ON pipe_inbox (chat, seq) "
    "WHERE body IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS pipe_inbox_expiry ON pipe_inbox (until) WHERE body IS NULL",
    """CREATE TABLE IF NOT EXISTS pipe_work (
        chat TEXT PRIMARY KEY,
        ready_at INTEGER,
        stamp INTEGER NOT NULL,
        owner TEXT,
        until INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS pipe_work_ready ON pipe_work (ready_at) WHERE ready_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS pipe_stamp (id INTEGER PRIMARY KEY CHECK (id = 0), "
    "n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO pipe_stamp (id, n) VALUES (0, 0)",
    """CREATE TABLE IF NOT EXISTS pipe_dead (
        id TEXT PRIMARY KEY,
        chat TEXT NOT NULL,
        at REAL NOT NULL,
        letter TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pipe_dead_by_time ON pipe_dead (at, id)",
    "CREATE INDEX IF NOT EXISTS pipe_dead_by_chat ON pipe_dead (chat, at, id)",
)

# -- statements (parameters named in the comment above each) ------------------------------
# now, batch size
SWEEP = """
DELETE FROM pipe_inbox WHERE seq IN (
    SELECT seq FROM pipe_inbox WHERE body IS NULL AND until <= ?1 LIMIT ?2
)
"""
# key, now: a key past its retention is forgotten before the insert sees it.
FORGET = "DELETE FROM pipe_inbox WHERE key = ?1 AND body IS NULL AND until <= ?2"
# key, chat, body, until -> a row if stored now
INSERT = """
INSERT INTO pipe_inbox (key, chat, body, until) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (key) DO NOTHING RETURNING seq
"""
# chat, limit -> (body,) oldest first
PENDING = """
SELECT body FROM pipe_inbox WHERE chat = ?1 AND body IS NOT NULL ORDER BY seq LIMIT ?2
"""
# chat, key
FINISH = "UPDATE pipe_inbox SET body = NULL WHERE key = ?2 AND chat = ?1 AND body IS NOT NULL"
# -> the new stamp
NEXT_STAMP = "UPDATE pipe_stamp SET n = n + 1 WHERE id = 0 RETURNING n"
# chat, at, stamp
SCHEDULE = """
INSERT INTO pipe_work (chat, ready_at, stamp) VALUES (?1, ?2, ?3)
ON CONFLICT (chat) DO UPDATE SET
    ready_at = CASE WHEN ready_at IS NULL THEN ?2 ELSE min(ready_at, ?2) END,
    stamp = ?3
"""
# now -> a row if some chat is ready and free (a read: no write lock)
READY = """
SELECT 1 FROM pipe_work WHERE ready_at <= ?1 AND until <= ?1 ORDER BY ready_at LIMIT 1
"""
# owner, lease end, now -> (chat, stamp) of the chat taken. ``until <= now``: a free row
# has 0, a crashed worker's lease has ended.
TAKE = """
UPDATE pipe_work SET owner = ?1, until = ?2, ready_at = ?2
WHERE chat = (
    SELECT chat FROM pipe_work WHERE ready_at <= ?3 AND until <= ?3 ORDER BY ready_at LIMIT 1
)
RETURNING chat, stamp
"""
# until, chat, owner
RENEW = """
UPDATE pipe_work SET ready_at = CASE WHEN ready_at = until THEN ?1 ELSE ready_at END,
                     until = ?1
WHERE chat = ?2 AND owner = ?3
"""
# chat, owner, stamp, next_at (SET sees the old row in every expression)
RELEASE = """
UPDATE pipe_work SET
    owner = CASE WHEN owner = ?2 THEN NULL ELSE owner END,
    until = CASE WHEN owner = ?2 THEN 0 ELSE until END,
    ready_at = CASE
        WHEN stamp = ?3 THEN ?4
        WHEN ?4 IS NULL THEN ready_at
        WHEN ready_at IS NULL THEN ?4
        ELSE min(ready_at, ?4)
    END
WHERE chat = ?1
"""
# chat
DROP_IDLE = "DELETE FROM pipe_work WHERE chat = ?1 AND ready_at IS NULL AND owner IS NULL"
NEXT_READY = "SELECT ready_at FROM pipe_work WHERE ready_at IS NOT NULL ORDER BY ready_at LIMIT 1"
# id, chat, at, letter json
PARK = "INSERT OR REPLACE INTO pipe_dead (id, chat, at, letter) VALUES (?1, ?2, ?3, ?4)"
DEAD_ALL = "SELECT letter FROM pipe_dead ORDER BY at, id LIMIT ?1"
DEAD_OF_CHAT = "SELECT letter FROM pipe_dead WHERE chat = ?2 ORDER BY at, id LIMIT ?1"
DROP_DEAD = "DELETE FROM pipe_dead WHERE id = ?1"


def _in_transaction(db: sqlite3.Connection, body: Callable[[], T]) -> T:
    """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction (the connection autocommits)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT (disk full) leaves it open too
            db.execute("ROLLBACK")
        raise
    return result


def create_schema(db: sqlite3.Connection) -> None:
    """The pipeline's tables and indexes, if missing (any process may run it, at once)."""

    def create() -> None:
        for statement in SCHEMA:
            db.execute(statement)

    _in_transaction(db, create)


def _check_letter_id(letter_id: object) -> None:
    # Not validate_claim_key: a letter id is "event:" + a key, so it may be longer than one.
    if type(letter_id) is not str or not letter_id:
        raise PipelineError(f"a dead letter id must be a non-empty str, not {letter_id!r}")
    try:
        letter_id.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError("a dead letter id must be valid Unicode") from None


class SQLitePipelineStore(BlockingPipelineStore):
    """Inbox, work index and dead letters in the manager's database (its connections)."""

    name = "sqlite"

    def __init__(self, manager: SQLiteStateManager) -> None:
        self._manager = manager

    def __repr__(self) -> str:
        return f"SQLitePipelineStore(path={str(self._manager.path)!r})"

    # The manager's per-thread connection at the level a write needs, and its error
    # translation (busy, full disk, read-only, damaged file) for every op.
    def _db(self, durable: bool = True) -> sqlite3.Connection:
        manager = self._manager
        return manager._connection().at(manager.synchronous if durable else manager._lease_level)

    def _call(self, what: str, function: Callable[[], T], chat_id: str | None = None) -> T:
        return self._manager._call(what, function, chat_id)

    # -- operations -------------------------------------------------------------------------
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        return (yield partial(self._add, chat_id, events, retention_ms, now))  # type: ignore[no-any-return]

    def _add(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> list[bool]:
        def add() -> list[bool]:
            db = self._db()

            def body() -> list[bool]:
                db.execute(SWEEP, (now, SWEEP_BATCH))
                added = []
                for key, text in events:
                    db.execute(FORGET, (key, now))
                    rows = db.execute(INSERT, (key, chat_id, text, now + retention_ms)).fetchall()
                    added.append(bool(rows))
                self._schedule_in(db, chat_id, now)
                return added

            return _in_transaction(db, body)

        return self._call("store the events of chat", add, chat_id)

    @staticmethod
    def _schedule_in(db: sqlite3.Connection, chat_id: str, at: int) -> None:
        stamp = db.execute(NEXT_STAMP).fetchall()[0][0]
        db.execute(SCHEDULE, (chat_id, at, stamp))

    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        return (yield partial(self._pending, validate_chat_id(chat_id), max(0, limit)))  # type: ignore[no-any-return]

    def _pending(self, chat_id: str, limit: int) -> list[str]:
        rows = self._call(
            "read the inbox of chat",
            lambda: self._manager._connection().db.execute(PENDING, (chat_id, limit)).fetchall(),
            chat_id,
        )
        return [row[0] for row in rows]

    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        checked = [validate_claim_key(key) for key in keys]
        yield partial(self._finish, validate_chat_id(chat_id), checked)

    def _finish(self, chat_id: str, keys: list[str]) -> None:
        def finish() -> None:
            db = self._db()
            params = [(chat_id, key) for key in keys]
            _in_transaction(db, lambda: db.executemany(FINISH, params))

        self._call("mark events done in chat", finish, chat_id)

    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        yield partial(self._schedule, chat_id, at)

    def _schedule(self, chat_id: str, at: int) -> None:
        def schedule() -> None:
            db = self._db()
            _in_transaction(db, lambda: self._schedule_in(db, chat_id, at))

        self._call("schedule chat", schedule, chat_id)

    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        return (yield partial(self._take, now, lease_ms, owner))  # type: ignore[no-any-return]

    def _take(self, now: int, lease_ms: int, owner: str) -> tuple[str, int] | None:
        def take() -> tuple[str, int] | None:
            connection = self._manager._connection()
            if connection.db.execute(READY, (now,)).fetchone() is None:
                return None  # the idle case: a read, no write lock, no fsync
            db = self._db(durable=False)
            rows = db.execute(TAKE, (owner, now + lease_ms, now)).fetchall()
            return (rows[0][0], rows[0][1]) if rows else None

        return self._call("take a chat from the work index", take)

    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        return (yield partial(self._renew, chat_id, owner, until))  # type: ignore[no-any-return]

    def _renew(self, chat_id: str, owner: str, until: int) -> bool:
        changed = self._call(
            "renew the pipeline lease of chat",
            lambda: self._db(durable=False).execute(RENEW, (until, chat_id, owner)).rowcount,
            chat_id,
        )
        return changed == 1

    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        yield partial(self._release, chat_id, owner, stamp, next_at)

    def _release(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> None:
        def release() -> None:
            db = self._db(durable=False)

            def body() -> None:
                db.execute(RELEASE, (chat_id, owner, stamp, next_at))
                db.execute(DROP_IDLE, (chat_id,))

            _in_transaction(db, body)

        self._call("release chat", release, chat_id)

    def _next_ready_op(self) -> Op[int | None]:
        return (yield self._next_ready)  # type: ignore[no-any-return]

    def _next_ready(self) -> int | None:
        row = self._call(
            "read the work index",
            lambda: self._manager._connection().db.execute(NEXT_READY).fetchone(),
        )
        return None if row is None else int(row[0])

    def _park_op(self, letter: DeadLetter) -> Op[None]:
        yield partial(self._park, letter)

    def _park(self, letter: DeadLetter) -> None:
        _check_letter_id(letter.id)
        validate_chat_id(letter.chat_id)
        params = (letter.id, letter.chat_id, letter.at, letter.to_json())
        self._call(
            "park a dead letter of chat",
            lambda: self._db().execute(PARK, params),
            letter.chat_id,
        )

    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        return (yield partial(self._dead_list, max(0, limit), chat_id))  # type: ignore[no-any-return]

    def _dead_list(self, limit: int, chat_id: str | None) -> list[str]:
        params: tuple[object, ...]
        if chat_id is None:
            statement, params = DEAD_ALL, (limit,)
        else:
            statement, params = DEAD_OF_CHAT, (limit, validate_chat_id(chat_id))
        rows = self._call(
            "list dead letters",
            lambda: self._manager._connection().db.execute(statement, params).fetchall(),
        )
        return [row[0] for row in rows]

    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        return (yield partial(self._drop_dead, letter_id))  # type: ignore[no-any-return]

    def _drop_dead(self, letter_id: str) -> bool:
        _check_letter_id(letter_id)
        changed = self._call(
            "drop a dead letter",
            lambda: self._db().execute(DROP_DEAD, (letter_id,)).rowcount,
        )
        return changed == 1
