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
recognises its own completed write by the writer token it stored. That is what lets ``_call``
retry once after a timeout; the driver's own retries are off (its default, three retries with
backoff, made a server that never answers cost 12x ``socket_timeout`` per call).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from chat_orchestrator._jsonctx import decode_context, encode_context
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
    check_lease_settings,
    new_token,
)
from chat_orchestrator.state_managers._primitive_ops import BlockingLeasedStateManager
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
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.connection import parse_url
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

# After the guarded import: this module needs redis-py too.
from chat_orchestrator.state_managers._redis_listing import record_info, scan_chats

__all__ = ["RedisStateManager"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

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


def _new_client(options: dict[str, Any], socket_timeout: float) -> redis.Redis:
    # retry: no driver retries (see the module docstring); _call retries once itself.
    # driver_info=None: no CLIENT SETINFO handshake, one round trip less on every connect.
    settings: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "driver_info": None,
    }
    url = options.pop("url", None)
    if url is not None:
        return redis.Redis.from_url(url, **settings)
    return redis.Redis(**options, **settings)


class RedisStateManager(BlockingLeasedStateManager):
    """State in Redis (standalone or Cluster) for any number of worker processes.

    ``lock_lease`` (s, default 10): how long a dead worker's lock outlives it; a live turn's
    lock is renewed every third of that while its step runs, however long the step takes.
    ``lock_timeout`` (s, default 30, None: forever): how long a turn waits for a busy chat
    before LockTimeoutError; longer than the lease, so a chat whose worker was killed mid-turn
    is free again before the next message gives up.
    ``ttl`` (s, optional): forget a chat after this long without a write.
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
        key_prefix: str = "chat:",
        ttl: float | None = None,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        socket_timeout: float = 5.0,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces: they mark cluster hash tags")
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
            self._client = _new_client(client_options, socket_timeout)
        self._healthy = False  # no retry until a call has succeeded (see _call)
        self._key_cache: dict[str, tuple[str, str]] = {}
        self._prefix = key_prefix
        self._ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        self._lock_timeout = lock_timeout

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

    def _script(self, script: Script, keys: tuple[str, ...], *args: str | int) -> Any:
        # EVALSHA through execute_command: redis-py's Script.__call__ costs several
        # microseconds per call in Python, a turn makes two, and a turn should cost little
        # more than the two round trips themselves. Cluster clients route EVALSHA by its keys.
        try:
            return self._client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", script.sha, len(keys), *keys, *args
            )
        except redis.exceptions.NoScriptError:  # a restarted or flushed server: EVAL loads it
            return self._client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", script.source, len(keys), *keys, *args
            )

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, chat_id: str, function: Callable[[], T]) -> T:
        # Every operation here is safe to repeat, so one lost reply (a timeout or a dropped
        # connection after the command was sent) is retried once, at once. Only while the
        # server has been answering: a server that never answers costs one socket_timeout
        # per call, not two.
        retry = self._healthy
        while True:
            try:
                result = function()
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
    def _set(self, chat_id: str, state_id: str, text: str) -> None:
        record_key, _ = self.keys_for(chat_id)
        writer = new_token()
        self._call(
            "write chat",
            chat_id,
            lambda: self._script(SET, (record_key,), state_id, text, self._ttl_ms, writer),
        )

    def _delete(self, chat_id: str) -> None:
        record_key, _ = self.keys_for(chat_id)
        self._call("delete chat", chat_id, lambda: self._client.delete(record_key))

    # -- versioned records ------------------------------------------------------------------
    def _load(self, chat_id: str) -> StateRecord | None:
        record_key, _ = self.keys_for(chat_id)
        v, s, c = self._call(
            "read chat", chat_id, lambda: self._client.hmget(record_key, ["v", "s", "c"])
        )
        return self._record(chat_id, v, s, c)

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
        keys = self.keys_for(chat_id)
        release = 0 if token is None else 1
        writer = token or new_token()
        args = (token or "", expected, state_id, text, self._ttl_ms, release, writer)
        result = self._call("write chat", chat_id, lambda: self._script(SAVE, keys, *args))
        if isinstance(result, list):
            reason, found = _text(result[0]), int(result[1])
            detail = "another worker holds its lock" if reason == "locked" else "it changed"
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
                f"the write expected version {expected}"
            )
        return int(result)

    # -- once-only markers -----------------------------------------------------------------
    def _claim(self, key: str, ttl: float) -> bool:
        """``SET <marker> <token> NX PX ttl``: one key, one slot, atomic across workers."""
        marker = (self._claim_key(key),)
        ttl_ms = max(1, int(ttl * 1000))
        token = new_token()  # a repeat after a lost reply finds its own token: still claimed
        return bool(self._call("claim", key, lambda: self._script(CLAIM, marker, token, ttl_ms)))

    def _release_claim(self, key: str) -> None:
        """Forget a claim (the work it guarded did not happen), so the key may be claimed again."""
        marker = self._claim_key(key)
        self._call("release claim", key, lambda: self._client.delete(marker))

    # -- leases ---------------------------------------------------------------------------
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]:
        keys = self.keys_for(chat_id)
        reply = self._call(
            "lock chat",
            chat_id,
            lambda: self._script(ACQUIRE_AND_LOAD, keys, token, self._lease_ms),
        )
        if reply[0] == 1:
            return True, self._record(chat_id, reply[1], reply[2], reply[3])
        return False, None

    def _unlock(self, chat_id: str, token: str) -> None:
        _, lock_key = self.keys_for(chat_id)
        self._call("unlock chat", chat_id, lambda: self._script(RELEASE, (lock_key,), token))

    def _renew(self, chat_id: str, token: str) -> bool:
        _, lock_key = self.keys_for(chat_id)
        renewed = self._call(
            "renew the lock of",
            chat_id,
            lambda: self._script(RENEW, (lock_key,), token, self._lease_ms),
        )
        return bool(renewed)

    def close(self) -> None:
        self._client.close()

    # -- operator tools ----------------------------------------------------------------------
    #: Keys asked for per SCAN call, and records read per pipelined round trip.
    list_batch = 1000

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        return scan_chats(self, state, cutoff)

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        record_key, _ = self.keys_for(validate_chat_id(chat_id))
        v, s, t = self._call(
            "read chat", chat_id, lambda: self._client.hmget(record_key, ["v", "s", "t"])
        )
        return None if v is None else record_info(chat_id, v, s, t)
