"""Redis: shared state for many workers and machines, Redis Cluster included.

A turn is two round trips: one script takes the chat's lock (``SET NX PX``, a lease) and reads
the record; one script writes the record if its version is still the one read, and releases
the lock. The version check, not the lock, is what guarantees no lost update: a worker whose
lease expired cannot overwrite a newer record.

Keys: ``<prefix>{<tag>}:s:<chat id>`` (a hash: ``v`` version, ``s`` state, ``c`` context JSON,
``w`` the token of the last writer, ``t`` the last write in the server's epoch ms; records
written before ``t`` existed lack it), ``<prefix>{<tag>}:l:<chat id>`` (the lock) and
``<prefix>{<tag>}:m:<claim key>`` (a once-only marker). ``<tag>`` is a digest of the id, so both
keys of a chat share one cluster hash slot whatever the id holds (braces included), and the id
itself follows verbatim, so two chats never share a key. A prefix cannot hold a brace, so the
first ``{`` of a key ends its prefix: managers whose prefixes nest (``p:`` and ``p:m:``) never
share a key.

Every script is safe to repeat (a reply lost on the wire makes the command run twice): the
claim and the lease carry the caller's token and treat "already mine" as success, and a write
recognises its own completed write by the writer token it stored. That is what lets ``_command_op``
retry once after a timeout; the driver's own retries are off (its default, three retries with
backoff, made a server that never answers cost 12x ``socket_timeout`` per call).

Every operation is written once, as a generator (``chat_orchestrator._io``) that yields Redis
commands as ``execute_command`` argument tuples: the EVAL fallback, the one retry, the error
classification and the redaction are decided in the operation, and the sync methods run it on
a blocking ``redis.Redis`` while the ``..._async`` ones await a ``redis.asyncio`` client of the
running loop (``_redis_clients``). Both send the same scripts, so sync and async workers share
one Redis safely.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from chat_orchestrator._io import Op, run_sync
from chat_orchestrator._jsonctx import decode_context
from chat_orchestrator.errors import (
    CorruptStateError,
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
from chat_orchestrator.state_managers._redis_scripts import (
    ACQUIRE_AND_LOAD,
    CLAIM,
    RELEASE,
    RENEW,
    SAVE,
    SET,
    Script,
)
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateRecord,
    validate_chat_id,
)

try:
    import redis
    from redis.cluster import RedisCluster
    from redis.connection import parse_url

    from chat_orchestrator.state_managers._redis_clients import (
        AsyncClient,
        AsyncClients,
        InThreads,
        build_client,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

# After the guarded import: this module needs redis-py too.
from chat_orchestrator.state_managers._redis_listing import record_info, scan_chats

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.redis import RedisPipelineStore

__all__ = ["RedisStateManager"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: One Redis command: the arguments of ``execute_command``.
Command = tuple[Any, ...]

# The key cache is per manager and bounded: ids can be 16,384 characters, and a process-wide
# cache kept thousands of them alive for good. Long ids are not worth caching at all.
_KEY_CACHE_SIZE = 1024
_KEY_CACHE_MAX_ID = 256


def _tagged(prefix: str, name: str) -> str:
    """``<prefix>{<digest of name>}:`` (the shared start of every key about ``name``)."""
    tag = hashlib.blake2b(name.encode("utf-8"), digest_size=8).hexdigest()
    return f"{prefix}{{{tag}}}:"


def _address(options: Mapping[str, Any]) -> str:
    """``host:port/db`` (or ``unix:<path>?db=<db>``) from parsed connection options.

    Built from parsed parts only, never by editing a URL, so no credential can slip through.
    """
    db = options.get("db", 0)
    if options.get("path"):
        return f"unix:{options['path']}?db={db}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}/{db}"


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8")


class RedisStateManager(LeasedStateManager):
    """State in Redis (standalone or Cluster) for any number of worker processes.

    ``lock_lease`` (s, default 10): how long a dead worker's lock outlives it; a live turn's
    lock is renewed every third of that while its step runs, however long the step takes.
    ``lock_timeout`` (s, default 30, None: forever): how long a turn waits for a busy chat
    before LockTimeoutError; longer than the lease, so a chat whose worker was killed mid-turn
    is free again before the next message gives up.
    ``ttl`` (s, optional): forget a chat after this long without a write.

    The ``..._async`` methods use a ``redis.asyncio`` client per event loop, built from the
    same options (call ``await close_async()`` before a loop ends). With ``client=`` (a
    ``redis.Redis`` or ``RedisCluster`` of your own), pass its ``redis.asyncio`` twin as
    ``async_client=`` too; without one the async path runs ``client``'s commands in worker
    threads. ``async_client=`` needs ``client=``: leases are renewed from a thread.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        *,
        url: str | None = None,
        client: redis.Redis | RedisCluster | None = None,
        async_client: AsyncClient | None = None,
        key_prefix: str = "chat:",
        ttl: float | None = None,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        socket_timeout: float = 5.0,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces: they mark cluster hash tags")
        if async_client is not None and client is None:
            raise ValueError(
                "async_client= needs client= (its blocking twin): the sync methods and the "
                "lease renewer thread use it"
            )
        self._password: str | None = password
        self._client: redis.Redis | RedisCluster
        if client is not None:
            # A client passed in keeps its own retry policy: our scripts are safe to repeat.
            self._client = client
            if isinstance(client, redis.Redis):
                options: Mapping[str, Any] = client.get_connection_kwargs()
                self._address = _address(options)
                self._password = options.get("password")
            else:
                node = client.get_default_node()  # type: ignore[no-untyped-call]
                self._address = "cluster" if node is None else f"cluster at {node.name}"
            given = InThreads(client) if async_client is None else async_client
            self._async = AsyncClients(None, given)
        else:
            if url is not None:
                try:
                    options = parse_url(url)  # type: ignore[no-untyped-call]
                except ValueError as exc:
                    raise StateManagerError(f"not a usable Redis URL: {exc}") from exc
                self._password = options.get("password")
                client_options: dict[str, Any] = {"url": url}
                self._address = _address(options)
            else:
                client_options = {"host": host, "port": port, "db": db, "password": password}
                self._address = _address(client_options)
            self._client = build_client(client_options, socket_timeout, asynchronous=False)
            factory = partial(build_client, client_options, socket_timeout, asynchronous=True)
            self._async = AsyncClients(factory, None)
        self._owns_client = client is None
        self._healthy = False  # no retry until a call has succeeded (see _command_op)
        self._key_cache: dict[str, tuple[str, str]] = {}
        self._prefix = key_prefix
        self._ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        self._lock_timeout = lock_timeout
        self._pipeline: RedisPipelineStore | None = None
        self._pipeline_guard = threading.Lock()  # one store per manager, even when threads race

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStateManager:
        """``RedisStateManager.from_url("redis://:pw@host:6379/0", ttl=...)``, as in redis-py."""
        return cls(url=url, **kwargs)

    def __repr__(self) -> str:
        return f"RedisStateManager(address={self._address!r}, key_prefix={self._prefix!r})"

    # -- keys -------------------------------------------------------------------------------
    def keys_for(self, chat_id: str) -> tuple[str, str]:
        """The (record, lock) keys of a chat."""
        cached = self._key_cache.get(chat_id)
        if cached is not None:  # a turn needs the keys twice, and busy chats come back often
            return cached
        base = _tagged(self._prefix, chat_id)
        keys = f"{base}s:{chat_id}", f"{base}l:{chat_id}"
        if len(chat_id) <= _KEY_CACHE_MAX_ID:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()  # crude but atomic, and a refill costs one digest per id
            self._key_cache[chat_id] = keys
        return keys

    def _claim_key(self, key: str) -> str:
        return f"{_tagged(self._prefix, key)}m:{key}"

    # -- the two I/O layers: one command each --------------------------------------------------
    def _execute(self, command: Command) -> Any:
        return self._client.execute_command(*command)  # type: ignore[no-untyped-call]

    async def _execute_async(self, command: Command) -> Any:
        return await self._async.current().execute_command(*command)

    # -- plumbing: every command goes through here ---------------------------------------------
    def _command_op(
        self, what: str, chat_id: str, command: Command, fallback: Command | None = None
    ) -> Op[Any]:
        """Run ``command`` (``fallback`` on NOSCRIPT), retrying once, errors of our tree.

        Every operation here is safe to repeat, so one lost reply (a timeout or a dropped
        connection after the command was sent) is retried once, at once. Only while the
        server has been answering: a server that never answers costs one socket_timeout
        per call, not two.
        """
        retry = self._healthy
        while True:
            try:
                try:
                    result = yield command
                except redis.exceptions.NoScriptError:
                    if fallback is None:
                        raise
                    result = yield fallback  # a restarted or flushed server: EVAL loads it
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if retry:
                    retry = False
                    logger.warning(
                        "Redis at %s: %s while trying to %s; retrying once",
                        self._address,
                        type(exc).__name__,
                        what,
                    )
                    continue
                self._healthy = False
                raise StateManagerUnavailableError(
                    f"Redis at {self._address} is unavailable while trying to {what} "
                    f"{describe_chat_id(chat_id)}: {type(exc).__name__}"
                ) from exc  # redis-py's texts name host:port or the socket path, no credential
            except redis.RedisError as exc:
                raise StateManagerError(
                    f"Redis at {self._address} failed to {what} {describe_chat_id(chat_id)}: "
                    f"{type(exc).__name__}: {self._redact(str(exc))}"
                ) from exc
            self._healthy = True
            return result

    def _script_op(
        self, what: str, chat_id: str, script: Script, keys: tuple[str, ...], *args: str | int
    ) -> Op[Any]:
        # EVALSHA as a plain command: redis-py's Script.__call__ costs several microseconds
        # per call in Python, a turn makes two, and a turn should cost little more than the
        # two round trips themselves. Cluster clients route EVALSHA by its keys.
        tail = (len(keys), *keys, *args)
        return (
            yield from self._command_op(
                what, chat_id, ("EVALSHA", script.sha, *tail), ("EVAL", script.source, *tail)
            )
        )

    def _redact(self, text: str) -> str:
        # The server's error texts do not echo credentials; this is a second line of defence.
        return text.replace(self._password, "***") if self._password else text

    def _record(self, chat_id: str, v: Any, s: Any, c: Any) -> StateRecord | None:
        if v is None:
            return None
        try:
            return StateRecord(_text(s), decode_context(c), int(v))
        except (AttributeError, TypeError, ValueError) as exc:  # e.g. a hash without ``c``
            raise CorruptStateError(
                f"the Redis record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
            ) from exc

    # -- seed methods -----------------------------------------------------------------------
    # The base validated every argument before these run (a dict id would be a query operator).
    def _set_op(self, chat_id: str, state_id: str, text: str) -> Op[None]:
        record_key, _ = self.keys_for(chat_id)
        writer = new_token()
        yield from self._script_op(
            "write chat", chat_id, SET, (record_key,), state_id, text, self._ttl_ms, writer
        )

    def _delete_op(self, chat_id: str) -> Op[None]:
        record_key, _ = self.keys_for(chat_id)
        yield from self._command_op("delete chat", chat_id, ("DEL", record_key))

    # -- versioned records ------------------------------------------------------------------
    def _load_op(self, chat_id: str) -> Op[StateRecord | None]:
        record_key, _ = self.keys_for(chat_id)
        v, s, c = yield from self._command_op(
            "read chat", chat_id, ("HMGET", record_key, "v", "s", "c")
        )
        return self._record(chat_id, v, s, c)

    def _write_op(
        self, chat_id: str, token: str | None, expected: int, state_id: str, text: str
    ) -> Op[int]:
        release = 0 if token is None else 1
        writer = token or new_token()
        args = (token or "", expected, state_id, text, self._ttl_ms, release, writer)
        result = yield from self._script_op(
            "write chat", chat_id, SAVE, self.keys_for(chat_id), *args
        )
        if isinstance(result, list):
            reason, found = _text(result[0]), int(result[1])
            detail = "another worker holds its lock" if reason == "locked" else "it changed"
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
                f"the write expected version {expected}"
            )
        return int(result)

    # -- once-only markers -----------------------------------------------------------------
    def _claim_op(self, key: str, ttl: float) -> Op[bool]:
        """``SET <marker> <token> NX PX ttl``: one key, one slot, atomic across workers."""
        marker = (self._claim_key(key),)
        ttl_ms = max(1, int(ttl * 1000))
        token = new_token()  # a repeat after a lost reply finds its own token: still claimed
        return bool((yield from self._script_op("claim", key, CLAIM, marker, token, ttl_ms)))

    def _release_claim_op(self, key: str) -> Op[None]:
        """Forget a claim (the work it guarded did not happen), so the key may be claimed again."""
        yield from self._command_op("release claim", key, ("DEL", self._claim_key(key)))

    # -- leases ---------------------------------------------------------------------------
    def _acquire_op(self, chat_id: str, token: str) -> Op[tuple[bool, StateRecord | None]]:
        keys = self.keys_for(chat_id)
        reply = yield from self._script_op(
            "lock chat", chat_id, ACQUIRE_AND_LOAD, keys, token, self._lease_ms
        )
        if reply[0] == 1:
            return True, self._record(chat_id, reply[1], reply[2], reply[3])
        return False, None

    def _unlock_op(self, chat_id: str, token: str) -> Op[None]:
        _, lock_key = self.keys_for(chat_id)
        yield from self._script_op("unlock chat", chat_id, RELEASE, (lock_key,), token)

    def _renew_op(self, chat_id: str, token: str) -> Op[bool]:
        _, lock_key = self.keys_for(chat_id)
        renewed = yield from self._script_op(
            "renew the lock of", chat_id, RENEW, (lock_key,), token, self._lease_ms
        )
        return bool(renewed)

    # -- the message pipeline ----------------------------------------------------------------
    def pipeline_store(self) -> RedisPipelineStore:
        """The pipeline's inbox and work index in this Redis, through this manager's clients."""
        if self._pipeline is None:
            with self._pipeline_guard:
                if self._pipeline is None:
                    from chat_orchestrator.pipeline.redis import RedisPipelineStore

                    self._pipeline = RedisPipelineStore(self)
        return self._pipeline

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    async def close_async(self) -> None:
        """Close this loop's async client (or ``async_client=``), and the blocking client the
        lease renewer used if the manager built it (it reconnects on its next command); a
        ``client=`` of the caller's is closed by ``close()``, which may end it for good."""
        await self._async.close_current()
        if self._owns_client:
            self._client.close()  # only closes sockets: does not block the loop

    # -- operator tools ----------------------------------------------------------------------
    #: Keys asked for per SCAN call, and records read per pipelined round trip.
    list_batch = 1000

    def _call(self, what: str, name: str, function: Callable[[], T]) -> T:
        """A blocking call of the operator tools (SCAN, pipelines), classified like a command."""
        return run_sync(self._command_op(what, name, ()), lambda _: function())  # type: ignore[no-any-return]

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        return scan_chats(self, state, cutoff)

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        record_key, _ = self.keys_for(validate_chat_id(chat_id))
        v, s, t = self._call(
            "read chat", chat_id, lambda: self._client.hmget(record_key, ["v", "s", "t"])
        )
        return None if v is None else record_info(chat_id, v, s, t)
