"""Every SQL statement of the PostgreSQL pipeline store (``pipeline/postgres.py``).

Each statement is one round trip and one transaction (autocommit): what would be several
statements elsewhere is one statement of data-modifying CTEs here. All CTEs of a statement
see one snapshot, so no CTE touches a row another one touches; where one must see another's
effect (``release``: delete the row, else update it) it reads that CTE's ``RETURNING``.

Parameters come first, in a ``p`` CTE (psycopg's ``%s`` cannot be named or repeated), so
each statement's parameter order is that CTE's column order.

Wake-ups: a statement that makes a chat's ``ready_at`` earlier than it was (or creates it)
calls ``pg_notify`` on the store's channel; PostgreSQL delivers it at commit, so a listener
never wakes before the change is visible.
"""

from __future__ import annotations

import hashlib

from chat_orchestrator.state_managers._postgres_sql import Names

__all__ = ["SWEEP_BATCH", "PipelineStatements", "channel_of"]

#: Expired done keys (and idle work rows) deleted by one ``add`` at most: bounds its cost;
#: adds outnumber finishes, so the sweep keeps up.
SWEEP_BATCH = 100


def channel_of(names: Names) -> str:
    """The NOTIFY channel of one store: short (channels are 63-byte identifiers) and distinct
    per schema and prefix, so two bots sharing a database do not wake each other."""
    digest = hashlib.sha256(names.where.encode()).hexdigest()[:16]
    return f"chat_orchestrator_{digest}"


# The schedule of p.chat at p.at, and a NOTIFY when that moved its ready_at earlier. Needs
# ``p`` with columns chat, at; leaves CTEs ``old`` and ``sched``.
_SCHEDULE_CTES = """
old AS (SELECT w.ready_at FROM {work} AS w, p WHERE w.chat = p.chat),
sched AS (
    INSERT INTO {work} AS w (chat, ready_at, stamp)
    SELECT p.chat, p.at, nextval({stamps_literal}) FROM p
    ON CONFLICT (chat) DO UPDATE SET ready_at = least(w.ready_at, excluded.ready_at),
                                     stamp = excluded.stamp
    RETURNING w.ready_at)"""
# least() ignores NULL: a row with nothing to do (ready_at NULL) gets the new time.
_NOTIFY_SCHEDULED = """
(SELECT count(pg_notify('{channel}', '')) FROM sched
 WHERE NOT EXISTS (SELECT 1 FROM old WHERE old.ready_at <= sched.ready_at))"""


class PipelineStatements:
    """One store's pipeline statements (parameters named in the ``p`` CTE of each)."""

    def __init__(self, names: Names) -> None:
        self.channel = channel_of(names)
        values = {**names.pipeline_names(), "channel": self.channel, "batch": SWEEP_BATCH}

        def f(template: str) -> str:
            # Whitespace collapsed: psycopg caches the conversion of, and prepares, only
            # statements up to 4096 bytes (the add is about 2 KB this way, over 4 KB laid
            # out); no literal here holds significant whitespace.
            return " ".join(template.format(**values).split())

        # Shared fragments, filled first, then placed into the statements that use them.
        values["schedule"] = f(_SCHEDULE_CTES)
        values["notify"] = f(_NOTIFY_SCHEDULED)

        # chat, now, key expiry, keys, bodies -> (keys stored now, notifications sent).
        # A key is stored if new, or if it was done and its retention ended (the row is
        # reused with a new seq: it arrives again, last). Before that: at most SWEEP_BATCH
        # expired done keys (never one of this call's) and idle work rows (never this
        # chat's) are deleted, skipping rows another transaction holds (no waits, no
        # deadlocks between sweeping adds). A pending key is never swept, even past its
        # retention: it keeps deduplicating until it is done.
        self.add = f(
            """
            WITH p AS (SELECT %s::text AS chat, %s::bigint AS at, %s::bigint AS until,
                              %s::text[] AS keys, %s::text[] AS bodies),
            swept AS (
                DELETE FROM {inbox} WHERE key IN (
                    SELECT i.key FROM {inbox} AS i, p
                    WHERE i.body IS NULL AND i.until <= p.at AND i.key <> ALL (p.keys)
                    LIMIT {batch} FOR UPDATE OF i SKIP LOCKED)),
            idle AS (
                DELETE FROM {work} WHERE chat IN (
                    SELECT w.chat FROM {work} AS w, p
                    WHERE w.ready_at IS NULL AND w.owner IS NULL AND w.chat <> p.chat
                    LIMIT {batch} FOR UPDATE OF w SKIP LOCKED)),
            ins AS (
                INSERT INTO {inbox} AS i (key, chat, body, until)
                SELECT e.k, p.chat, e.b, p.until
                FROM p, unnest(p.keys, p.bodies) WITH ORDINALITY AS e(k, b, n)
                ORDER BY e.n
                ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, chat = excluded.chat,
                    body = excluded.body, until = excluded.until
                WHERE i.body IS NULL AND i.until <= (SELECT at FROM p)
                RETURNING i.key),{schedule}
            SELECT array(SELECT key FROM ins), {notify}"""
        )

        # chat, at -> (notifications sent,)
        self.schedule = f("""
            WITH p AS (SELECT %s::text AS chat, %s::bigint AS at),{schedule}
            SELECT {notify}""")

        # chat, limit -> (body,) oldest first
        self.pending = f("""
            SELECT body FROM {inbox} WHERE chat = %s AND body IS NOT NULL
            ORDER BY seq LIMIT %s""")

        # chat, keys: a done event keeps only its key and expiry (what dedup needs).
        self.finish = f("""
            UPDATE {inbox} SET body = NULL
            WHERE chat = %s AND key = ANY (%s::text[]) AND body IS NOT NULL""")

        # now, lease end, owner, limit -> (chat, stamp, body) rows of the chat taken, its
        # pending events oldest first (one row with a NULL body if none, or limit 0).
        # ``pick`` locks the lowest ready, free row, skipping rows other takes hold. The
        # pending events are read in the statement's snapshot, so the stamp returned is the
        # snapshot's too (``seen``): if an add committed between the snapshot and the lock,
        # the lock sees its newer stamp, the release will see news, and the take leaves
        # ready_at as the add set it, so the chat is taken again at once after the release
        # (its lease still keeps other workers off until then).
        self.take = f("""
            WITH p AS (SELECT %s::bigint AS at, %s::bigint AS until, %s::text AS owner,
                              %s::int AS lim),
            pick AS (
                SELECT w.chat FROM {work} AS w
                WHERE w.ready_at <= (SELECT at FROM p) AND w.until <= (SELECT at FROM p)
                ORDER BY w.ready_at LIMIT 1 FOR UPDATE SKIP LOCKED),
            seen AS (SELECT w.chat, w.stamp FROM {work} AS w
                     WHERE w.chat = (SELECT chat FROM pick)),
            taken AS (
                UPDATE {work} AS w SET owner = p.owner, until = p.until,
                    ready_at = CASE WHEN w.stamp = seen.stamp THEN p.until ELSE w.ready_at END
                FROM p, seen WHERE w.chat = seen.chat
                RETURNING w.chat, seen.stamp)
            SELECT t.chat, t.stamp, e.body FROM taken AS t
            LEFT JOIN LATERAL (
                SELECT i.body, i.seq FROM {inbox} AS i
                WHERE i.chat = t.chat AND i.body IS NOT NULL
                ORDER BY i.seq LIMIT (SELECT lim FROM p)) AS e ON true
            ORDER BY e.seq""")

        # until, until, chat, owner
        self.renew = f("""
            UPDATE {work} SET ready_at = CASE WHEN ready_at = until THEN %s ELSE ready_at END,
                              until = %s
            WHERE chat = %s AND owner = %s""")

        # chat, owner, stamp, next_at, keys -> (notifications sent,). Marks ``keys`` done
        # and ends the lease in one statement. The row goes (``gone``) when nothing is left
        # to do; otherwise (``kept``, which reads ``gone``: never both) it is updated. A
        # schedule that committed after the snapshot makes ``gone``'s recheck fail and
        # ``kept`` update the newest row instead, so news is never dropped. A late release
        # (another worker took the chat when our lease ended) keeps that worker's ready_at,
        # which brings the chat back if that worker dies. (No SQL comments: statements are
        # collapsed to one line.)
        self.finish_release = f("""
            WITH p AS (SELECT %s::text AS chat, %s::text AS owner, %s::bigint AS stamp,
                              %s::bigint AS next, %s::text[] AS keys),
            done AS (
                UPDATE {inbox} AS i SET body = NULL FROM p
                WHERE i.chat = p.chat AND i.key = ANY (p.keys) AND i.body IS NOT NULL),
            old AS (SELECT w.ready_at FROM {work} AS w, p WHERE w.chat = p.chat),
            gone AS (
                DELETE FROM {work} AS w USING p
                WHERE w.chat = p.chat AND w.stamp = p.stamp AND p.next IS NULL
                  AND (w.owner IS NULL OR w.owner = p.owner)
                RETURNING 1),
            kept AS (
                UPDATE {work} AS w SET
                    owner = CASE WHEN w.owner = p.owner THEN NULL ELSE w.owner END,
                    until = CASE WHEN w.owner = p.owner THEN 0 ELSE w.until END,
                    ready_at = CASE
                        WHEN w.stamp = p.stamp AND (w.owner IS NULL OR w.owner = p.owner)
                            THEN p.next
                        ELSE least(w.ready_at, p.next) END
                FROM p WHERE w.chat = p.chat AND NOT EXISTS (SELECT 1 FROM gone)
                RETURNING w.ready_at)
            SELECT count(pg_notify('{channel}', '')) FROM kept
            WHERE kept.ready_at IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM old WHERE old.ready_at <= kept.ready_at)""")

        # -> (ready_at,) the lowest, through the partial index
        self.next_ready = f("""
            SELECT ready_at FROM {work} WHERE ready_at IS NOT NULL
            ORDER BY ready_at LIMIT 1""")

        # id, chat, at, letter json
        self.park = f("""
            INSERT INTO {dead} AS d (id, chat, at, letter) VALUES (%s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET chat = excluded.chat, at = excluded.at,
                                           letter = excluded.letter""")
        # Ids sort byte-wise ("C"), as in every other store, whatever the database's locale.
        # limit -> (letter,)
        self.dead_all = f('SELECT letter FROM {dead} ORDER BY at, id COLLATE "C" LIMIT %s')
        # chat, limit -> (letter,)
        self.dead_of_chat = f(
            'SELECT letter FROM {dead} WHERE chat = %s ORDER BY at, id COLLATE "C" LIMIT %s'
        )
        # id
        self.drop_dead = f("DELETE FROM {dead} WHERE id = %s")
