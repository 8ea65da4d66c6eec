"""Redis: shared state for many workers and machines, Redis Cluster included.

A turn is two round trips: one script takes the chat's lock (``SET NX PX``, a lease) and reads
the record; one script writes the record if its version is still the one read, and releases
the lock. The version check, not the lock, is what guarantees no lost update: a worker whose
lease expired cannot overwrite a newer record.

Keys: ``<prefix>{<tag>}:s:<chat id>`` (a hash: ``v`` version, ``s`` state, ``c`` context JSON)
and ``<prefix>{<tag>}:l:<chat id>`` (the lock). ``<tag>`` is a digest of the id, so both keys
of a chat share one cluster hash slot whatever the id holds (braces included), and the id
itself follows verbatim, so two chats never share a key.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
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
from chat_orchestrator.state_managers._leased import LeasedStateManager
from chat_orchestrator.state_managers.base import (
    StateRecord,
    validate_chat_id,
    validate_claim_key,
    validate_write,
)

try:
    import redis
    from redis.cluster import RedisCluster
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["RedisStateManager"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str = ""

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


@functools.lru_cache(maxsize=8192)
def _keys(prefix: str, chat_id: str) -> tuple[str, str]:
    # Cached: a turn needs the keys twice, and busy chats come back often.
    tag = hashlib.blake2b(chat_id.encode("utf-8"), digest_size=8).hexdigest()
    base = f"{prefix}{{{tag}}}:"
    return f"{base}s:{chat_id}", f"{base}l:{chat_id}"


# KEYS: record, lock. ARGV: token, lease ms. -> {1, v, s, c} | {0, pttl of the lock}
_ACQUIRE_AND_LOAD = _Script("""
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local r = redis.call('HMGET', KEYS[1], 'v', 's', 'c')
  return {1, r[1], r[2], r[3]}
end
return {0, redis.call('PTTL', KEYS[2])}
""")

# KEYS: record, lock. ARGV: token ('' = not a turn: check the version only), expected
# version, state, context, ttl ms (0 = none), release (1/0). -> new version | {reason, v}
_SAVE = _Script("""
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[2]) then
  return {'conflict', v}
end
local holder = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and holder and holder ~= ARGV[1] then
  return {'locked', v}
end
redis.call('HSET', KEYS[1], 'v', v + 1, 's', ARGV[3], 'c', ARGV[4])
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
if ARGV[6] == '1' and holder then redis.call('DEL', KEYS[2]) end
return v + 1
""")

# KEYS: lock. ARGV: token.
_RELEASE = _Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# KEYS: record. ARGV: state, context, ttl ms. Unconditional write that still bumps the version.
_SET = _Script("""
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 's', ARGV[1], 'c', ARGV[2])
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return v
""")

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@/]*@")


def _scrub(text: str) -> str:
    """Hide a password in any ``redis://user:password@host`` inside ``text``."""
    return _PASSWORD_IN_URL.sub(r"\1***@", text)


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8")


class RedisStateManager(LeasedStateManager):
    """State in Redis (standalone or Cluster) for any number of worker processes.

    ``lock_lease`` (s): how long a turn may hold a chat before another worker may take it.
    ``lock_timeout`` (s): how long a turn waits for a busy chat before LockTimeoutError.
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
        lock_lease: float = 30.0,
        lock_timeout: float | None = 10.0,
        socket_timeout: float = 5.0,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces: they mark cluster hash tags")
        if client is not None:
            self._client: redis.Redis | RedisCluster = client
            kwargs = client.get_connection_kwargs() if isinstance(client, redis.Redis) else {}
            self._address = f"{kwargs.get('host', 'cluster')}:{kwargs.get('port', '?')}"
        elif url is not None:
            self._client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
            self._address = _scrub(url)
        else:
            self._client = redis.Redis(
                host=host,
                port=port,
                db=db,
                password=password,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
            )
            self._address = f"{host}:{port}"
        self._prefix = key_prefix
        self._ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        self._lease_ms = max(1, int(lock_lease * 1000))
        self._lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"RedisStateManager(address={self._address!r}, key_prefix={self._prefix!r})"

    # -- keys -------------------------------------------------------------------------------
    def keys_for(self, chat_id: str) -> tuple[str, str]:
        """The (record, lock) keys of a chat."""
        return _keys(self._prefix, chat_id)

    def _script(self, script: _Script, keys: tuple[str, ...], *args: str | int) -> Any:
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
        try:
            return function()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateManagerUnavailableError(
                f"Redis at {self._address} is unavailable while trying to {what} chat "
                f"{describe_chat_id(chat_id)}: {type(exc).__name__}"
            ) from None
        except redis.RedisError as exc:
            raise StateManagerError(
                f"Redis at {self._address} failed to {what} chat {describe_chat_id(chat_id)}: "
                f"{type(exc).__name__}: {_scrub(str(exc))}"
            ) from None

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
    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        text = validate_write(chat_id, state_id, context)
        record_key, _ = self.keys_for(chat_id)
        self._call(
            "write",
            chat_id,
            lambda: self._script(_SET, (record_key,), state_id, text, self._ttl_ms),
        )

    def delete_state(self, chat_id: str) -> None:
        record_key, _ = self.keys_for(validate_chat_id(chat_id))
        self._call("delete", chat_id, lambda: self._client.delete(record_key))

    # -- versioned records ------------------------------------------------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        record_key, _ = self.keys_for(validate_chat_id(chat_id))
        v, s, c = self._call(
            "read", chat_id, lambda: self._client.hmget(record_key, ["v", "s", "c"])
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
        args = (token or "", expected, state_id, text, self._ttl_ms, release)
        result = self._call("write", chat_id, lambda: self._script(_SAVE, keys, *args))
        if isinstance(result, list):
            reason, found = _text(result[0]), int(result[1])
            detail = "another worker holds its lock" if reason == "locked" else "it changed"
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
                f"the write expected version {expected}"
            )
        return int(result)

    # -- once-only markers -----------------------------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """``SET <prefix>m:<key> 1 NX PX ttl``: one key, one slot, atomic across workers."""
        marker = f"{self._prefix}m:{validate_claim_key(key)}"
        ttl_ms = max(1, int(ttl * 1000))
        return bool(
            self._call("claim", key, lambda: self._client.set(marker, 1, nx=True, px=ttl_ms))
        )

    def release_claim(self, key: str) -> None:
        """``DEL`` the key's marker so the key can be claimed again."""
        marker = f"{self._prefix}m:{validate_claim_key(key)}"
        self._call("release claim", key, lambda: self._client.delete(marker))

    # -- leases ---------------------------------------------------------------------------
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]:
        keys = self.keys_for(chat_id)
        reply = self._call(
            "lock", chat_id, lambda: self._script(_ACQUIRE_AND_LOAD, keys, token, self._lease_ms)
        )
        if reply[0] == 1:
            return True, self._record(chat_id, reply[1], reply[2], reply[3])
        return False, None

    def _unlock(self, chat_id: str, token: str) -> None:
        _, lock_key = self.keys_for(chat_id)
        self._call("unlock", chat_id, lambda: self._script(_RELEASE, (lock_key,), token))

    def close(self) -> None:
        self._client.close()
