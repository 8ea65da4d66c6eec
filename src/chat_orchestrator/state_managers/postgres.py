"""PostgreSQL: shared state for many workers and machines, on psycopg 3 and psycopg_pool.

A turn is two short autocommit statements, each on a connection checked out of the pool for
that statement only: take the chat's lease and read its record (one ``INSERT ... ON
CONFLICT DO UPDATE ... RETURNING``), then write the record if its version is still the one
read and the lease still ours, dropping the lease in the same statement. The lease is a
column with a deadline on the server's clock, not a transaction or a row lock, so no
connection is held while a step runs, and a killed worker's chats are free when its leases
end. The version check, not the lease, is what guarantees no lost update.

Every operation is written once, as a generator (:mod:`chat_orchestrator._io`) yielding
:class:`~chat_orchestrator.state_managers._postgres_pool.Command` statements (all of them
in ``_postgres_sql``); the sync methods run them on a ``psycopg_pool.ConnectionPool``, the
``..._async`` methods await them on an ``AsyncConnectionPool`` of the running loop. Sync and
async workers therefore send the same statements and share one database safely.

**Ids:** PostgreSQL ``text`` cannot hold NUL, so chat ids, state ids and claim keys holding
``"\\x00"`` are refused with :class:`~chat_orchestrator.errors.InvalidChatIdError` (its
subclasses for state ids and claim keys) before anything is sent; every other valid id is
stored as is and round-trips exactly. Contexts are JSON text, where NUL is escaped.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from chat_orchestrator._io import Op
from chat_orchestrator._jsonctx import decode_context
from chat_orchestrator.errors import (
    CorruptStateError,
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidStateIdError,
    MissingDependencyError,
    StateManagerError,
    StateManagerUnavailableError,
    VersionConflictError,
    describe_chat_id,
)
from chat_orchestrator.state_managers._leased import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_TIMEOUT,
    LeasedStateManager,
    check_lease_settings,
    new_token,
)
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateRecord,
    validate_chat_id,
)

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("psycopg", "postgres") from exc

# After the guarded import: these need psycopg too.
from chat_orchestrator.state_managers import _postgres_sql as sql
from chat_orchestrator.state_managers._postgres_pool import (
    AsyncPools,
    Command,
    SyncPool,
    address_of,
    async_factory,
    parse_conninfo,
    secrets_of,
)

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.postgres import PostgresPipelineStore

__all__ = ["PostgresStateManager"]

logger = logging.getLogger(__name__)

#: A sweep of expired claims runs after this many claims by one manager.
SWEEP_EVERY = 512
#: Longest lease (ms): the deadline is a bigint of server epoch ms.
_MAX_LEASE_MS = 100 * 365 * 86_400_000


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def _no_nul(value: str, what: str, error: type[InvalidChatIdError]) -> str:
    if "\x00" in value:
        raise error(
            f"{what} {describe_chat_id(value)} holds NUL, which PostgreSQL text cannot store"
        )
    return value


class PostgresStateManager(LeasedStateManager):
    """State in PostgreSQL tables for any number of worker processes, sync or async.

    Give a ``postgresql://user:pass@host:port/db`` URL or a libpq conninfo string
    (``"host=... dbname=..."``), or your own ``pool=`` (``psycopg_pool.ConnectionPool``)
    and/or ``async_pool=`` (``AsyncConnectionPool``); a missing twin is built from the
    other's conninfo. Pools you pass are used as they are (give them
    ``check=ConnectionPool.check_connection`` so connections the server killed while idle
    are replaced) and are not closed by :meth:`close`.

    ``schema`` (default: the connection's ``search_path``) and ``table_prefix`` (default
    ``chat_``) name the tables, so two bots share a database. The tables are created on the
    first operation, or by :meth:`setup` (idempotent; also ``chat-orchestrator store init``).
    ``lock_lease`` / ``lock_timeout``: as for every leased store (10 s / 30 s).
    ``connect_timeout`` (s, default 5): how long an operation waits for a connection before
    StateManagerUnavailableError (a refused connection fails at once);
    ``statement_timeout`` (s, default 5): the server cancels a statement running longer.
    ``max_size``: connections per pool (one sync pool, one async pool per event loop).

    Ids holding NUL are refused with InvalidChatIdError (PostgreSQL text cannot store NUL).
    """

    stores_nul = False

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        async_pool: AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
        table_prefix: str = "chat_",
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        max_size: int = 10,
    ) -> None:
        given = pool if pool is not None else async_pool
        if (conninfo is None) == (given is None):
            raise ValueError("give a URL or conninfo string, or pool= / async_pool=, not both")
        if conninfo is not None and not isinstance(conninfo, str):
            raise TypeError(f"conninfo must be a str, not {type(conninfo).__name__}")
        if type(max_size) is not int or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, not {max_size!r}")
        wait = _seconds(connect_timeout, "connect_timeout")
        statement_ms = max(1, int(_seconds(statement_timeout, "statement_timeout") * 1000))
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        if self._lease_ms > _MAX_LEASE_MS:
            raise ValueError(f"lock_lease must be at most {_MAX_LEASE_MS // 1000} s")
        self._lock_timeout = lock_timeout
        self._names = sql.Names(schema, table_prefix)
        self._sql = sql.Statements(self._names)

        kwargs: dict[str, Any]
        if given is not None:
            # psycopg_pool also takes callables here (credentials fetched per connection);
            # then the address is unknown and the async twin needs its own pool.
            conninfo = given.conninfo if isinstance(given.conninfo, str) else ""
            kwargs = dict(given.kwargs) if isinstance(given.kwargs, dict) else {}
        else:
            kwargs = {}
        assert conninfo is not None
        params = {**parse_conninfo(conninfo), **kwargs}
        self._secrets = secrets_of(params)
        self._address = address_of(params)
        if given is None:
            # Ours: autocommit (every statement its own short transaction), libpq's connect
            # timeout (whole seconds, at least 2) and the server-side statement timeout.
            kwargs = {
                "autocommit": True,
                "connect_timeout": max(2, math.ceil(wait)),
                "options": f"-c statement_timeout={statement_ms}",
            }
        async_kwargs = {**kwargs, "autocommit": True}
        # The lease renewer thread and the sync methods use the blocking pool, so there is
        # one even for an async-only caller: small when it only renews.
        sync_size = max_size if async_pool is None or pool is not None else 2
        self._sync = SyncPool(
            self._address,
            wait,
            pool=pool,
            conninfo=conninfo,
            kwargs=async_kwargs,
            max_size=sync_size,
        )
        self._async = AsyncPools(
            self._address,
            wait,
            None
            if async_pool is not None
            else async_factory(conninfo, async_kwargs, wait, max_size),
            async_pool,
        )
        self._ready = False  # the tables are checked (and created) by the first operation
        self._claims_since_sweep = 0
        self._pipeline: PostgresPipelineStore | None = None
        self._pipeline_lock = threading.Lock()  # one store per manager, even when threads race

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresStateManager:
        """``PostgresStateManager.from_url("postgresql://u:pw@host:5432/db", schema=...)``."""
        return cls(url, **kwargs)

    def __repr__(self) -> str:
        return (
            f"PostgresStateManager(address={self._address!r}, schema={self._names.schema!r}, "
            f"table_prefix={self._names.prefix!r})"
        )

    # -- the two I/O layers: one statement each ----------------------------------------------
    def _execute(self, command: Command) -> Any:
        return self._sync.execute(command)

    async def _execute_async(self, command: Command) -> Any:
        return await self._async.execute(command)

    # -- plumbing: every statement goes through here -------------------------------------------
    def _query(
        self, what: str, name: str | None, command: Command, *, retry: bool = True
    ) -> Op[Any]:
        """Run ``command`` (after the set-up, the first time), errors of our tree.

        ``retry``: the statement is safe to repeat (all of ours are), so a connection that
        broke under it (a restarted server, a killed backend) is replaced and the statement
        sent once more. A failure to get a connection at all is never retried here: it
        already waited ``connect_timeout``.
        """
        if not self._ready:
            yield from self._guarded(
                "set up the tables of", None, Command(self._sql.setup, (), "rowcount")
            )
            self._ready = True
        return (yield from self._guarded(what, name, command, retry=retry))

    def _guarded(
        self, what: str, name: str | None, command: Command, *, retry: bool = True
    ) -> Op[Any]:
        while True:
            try:
                return (yield command)
            except psycopg.errors.QueryCanceled as exc:
                raise self._error(
                    StateManagerUnavailableError,
                    what,
                    name,
                    "it did not answer within the statement timeout",
                    exc,
                ) from None
            except psycopg.OperationalError as exc:
                if retry:
                    retry = False
                    logger.warning(
                        "PostgreSQL at %s: %s while trying to %s; retrying once",
                        self._address,
                        type(exc).__name__,
                        what,
                    )
                    continue
                raise self._error(
                    StateManagerUnavailableError, what, name, type(exc).__name__, exc
                ) from None
            except psycopg.errors.UndefinedTable as exc:
                self._ready = False  # dropped under us: the next operation re-creates them
                raise self._error(
                    StateManagerError,
                    what,
                    name,
                    f"the tables {self._names.where} are missing (run setup())",
                    exc,
                ) from None
            except psycopg.errors.RaiseException as exc:
                raise self._error(StateManagerError, what, name, self._text(exc), exc) from None
            except psycopg.Error as exc:
                raise self._error(
                    StateManagerError,
                    what,
                    name,
                    f"{type(exc).__name__} ({exc.sqlstate}): {self._text(exc)}",
                    exc,
                ) from None

    def _text(self, exc: psycopg.Error) -> str:
        text = exc.diag.message_primary or str(exc).split("\n", 1)[0]
        for secret in self._secrets:  # a second line of defence: servers do not echo them
            text = text.replace(secret, "***")
        return text[:300]

    def _error(
        self,
        kind: type[StateManagerError],
        what: str,
        name: str | None,
        why: str,
        exc: psycopg.Error,
    ) -> StateManagerError:
        target = "" if name is None else f" {describe_chat_id(name)}"
        place = self._names.where if name is None else self._address
        error = kind(f"PostgreSQL at {self._address} failed to {what}{target} ({place}): {why}")
        # Chained by hand without psycopg's text in our message; the cause keeps the detail
        # for a debugger, the log line gets only ours.
        error.__cause__ = exc
        logger.warning("%s", error)
        return error

    def _record(self, chat_id: str, row: Any) -> StateRecord | None:
        if row is None or row[2] == 0:
            return None
        state_id, context, version = row
        try:
            if not isinstance(state_id, str) or not isinstance(context, str):
                raise ValueError("state or context is not text")
            return StateRecord(state_id, decode_context(context), int(version))
        except ValueError as exc:
            raise CorruptStateError(
                f"the PostgreSQL record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
            ) from exc

    # -- set-up -------------------------------------------------------------------------------
    def setup(self) -> int:
        """Create or migrate the tables (idempotent, safe from many processes); the version."""
        self._ready = False
        return int(
            self._run(
                self._query("read the schema version of", None, Command(self._sql.read_version))
            )[0][0]
        )

    async def setup_async(self) -> int:
        self._ready = False
        rows = await self._run_async(
            self._query("read the schema version of", None, Command(self._sql.read_version))
        )
        return int(rows[0][0])

    # -- seed methods -------------------------------------------------------------------------
    def _set_op(self, chat_id: str, state_id: str, text: str) -> Op[None]:
        _no_nul(chat_id, "chat id", InvalidChatIdError)
        _no_nul(state_id, "state id", InvalidStateIdError)
        command = Command(self._sql.set, (chat_id, state_id, text), "rowcount")
        # Repeating it bumps the version once more: harmless for an unconditional write.
        yield from self._query("write chat", chat_id, command, retry=True)

    def _delete_op(self, chat_id: str) -> Op[None]:
        _no_nul(chat_id, "chat id", InvalidChatIdError)
        command = Command(self._sql.delete, (chat_id,), "rowcount")
        yield from self._query("delete chat", chat_id, command, retry=True)

    # -- versioned records ------------------------------------------------------------------
    def _load_op(self, chat_id: str) -> Op[StateRecord | None]:
        _no_nul(chat_id, "chat id", InvalidChatIdError)
        rows = yield from self._query(
            "read chat", chat_id, Command(self._sql.load, (chat_id,)), retry=True
        )
        return self._record(chat_id, rows[0] if rows else None)

    def _write_op(
        self, chat_id: str, token: str | None, expected: int, state_id: str, text: str
    ) -> Op[int]:
        _no_nul(chat_id, "chat id", InvalidChatIdError)
        _no_nul(state_id, "state id", InvalidStateIdError)
        writer = token or new_token()
        if token is not None:
            params: tuple[Any, ...] = (state_id, text, writer, chat_id, expected, token, chat_id)
            statement = self._sql.write_in_turn
        elif expected:
            params = (state_id, text, writer, chat_id, expected, chat_id)
            statement = self._sql.write_existing
        else:
            params = (chat_id, state_id, text, writer, chat_id)
            statement = self._sql.write_new
        command = Command(statement, params)
        rows = yield from self._query("write chat", chat_id, command, retry=True)
        written, found, holder, last_writer = rows[0]
        if written is not None:
            return int(written)
        found = 0 if found is None else int(found)
        if last_writer == writer and found == expected + 1:
            return found  # repeated after a lost reply: the first try had written it
        detail = (
            "another worker took its lease"
            if token is not None and found == expected and holder != token
            else "it changed"
        )
        raise VersionConflictError(
            f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
            f"the write expected version {expected}"
        )

    # -- once-only markers -----------------------------------------------------------------
    def _claim_op(self, key: str, ttl: float) -> Op[bool]:
        """A row per key; the primary key makes it atomic across workers. Expired claims
        are swept every ``SWEEP_EVERY`` claims, so the table stays small."""
        _no_nul(key, "claim key", InvalidClaimKeyError)
        ttl_ms = max(1, int(ttl * 1000))
        command = Command(self._sql.claim, (key, ttl_ms, new_token()))
        rows = yield from self._query("claim key", key, command, retry=True)
        self._claims_since_sweep += 1  # racy across threads: only paces the sweep
        if self._claims_since_sweep >= SWEEP_EVERY:
            self._claims_since_sweep = 0
            swept = yield from self._query(
                "sweep the claims of", None, Command(self._sql.sweep_claims, (), "rowcount")
            )
            logger.debug("swept %d expired claims from %s", swept, self._names.where)
        return bool(rows)

    def _release_claim_op(self, key: str) -> Op[None]:
        _no_nul(key, "claim key", InvalidClaimKeyError)
        command = Command(self._sql.release_claim, (key,), "rowcount")
        yield from self._query("release key", key, command, retry=True)

    def sweep_claims(self) -> int:
        """Delete expired claims now; returns how many."""
        command = Command(self._sql.sweep_claims, (), "rowcount")
        return int(self._run(self._query("sweep the claims of", None, command)))

    # -- leases -----------------------------------------------------------------------------
    def _acquire_op(self, chat_id: str, token: str) -> Op[tuple[bool, StateRecord | None]]:
        _no_nul(chat_id, "chat id", InvalidChatIdError)
        command = Command(self._sql.acquire, (chat_id, token, self._lease_ms))
        rows = yield from self._query("lock chat", chat_id, command, retry=True)
        if not rows:
            return False, None
        return True, self._record(chat_id, rows[0])

    def _unlock_op(self, chat_id: str, token: str) -> Op[None]:
        command = Command(self._sql.unlock, (chat_id, token, chat_id, token), "rowcount")
        yield from self._query("unlock chat", chat_id, command, retry=True)

    def _renew_op(self, chat_id: str, token: str) -> Op[bool]:
        command = Command(self._sql.renew, (self._lease_ms, chat_id, token), "rowcount")
        changed = yield from self._query("renew the lease of chat", chat_id, command, retry=True)
        return bool(changed == 1)

    # -- the message pipeline ---------------------------------------------------------------
    def pipeline_store(self) -> PostgresPipelineStore:
        """The pipeline's inbox, work index and dead letters, in this store's schema (built
        on the first call; the tables come with the schema's migrations)."""
        with self._pipeline_lock:
            if self._pipeline is None:
                from chat_orchestrator.pipeline.postgres import PostgresPipelineStore

                self._pipeline = PostgresPipelineStore(self)
            return self._pipeline

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pool this manager built (a ``pool=`` of yours stays open) and the
        pipeline's listening connection."""
        if self._pipeline is not None:
            self._pipeline.close()
        self._sync.close()

    async def close_async(self) -> None:
        """Close the running loop's async pool (if this manager built it)."""
        await self._async.close_current()

    # -- operator tools ----------------------------------------------------------------------
    #: Rows per round trip of :meth:`iter_chats`'s server-side cursor.
    list_batch = 1000

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        if state is not None:
            _no_nul(state, "state id", InvalidStateIdError)
        before = sql.MAX_TIME_MS if cutoff is None else int(cutoff * 1000)
        if not self._ready:
            self.setup()
        try:
            # A named (server-side) cursor streams list_batch rows per round trip: constant
            # memory at any size. It needs a transaction, held only while the listing runs.
            with (
                self._sync.connection() as conn,
                conn.transaction(),
                conn.cursor(name="chat_orchestrator_list") as cursor,
            ):
                cursor.itersize = self.list_batch
                cursor.execute(self._sql.list, (state, state, before))
                for chat_id, state_id, version, updated in cursor:
                    yield ChatInfo(chat_id, state_id, int(version), updated / 1000)
        except psycopg.Error as exc:
            kind = (
                StateManagerUnavailableError
                if isinstance(exc, psycopg.OperationalError)
                else StateManagerError
            )
            raise self._error(kind, "list chats", None, type(exc).__name__, exc) from None

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        _no_nul(validate_chat_id(chat_id), "chat id", InvalidChatIdError)
        rows = self._run(
            self._query("read chat", chat_id, Command(self._sql.info, (chat_id,)), retry=True)
        )
        if not rows:
            return None
        state_id, version, updated = rows[0]
        return ChatInfo(chat_id, state_id, int(version), updated / 1000)
