"""What the SQLite backend decides, with no connection in sight: schema, statements, the
parameters they take, how rows and errors are read. The sync driver (``sqlite.py``) and an
async one run exactly these; only the calls that block differ.

Layout: ``chats`` holds one row per chat: ``state``, ``context`` (JSON text), ``version``
(0 = a lease-only row for a chat whose first turn is running), ``updated`` (epoch ms),
``lease_token`` and ``lease_until`` (epoch ms; 0 = free). ``claims`` holds once-only markers
with their deadline. Ids are bound as parameters (TEXT, compared byte for byte), never spliced
into SQL, so NUL, quotes and ``../`` are plain data.

Every statement is its own autocommit transaction, so no write transaction is ever held
while a step runs; a turn is "acquire the lease and read" then "write if the version and the
lease are still what was read, dropping the lease". Writes that change a record ``RETURNING``
its version, so "did it apply?" is read from the statement itself.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from chat_orchestrator._jsonctx import decode_context
from chat_orchestrator.errors import (
    CorruptStateError,
    StateManagerError,
    StateManagerUnavailableError,
    VersionConflictError,
    describe_chat_id,
)
from chat_orchestrator.state_managers.base import StateRecord

__all__ = [
    "SCHEMA_VERSION",
    "SYNCHRONOUS_LEVELS",
    "check_synchronous",
    "check_writable",
    "conflict_error",
    "lease_synchronous",
    "record_from_row",
    "translate_error",
    "write_statement",
]

#: ``PRAGMA user_version`` of a database laid out as below.
SCHEMA_VERSION = 1

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chats (
        id TEXT PRIMARY KEY,
        state TEXT,
        context TEXT,
        version INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        lease_token TEXT,
        lease_until INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS claims_by_deadline ON claims (until)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

#: Valid ``synchronous`` settings, weakest first.
SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")

# -- statements (parameters named in the comment above each) ------------------------------

# id, token, lease end, now -> (state, context, version) if the lease was taken, else no row.
# A new chat gets a lease-only row (version 0) so the lease is one row lock, like any chat's.
ACQUIRE = """
INSERT INTO chats (id, version, updated, lease_token, lease_until) VALUES (?1, 0, ?4, ?2, ?3)
ON CONFLICT (id) DO UPDATE SET lease_token = excluded.lease_token,
                               lease_until = excluded.lease_until
WHERE chats.lease_until <= ?4
RETURNING state, context, version
"""

# id -> (state, context, version)
LOAD = "SELECT state, context, version FROM chats WHERE id = ? AND version > 0"

# id -> (version, lease_token): what a refused write met.
CURRENT = "SELECT version, lease_token FROM chats WHERE id = ?"

# state, context, now, id, expected, token: a turn's write, which also drops its lease.
WRITE_IN_TURN = """
UPDATE chats SET state = ?1, context = ?2, version = version + 1, updated = ?3,
                 lease_token = NULL, lease_until = 0
WHERE id = ?4 AND version = ?5 AND lease_token = ?6
RETURNING version
"""

# state, context, now, id, expected (> 0): a conditional write outside a turn.
WRITE_EXISTING = """
UPDATE chats SET state = ?1, context = ?2, version = version + 1, updated = ?3
WHERE id = ?4 AND version = ?5
RETURNING version
"""

# state, context, now, id: a conditional write of a new chat (expected version 0). A
# lease-only row counts as "no record", as it does for load().
WRITE_NEW = """
INSERT INTO chats (id, state, context, version, updated) VALUES (?4, ?1, ?2, 1, ?3)
ON CONFLICT (id) DO UPDATE SET state = excluded.state, context = excluded.context,
                               version = 1, updated = excluded.updated
WHERE chats.version = 0
RETURNING version
"""

# id, state, context, now: the seed method's unconditional write (still bumps the version).
SET = """
INSERT INTO chats (id, state, context, version, updated) VALUES (?1, ?2, ?3, 1, ?4)
ON CONFLICT (id) DO UPDATE SET state = excluded.state, context = excluded.context,
                               version = chats.version + 1, updated = excluded.updated
"""

# id
DELETE = "DELETE FROM chats WHERE id = ?"

# lease end, id, token: a live holder pushes its lease's end ahead (the renewer thread).
RENEW = "UPDATE chats SET lease_until = ?1 WHERE id = ?2 AND lease_token = ?3"

# id, token: a failed first turn leaves no lease-only row behind ...
UNLOCK_NEW = "DELETE FROM chats WHERE id = ? AND lease_token = ? AND version = 0"
# ... any other chat just gets its lease dropped.
UNLOCK = "UPDATE chats SET lease_token = NULL, lease_until = 0 WHERE id = ? AND lease_token = ?"

# key, deadline, now -> a row if this call claimed the key (new, or the old claim expired).
CLAIM = """
INSERT INTO claims (key, until) VALUES (?1, ?2)
ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE claims.until <= ?3
RETURNING 1
"""

# key
RELEASE_CLAIM = "DELETE FROM claims WHERE key = ?"

# now
SWEEP_CLAIMS = "DELETE FROM claims WHERE until <= ?"

# after rowid, page size -> (rowid, id, state, version, updated): one page of the chat list.
# Pages by rowid (the table's own b-tree, no index needed): every statement is short, so a
# listing of a million chats holds no read transaction open and never delays a checkpoint.
LIST_PAGE = """
SELECT rowid, id, state, version, updated FROM chats
WHERE rowid > ?1 AND version > 0 AND (?3 IS NULL OR state = ?3) AND updated <= ?4
ORDER BY rowid LIMIT ?2
"""

# id -> (state, version, updated)
INFO = "SELECT state, version, updated FROM chats WHERE id = ? AND version > 0"

#: Later than any ``updated`` (epoch ms): the cutoff of a listing without an idle filter.
MAX_TIME_MS = 2**62

#: A sweep of expired claims runs after this many claims by one manager.
SWEEP_EVERY = 512


# -- pure decisions ----------------------------------------------------------------------
def check_synchronous(value: str) -> str:
    level = value.upper() if isinstance(value, str) else value
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {value!r}"
        )
    return level


def check_writable(path: Path) -> None:
    """Refuse a read-only database file or file system up front, with a plain reason.

    (SQLite would only say "unable to open database file" at the first statement.)
    """
    where = f"SQLite database {str(path)!r}"
    try:
        flags = os.statvfs(path.parent).f_flag
    except OSError as exc:
        raise StateManagerError(f"{where}: cannot inspect its directory: {exc.strerror}") from exc
    if flags & os.ST_RDONLY:
        raise StateManagerError(f"{where} is on a read-only file system")
    if path.exists() and not os.access(path, os.W_OK):
        raise StateManagerError(f"{where} is a read-only file")


def lease_synchronous(configured: str) -> str:
    """The level for lease and unlock writes: at most NORMAL.

    A lease lost in a power cut only concerns processes the cut killed too, and the version
    check protects the record anyway; the WAL is sequential, so the next record write at the
    configured level makes earlier lease frames durable as well. This keeps a durable turn at
    one fsync (the record's), not two.
    """
    return SYNCHRONOUS_LEVELS[min(SYNCHRONOUS_LEVELS.index(configured), 1)]


def write_statement(
    chat_id: str, token: str | None, expected: int, state_id: str, text: str, now_ms: int
) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of a conditional write (see the constants above)."""
    if token is not None:
        return WRITE_IN_TURN, (state_id, text, now_ms, chat_id, expected, token)
    if expected:
        return WRITE_EXISTING, (state_id, text, now_ms, chat_id, expected)
    return WRITE_NEW, (state_id, text, now_ms, chat_id)


def record_from_row(chat_id: str, row: tuple[Any, ...] | None) -> StateRecord | None:
    """A ``(state, context, version)`` row as a record; version 0 (lease only) is no record."""
    if row is None or row[2] == 0:
        return None
    state_id, context, version = row
    try:
        if not isinstance(state_id, str) or type(version) is not int or version < 1:
            # Bounded: a foreign row may hold a 100 KB blob, which would fill the log line.
            state, ver = describe_chat_id(state_id), describe_chat_id(version)
            raise ValueError(f"bad state {state} or version {ver}")
        if not isinstance(context, str):
            raise ValueError(f"context is {type(context).__name__}, not JSON text")
        return StateRecord(state_id, decode_context(context), version)
    except ValueError as exc:
        raise CorruptStateError(
            f"the SQLite record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
        ) from exc


def conflict_error(
    chat_id: str, token: str | None, expected: int, current: tuple[Any, ...] | None
) -> VersionConflictError:
    """The error of a write that did not apply; ``current`` is the CURRENT row."""
    found = 0 if current is None else int(current[0])
    if token is not None and found == expected:
        detail = "another worker took its lease"
    else:
        detail = "it changed"
    return VersionConflictError(
        f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
        f"the write expected version {expected}"
    )


def translate_error(
    exc: sqlite3.Error, *, path: str, what: str, busy_timeout: float
) -> StateManagerError:
    """Our error for a sqlite3 error while trying to ``what`` (e.g. "write chat 'x'")."""
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    where = f"SQLite database {path!r}"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StateManagerUnavailableError(
            f"{where} stayed locked by another connection for more than {busy_timeout} s "
            f"while trying to {what}"
        )
    if name == "SQLITE_FULL":
        return StateManagerError(f"cannot {what}: the disk holding {where} is full")
    if name.startswith("SQLITE_READONLY"):
        return StateManagerError(f"cannot {what}: {where} is read-only ({name})")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return CorruptStateError(
            f"{where} is damaged or not a SQLite database ({name}) while trying to {what}; "
            "it was left untouched"
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return StateManagerUnavailableError(
            f"{where} cannot be opened ({name}) while trying to {what}: the file and its "
            "directory (which holds the -wal and -shm files) must exist and be writable"
        )
    if name == "SQLITE_TOOBIG":
        return StateManagerError(f"cannot {what}: the record is over SQLite's size limit")
    return StateManagerError(f"{where} failed to {what}: {name}: {exc}")
