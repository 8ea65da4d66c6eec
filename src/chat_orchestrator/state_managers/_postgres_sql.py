"""Every SQL statement of the PostgreSQL store, and its schema as ordered migration steps.

No connection in sight: ``postgres.py`` runs these on a sync or an async pool. A store's
tables are named ``<schema>.<prefix><table>`` (``Names``), so two bots share one database
with two prefixes or two schemas. Identifiers are checked against a plain pattern and then
double-quoted, never taken from user data; chat ids and everything else are bound
parameters.

Layout (version 1):

* ``<prefix>chats``: one row per chat: ``id`` (text, the primary key), ``state``,
  ``context`` (JSON text, not jsonb: jsonb would reorder keys and refuse ``\\u0000``),
  ``version`` (0 = a lease-only row for a chat whose first turn runs), ``updated`` (server
  epoch ms), ``lease_token`` and ``lease_until`` (server epoch ms; 0 = free), ``writer``
  (the token of the last write);
* ``<prefix>claims``: once-only markers (``key``, ``until``, the claimer's ``token``),
  indexed by deadline for the sweep;

Every statement is safe to repeat after a reply lost with its connection (a killed backend, a
restart): the lease and the claim treat "already mine" as success, and a write recognises
its own completed write by the writer token it stored.
* ``<prefix>schema_version``: one row, the number of migration steps applied.

Version 2 adds the message pipeline's ``<prefix>pipe_inbox``, ``pipe_work``, ``pipe_dead``
and the ``pipe_stamps`` sequence (described in ``pipeline/postgres.py``, whose statements use
them).

Time is always the server's clock (``NOW_MS``), so leases compare correctly across machines
whose clocks disagree.

Adding a table (the pipeline's inbox, outbox, timers) is a new entry at the end of
:data:`MIGRATIONS`: a step is a tuple of statement templates with ``{chats}``, ``{claims}``
... placeholders, applied once, in order, inside one transaction under an advisory lock.
Steps only ever add: none drops or rewrites user data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MIGRATIONS",
    "NEWER_SCHEMA",
    "NOW_MS",
    "Names",
    "Statements",
    "check_identifier",
    "setup_block",
]

#: The server's clock in epoch milliseconds (clock_timestamp: the moment of the statement,
#: not of its transaction).
NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_]*")
#: PostgreSQL truncates identifiers to 63 bytes; the longest table suffix is 14 characters.
_MAX_PREFIX = 63 - len("schema_version")


def check_identifier(value: object, what: str, pattern: re.Pattern[str] = _IDENTIFIER) -> str:
    """``value`` if it is a plain SQL identifier (letters, digits, ``_``), else ValueError."""
    if not isinstance(value, str) or not pattern.fullmatch(value) or len(value) > 63:
        raise ValueError(
            f"{what} must be letters, digits and underscores (at most 63, not starting with "
            f"a digit), not {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Names:
    """The quoted, schema-qualified names of one store's tables."""

    schema: str | None
    prefix: str

    def __post_init__(self) -> None:
        if self.schema is not None:
            check_identifier(self.schema, "schema")
        if not isinstance(self.prefix, str) or not _PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"table_prefix must be letters, digits and underscores, not {self.prefix!r}"
            )
        if len(self.prefix) > _MAX_PREFIX:
            raise ValueError(f"table_prefix must be at most {_MAX_PREFIX} characters")

    def table(self, name: str) -> str:
        quoted = f'"{self.prefix}{name}"'
        return quoted if self.schema is None else f'"{self.schema}".{quoted}'

    def fill(self, template: str) -> str:
        return template.format(
            chats=self.table("chats"),
            claims=self.table("claims"),
            claims_index=f'"{self.prefix}claims_until"',
            version=self.table("schema_version"),
            **self.pipeline_names(),
        )

    def pipeline_names(self) -> dict[str, str]:
        """The message pipeline's tables, sequence and indexes (``pipeline/postgres.py``)."""
        names = {name: self.table(f"pipe_{name}") for name in ("inbox", "work", "dead", "stamps")}
        # A sequence is named in nextval() by a regclass literal: the quoted name in quotes
        # (the names are checked identifiers, safe inside the literal).
        names["stamps_literal"] = f"'{names['stamps']}'"
        for index in ("pending", "expiry", "ready", "idle", "dead_at", "dead_ch"):
            names[f"{index}_index"] = f'"{self.prefix}pipe_{index}"'
        return names

    @property
    def where(self) -> str:
        """How messages name the store: ``schema.prefix*``."""
        return f"{self.schema or '(search_path)'}.{self.prefix}*"


#: The schema, one step per entry; a store at version N has applied steps [0, N).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS {chats} (
            id text PRIMARY KEY,
            state text,
            context text,
            version bigint NOT NULL,
            updated bigint NOT NULL,
            lease_token text,
            lease_until bigint NOT NULL DEFAULT 0,
            writer text
        )""",
        """CREATE TABLE IF NOT EXISTS {claims} (
            key text PRIMARY KEY, until bigint NOT NULL, token text
        )""",
        "CREATE INDEX IF NOT EXISTS {claims_index} ON {claims} (until)",
    ),
    # 2: the message pipeline (pipeline/postgres.py has the layout's reasons).
    (
        """CREATE TABLE IF NOT EXISTS {inbox} (
            key text PRIMARY KEY,
            seq bigserial NOT NULL,
            chat text NOT NULL,
            body text,
            until bigint NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS {pending_index} ON {inbox} (chat, seq) WHERE body IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS {expiry_index} ON {inbox} (until) WHERE body IS NULL",
        """CREATE TABLE IF NOT EXISTS {work} (
            chat text PRIMARY KEY,
            ready_at bigint,
            stamp bigint NOT NULL,
            owner text,
            until bigint NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS {ready_index} ON {work} (ready_at) WHERE ready_at IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS {idle_index} ON {work} (chat) "
        "WHERE ready_at IS NULL AND owner IS NULL",
        "CREATE SEQUENCE IF NOT EXISTS {stamps}",
        """CREATE TABLE IF NOT EXISTS {dead} (
            id text PRIMARY KEY,
            chat text NOT NULL,
            at double precision NOT NULL,
            letter text NOT NULL
        )""",
        'CREATE INDEX IF NOT EXISTS {dead_at_index} ON {dead} (at, id COLLATE "C")',
        'CREATE INDEX IF NOT EXISTS {dead_ch_index} ON {dead} (chat, at, id COLLATE "C")',
    ),
)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS {version} (version integer NOT NULL)"
#: How many steps a store has applied.
READ_VERSION = "SELECT max(version) FROM {version}"


class Statements:
    """One store's statements (parameters named in the comment above each)."""

    def __init__(self, names: Names) -> None:
        f = names.fill
        self.names = names
        self.setup = setup_block(names)
        self.read_version = f(READ_VERSION)

        # id, token, lease ms -> (state, context, version) if the lease is now ours.
        # A new chat gets a lease-only row (version 0). "Already ours" counts as taken, so
        # the statement is safe to repeat after a lost reply.
        self.acquire = f(f"""
            INSERT INTO {{chats}} AS c (id, version, updated, lease_token, lease_until)
            VALUES (%s, 0, {NOW_MS}, %s, {NOW_MS} + %s)
            ON CONFLICT (id) DO UPDATE SET lease_token = excluded.lease_token,
                                           lease_until = excluded.lease_until
            WHERE c.lease_until <= excluded.updated OR c.lease_token = excluded.lease_token
            RETURNING state, context, version""")

        # id -> (state, context, version)
        self.load = f("SELECT state, context, version FROM {chats} WHERE id = %s AND version > 0")

        # The three conditional writes return (new version or NULL, version found, lease
        # token found, writer found): the outer SELECT sees the row as it was before the
        # write, so a refused write explains itself in the same round trip (and a repeated
        # one finds its own writer token).
        # state, context, writer, id, expected, token, id: a turn's write, dropping its lease.
        self.write_in_turn = f(f"""
            WITH w AS (
                UPDATE {{chats}} SET state = %s, context = %s, version = version + 1,
                       updated = {NOW_MS}, lease_token = NULL, lease_until = 0, writer = %s
                WHERE id = %s AND version = %s AND lease_token = %s
                RETURNING version)
            SELECT (SELECT version FROM w), c.version, c.lease_token, c.writer
            FROM (SELECT 1) AS one LEFT JOIN {{chats}} AS c ON c.id = %s""")
        # state, context, writer, id, expected (> 0), id: a conditional write outside a turn.
        self.write_existing = f(f"""
            WITH w AS (
                UPDATE {{chats}} SET state = %s, context = %s, version = version + 1,
                       updated = {NOW_MS}, writer = %s
                WHERE id = %s AND version = %s
                RETURNING version)
            SELECT (SELECT version FROM w), c.version, c.lease_token, c.writer
            FROM (SELECT 1) AS one LEFT JOIN {{chats}} AS c ON c.id = %s""")
        # id, state, context, writer, id: a conditional write of a new chat (expected 0); a
        # lease-only row counts as no record, as it does for load().
        self.write_new = f(f"""
            WITH w AS (
                INSERT INTO {{chats}} AS c (id, state, context, version, updated, writer)
                VALUES (%s, %s, %s, 1, {NOW_MS}, %s)
                ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                    context = excluded.context, version = 1, updated = excluded.updated,
                    writer = excluded.writer
                WHERE c.version = 0
                RETURNING version)
            SELECT (SELECT version FROM w), c.version, c.lease_token, c.writer
            FROM (SELECT 1) AS one LEFT JOIN {{chats}} AS c ON c.id = %s""")

        # id, state, context: the seed method's unconditional write (still bumps the version).
        self.set = f(f"""
            INSERT INTO {{chats}} AS c (id, state, context, version, updated)
            VALUES (%s, %s, %s, 1, {NOW_MS})
            ON CONFLICT (id) DO UPDATE SET state = excluded.state, context = excluded.context,
                version = c.version + 1, updated = excluded.updated""")

        # id
        self.delete = f("DELETE FROM {chats} WHERE id = %s")

        # lease ms, id, token: a live holder pushes its lease's end ahead.
        self.renew = f(
            f"UPDATE {{chats}} SET lease_until = {NOW_MS} + %s "
            "WHERE id = %s AND lease_token = %s AND lease_until > 0"
        )

        # id, token, id, token: drop the lease; a failed first turn leaves no lease-only row.
        self.unlock = f("""
            WITH gone AS (
                DELETE FROM {chats} WHERE id = %s AND lease_token = %s AND version = 0)
            UPDATE {chats} SET lease_token = NULL, lease_until = 0
            WHERE id = %s AND lease_token = %s AND version > 0""")

        # key, ttl ms, token -> a row if this call claimed the key (new, expired, or already
        # claimed by this very call before a lost reply).
        self.claim = f(f"""
            INSERT INTO {{claims}} AS m (key, until, token) VALUES (%s, {NOW_MS} + %s, %s)
            ON CONFLICT (key) DO UPDATE SET until = excluded.until, token = excluded.token
            WHERE m.until <= {NOW_MS} OR m.token = excluded.token
            RETURNING 1""")
        # key
        self.release_claim = f("DELETE FROM {claims} WHERE key = %s")
        # (none)
        self.sweep_claims = f(f"DELETE FROM {{claims}} WHERE until <= {NOW_MS}")

        # state or NULL, cutoff ms -> (id, state, version, updated), through a named cursor.
        self.list = f("""
            SELECT id, state, version, updated FROM {chats}
            WHERE version > 0 AND (%s::text IS NULL OR state = %s::text) AND updated <= %s""")
        # id -> (state, version, updated)
        self.info = f("SELECT state, version, updated FROM {chats} WHERE id = %s AND version > 0")


#: Later than any ``updated`` (epoch ms): the cutoff of a listing without an idle filter.
MAX_TIME_MS = 2**62

#: Raised by the set-up block for a store laid out by a newer chat-orchestrator.
NEWER_SCHEMA = "chat-orchestrator: schema version"


def setup_block(names: Names) -> str:
    """One ``DO`` block that brings a store's tables to the latest version, idempotently.

    One statement is one transaction: either every missing step is applied and the version
    row written, or nothing is. Concurrent set-ups (processes starting at once) queue on a
    transaction-scoped advisory lock keyed by the store's names.
    """
    version = names.table("schema_version")
    # The names are checked identifiers: safe inside the single-quoted literals below.
    lines = [
        "DO $chat_orchestrator$",
        "DECLARE found integer := 0;",
        "BEGIN",
        f"  PERFORM pg_advisory_xact_lock(hashtext('chat-orchestrator {names.where}'));",
    ]
    if names.schema is not None:
        lines += [
            f"  IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{names.schema}') THEN",
            f'    CREATE SCHEMA "{names.schema}";',
            "  END IF;",
        ]
    lines += [
        f"  IF to_regclass('{version}') IS NULL THEN",
        f"    {names.fill(VERSION_TABLE)};",
        "  ELSE",
        f"    SELECT coalesce(max(version), 0) INTO found FROM {version};",
        "  END IF;",
        f"  IF found > {len(MIGRATIONS)} THEN",
        f"    RAISE EXCEPTION '{NEWER_SCHEMA} % is newer than this library''s {len(MIGRATIONS)}',"
        " found;",
        "  END IF;",
    ]
    for number, step in enumerate(MIGRATIONS, start=1):
        lines.append(f"  IF found < {number} THEN")
        lines += [f"    {names.fill(statement)};" for statement in step]
        lines.append("  END IF;")
    lines += [
        f"  IF found < {len(MIGRATIONS)} THEN",
        f"    DELETE FROM {version};",
        f"    INSERT INTO {version} (version) VALUES ({len(MIGRATIONS)});",
        "  END IF;",
        "END $chat_orchestrator$",
    ]
    return "\n".join(lines)
