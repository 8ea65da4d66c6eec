"""SQLite: the durable store for one machine, on the standard library's ``sqlite3``.

* WAL journal, so readers never block the writer; ``synchronous`` is FULL by default, so a
  committed turn survives a power cut like the file backend's (NORMAL: survives a crash of
  the process, may lose the last turns to a power cut, many times faster).
* A chat's lock is a lease row with a deadline (``lock_lease``): a killed process loses it
  when it expires, and every write is conditional on the version read and the lease, so even
  an expired lease cannot lose an update.
* No transaction spans a step: a turn is two short autocommit statements, so different
  chats never wait for each other's steps, across threads and processes alike.
* One connection per thread (and per process: a forked child opens its own).

The statements and decisions live in ``_sqlite_core``; this module only runs them.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import StateManagerError, describe_chat_id
from chat_orchestrator.state_managers import _sqlite_core as sql
from chat_orchestrator.state_managers._leased import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_TIMEOUT,
    check_lease_settings,
)
from chat_orchestrator.state_managers._primitive_ops import BlockingLeasedStateManager
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateRecord,
    validate_chat_id,
    validate_claim_ttl,
)

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.sqlite import SQLitePipelineStore

__all__ = ["SQLiteStateManager"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
_INHERITED: list[_Connection] = []


#: Longest lease (ms, 100 years): now + lease must fit SQLite's 64-bit INTEGER.
_MAX_LEASE_MS = 100 * 365 * 86_400_000


def _checked_busy_timeout(busy_timeout: object) -> float:
    # sqlite3.connect takes NaN, negatives and infinities without a word (a busy database
    # then fails at once or waits forever); a str fails there as a raw TypeError.
    if type(busy_timeout) is not float and type(busy_timeout) is not int:
        raise TypeError(f"busy_timeout must be seconds, not {type(busy_timeout).__name__}")
    if not math.isfinite(busy_timeout) or busy_timeout < 0:
        raise ValueError(
            f"busy_timeout must be a finite number of seconds >= 0, not {busy_timeout!r}"
        )
    return busy_timeout


def _now_ms() -> int:
    # Wall clock: leases are compared across the processes of one machine.
    return int(time.time() * 1000)


class _Connection:
    """One thread's connection and the ``synchronous`` level it is set to right now."""

    __slots__ = ("__weakref__", "db", "generation", "level", "pid")

    def __init__(self, db: sqlite3.Connection, level: str, generation: int) -> None:
        self.db = db
        self.level = level
        self.generation = generation
        self.pid = os.getpid()

    def at(self, level: str) -> sqlite3.Connection:
        if level != self.level:
            self.db.execute(f"PRAGMA synchronous = {level}")  # level is from SYNCHRONOUS_LEVELS
            self.level = level
        return self.db


class SQLiteStateManager(BlockingLeasedStateManager):
    """State in one SQLite file, shared by the threads and processes of one machine.

    ``synchronous``: ``"FULL"`` (default, durable on power loss), ``"NORMAL"``, ``"OFF"`` or
    ``"EXTRA"``. ``busy_timeout`` (s): how long a statement waits for SQLite's own write lock
    before StateManagerUnavailableError. ``lock_lease`` (s, default 10): how long a dead
    process's lease outlives it (a live turn's is renewed). ``lock_timeout`` (s, default 30,
    ``None``: forever): how long a turn waits for a busy chat before LockTimeoutError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "chats.db",
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        if os.fspath(path) in {"", ":memory:"}:
            raise ValueError(
                "SQLiteStateManager needs a file path (each connection would see its own "
                "temporary database); use InMemoryStateManager for a store in memory"
            )
        self.path = Path(path)
        self.synchronous = sql.check_synchronous(synchronous)
        self._lease_level = sql.lease_synchronous(self.synchronous)
        self._busy_timeout = _checked_busy_timeout(busy_timeout)
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        if self._lease_ms > _MAX_LEASE_MS:  # a deadline is a 64-bit integer of ms in SQLite
            raise ValueError(
                f"lock_lease must be at most {_MAX_LEASE_MS // 1000} s, not {lock_lease!r}"
            )
        self._lock_timeout = lock_timeout
        self._address = str(self.path)
        self._local = threading.local()
        # Weak: a thread's connection is closed when the thread ends (its threading.local
        # goes), so a server that starts a thread per request does not pile up connections.
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        self._generation = 0
        self._claims_since_sweep = 0
        self._pipeline: SQLitePipelineStore | None = None
        self._pipeline_lock = threading.Lock()  # not _open_lock: _connection() takes that one
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateManagerError(
                f"cannot create the directory of SQLite database {str(self.path)!r}: {exc.strerror}"
            ) from exc
        sql.check_writable(self.path)
        self._call("open the database", self._create_schema)

    def __repr__(self) -> str:
        return f"SQLiteStateManager(path={str(self.path)!r}, synchronous={self.synchronous!r})"

    # -- connections ------------------------------------------------------------------------
    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if conn.pid == os.getpid() and conn.generation == self._generation:
                return conn
            if conn.pid != os.getpid():
                # Inherited through fork: never use it, and never let it be closed here
                # either (SQLite connections must not cross fork); keep it referenced.
                _INHERITED.append(conn)
        # isolation_level=None: autocommit, every statement is its own short transaction.
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn = _Connection(db, self.synchronous, self._generation)
        with self._open_lock:
            self._open.add(conn)
        self._local.conn = conn
        return conn

    def _create_schema(self) -> None:
        db = self._connection().db
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateManagerError(
                f"SQLite database {str(self.path)!r} cannot use WAL journaling (got {mode!r})"
            )
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found == sql.SCHEMA_VERSION:
            return
        if found != 0:
            raise StateManagerError(
                f"SQLite database {str(self.path)!r} has schema version {found}; this "
                f"chat-orchestrator reads version {sql.SCHEMA_VERSION}"
            )
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.SCHEMA:
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _call(self, what: str, function: Callable[[], T], chat_id: str | None = None) -> T:
        try:
            return function()
        except sqlite3.Error as exc:
            # The message is built only on failure: describing an id costs a turn time.
            if chat_id is not None:
                what = f"{what} {describe_chat_id(chat_id)}"
            error = sql.translate_error(
                exc, path=str(self.path), what=what, busy_timeout=self._busy_timeout
            )
            _log.warning("%s", error)
            raise error from exc

    # -- seed methods -----------------------------------------------------------------------
    # The base validated every argument (a lone surrogate would fail inside sqlite3's binding).
    def _set(self, chat_id: str, state_id: str, text: str) -> None:
        params = (chat_id, state_id, text, _now_ms())
        self._call(
            "write chat",
            lambda: self._connection().at(self.synchronous).execute(sql.SET, params),
            chat_id,
        )

    def _delete(self, chat_id: str) -> None:
        self._call(
            "delete chat",
            lambda: self._connection().at(self.synchronous).execute(sql.DELETE, (chat_id,)),
            chat_id,
        )

    # -- versioned records ------------------------------------------------------------------
    def _load(self, chat_id: str) -> StateRecord | None:
        row = self._call(
            "read chat",
            lambda: self._connection().db.execute(sql.LOAD, (chat_id,)).fetchone(),
            chat_id,
        )
        return sql.record_from_row(chat_id, row)

    def _write(
        self,
        chat_id: str,
        token: str | None,
        expected: int,
        state_id: str,
        context: dict[str, Any],
        encoded: str | None,
    ) -> int:
        text = encode_context(context) if encoded is None else encoded
        statement, params = sql.write_statement(chat_id, token, expected, state_id, text, _now_ms())

        def write() -> tuple[list[Any], Any]:
            db = self._connection().at(self.synchronous)
            # fetchall: a RETURNING statement commits only once it has run to completion.
            rows = db.execute(statement, params).fetchall()
            current = None if rows else db.execute(sql.CURRENT, (chat_id,)).fetchone()
            return rows, current

        rows, current = self._call("write chat", write, chat_id)
        if not rows:
            raise sql.conflict_error(chat_id, token, expected, current)
        return int(rows[0][0])

    # -- leases -----------------------------------------------------------------------------
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]:
        validate_chat_id(chat_id)
        now = _now_ms()
        params = (chat_id, token, now + self._lease_ms, now)
        rows = self._call(
            "lock chat",
            lambda: (
                self._connection().at(self._lease_level).execute(sql.ACQUIRE, params).fetchall()
            ),
            chat_id,
        )
        if not rows:
            return False, None
        return True, sql.record_from_row(chat_id, rows[0])

    def _unlock(self, chat_id: str, token: str) -> None:
        def unlock() -> None:
            db = self._connection().at(self._lease_level)
            if db.execute(sql.UNLOCK_NEW, (chat_id, token)).rowcount == 0:
                db.execute(sql.UNLOCK, (chat_id, token))

        self._call("unlock chat", unlock, chat_id)

    def _renew(self, chat_id: str, token: str) -> bool:
        params = (_now_ms() + self._lease_ms, chat_id, token)
        changed = self._call(
            "renew the lease of chat",
            lambda: self._connection().at(self._lease_level).execute(sql.RENEW, params).rowcount,
            chat_id,
        )
        return changed == 1

    # -- once-only markers ------------------------------------------------------------------
    def _claim(self, key: str, ttl: float) -> bool:
        """A row per key in ``claims``; the primary key makes it atomic across processes.

        Expired claims are swept every few hundred claims, so the table stays small.
        """
        now = _now_ms()
        params = (key, now + max(1, int(validate_claim_ttl(ttl) * 1000)), now)

        def take() -> bool:
            db = self._connection().at(self.synchronous)
            taken = bool(db.execute(sql.CLAIM, params).fetchall())
            self._claims_since_sweep += 1  # racy across threads: only paces the sweep
            if self._claims_since_sweep >= sql.SWEEP_EVERY:
                self._claims_since_sweep = 0
                swept = db.execute(sql.SWEEP_CLAIMS, (now,)).rowcount
                _log.debug("swept %d expired claims from %s", swept, self.path)
            return taken

        # describe_chat_id: a key may be 16,384 characters; never put all of it in a log line.
        return self._call(f"claim key {describe_chat_id(key)}", take)

    def _release_claim(self, key: str) -> None:
        """Forget ``key``'s claim (a turn that failed may run again on redelivery)."""
        self._call(
            f"release key {describe_chat_id(key)}",
            lambda: self._connection().at(self.synchronous).execute(sql.RELEASE_CLAIM, (key,)),
        )

    def sweep_claims(self) -> int:
        """Delete expired claims now; returns how many."""
        return self._call(
            "sweep claims",
            lambda: self._connection().db.execute(sql.SWEEP_CLAIMS, (_now_ms(),)).rowcount,
        )

    # -- the message pipeline ---------------------------------------------------------------
    def pipeline_store(self) -> SQLitePipelineStore:
        """The pipeline's inbox, work index and dead letters, in this database file."""
        with self._pipeline_lock:  # two threads' first calls must get one store
            if self._pipeline is None:
                from chat_orchestrator.pipeline import sqlite as pipe

                self._call(
                    "create the pipeline tables",
                    lambda: pipe.create_schema(self._connection().db),
                )
                self._pipeline = pipe.SQLitePipelineStore(self)
            return self._pipeline

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection this process opened; a later call opens new ones."""
        with self._open_lock:
            self._generation += 1
            mine = [c for c in self._open if c.pid == os.getpid()]
            self._open = weakref.WeakSet()
        for conn in mine:
            conn.db.close()

    # -- operator tools ----------------------------------------------------------------------
    #: Rows per page of :meth:`iter_chats`.
    list_page_size = 1000

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        before = sql.MAX_TIME_MS if cutoff is None else int(cutoff * 1000)
        after = 0
        while True:
            rows = self._list_page((after, self.list_page_size, state, before))
            for _, chat_id, state_id, version, updated in rows:
                yield ChatInfo(chat_id, state_id, version, updated / 1000)
            if len(rows) < self.list_page_size:
                return
            after = rows[-1][0]

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        row = self._call(
            "read chat",
            lambda: self._connection().db.execute(sql.INFO, (chat_id,)).fetchone(),
            validate_chat_id(chat_id),
        )
        return None if row is None else ChatInfo(chat_id, row[0], row[1], row[2] / 1000)

    def _list_page(self, params: tuple[Any, ...]) -> list[Any]:
        return self._call(
            "list chats", lambda: self._connection().db.execute(sql.LIST_PAGE, params).fetchall()
        )
