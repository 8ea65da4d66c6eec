"""Open any store from a URL: ``open_store("sqlite:///chats.db")``.

Built-in schemes (a registry by scheme, as ``litestar.stores.registry`` keeps stores by name;
add your own with :func:`register_store`):

=============================================  ==========================================
``memory:``                                    :class:`InMemoryStateManager` (this process)
``file:///var/lib/bot/states``                 :class:`FileStateManager` (an absolute dir);
                                               options ``fsync``, ``lock_timeout``
``sqlite:///chats.db``, ``sqlite:////abs.db``  :class:`SQLiteStateManager`: three slashes and
                                               a relative path, four for an absolute one (as
                                               SQLAlchemy); options ``synchronous``,
                                               ``busy_timeout``, ``lock_lease``,
                                               ``lock_timeout``
``redis://``, ``rediss://``, ``unix://``        :class:`RedisStateManager` (redis-py's URL)
``redis+cluster://``, ``rediss+cluster://``    the same on a Redis Cluster (any one node)
``mongodb://``, ``mongodb+srv://``             :class:`MongoDBStateManager`; the URL's path
                                               names the database
``postgresql://u:pw@host:5432/db``,            :class:`PostgresStateManager` (libpq's URL;
``postgres://``                                libpq's own query options pass through);
                                               options ``schema``, ``table_prefix``,
                                               ``lock_lease``, ``lock_timeout``,
                                               ``connect_timeout``, ``statement_timeout``,
                                               ``max_size``
=============================================  ==========================================

``sqlite:///:memory:`` is refused: each connection would see its own empty database; use
``memory:``. Credentials in a URL never reach a repr, a log line or an error message
(:func:`redact_url` is what every message uses); a bad URL raises :class:`StoreURLError`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from chat_orchestrator.errors import (
    ChatOrchestratorError,
    StateManagerUnavailableError,
    StoreURLError,
)
from chat_orchestrator.state_managers.base import StateManager

__all__ = [
    "STORE_VARIABLE",
    "StoreOpener",
    "open_store",
    "redact_url",
    "register_store",
    "store_url",
]

_log = logging.getLogger(__name__)

#: Builds a store from its whole URL (the scheme already matched).
StoreOpener = Callable[[str], StateManager]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_USERINFO = re.compile(r"(://)[^/?#]*@")


def _is_secret(name: str, value: str) -> bool:
    # The value too: MongoDB's authMechanismProperties=AWS_SESSION_TOKEN:<token> carries a
    # secret under a harmless name.
    return _SECRET_PARAM.search(name) is not None or _SECRET_PARAM.search(value) is not None


def redact_url(url: str) -> str:
    """``url`` with any password (and secret-looking query values) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            if ":" in userinfo:
                url = url.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{hosts}", 1)
        if query and _SECRET_PARAM.search(unquote(query)):
            hidden = "&".join(
                f"{name}=***" if _is_secret(name, value) else f"{name}={value}"
                for name, value in parse_qsl(query, keep_blank_values=True)
            )
            url = url.replace(f"?{query}", f"?{hidden}", 1)
        return url
    except ValueError:  # unparsable (e.g. a broken IPv6 host): hide the whole user part
        return _USERINFO.sub(r"\1***@", url.split("?", 1)[0])


def _secrets_of(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if _is_secret(k, v)]
    except ValueError:
        found = [url]  # cannot tell what is secret: treat the whole URL as such
    return [secret for secret in found if secret]


def _fail(url: str, reason: str) -> StoreURLError:
    return StoreURLError(f"cannot open store {redact_url(url)!r}: {reason}")


# -- the registry ----------------------------------------------------------------------------
_OPENERS: dict[str, StoreOpener] = {}


def register_store(scheme: str, opener: StoreOpener, *, replace: bool = False) -> None:
    """Let :func:`open_store` open ``scheme://...`` URLs with ``opener(url)``.

    Replacing an existing scheme (a built-in included) needs ``replace=True``.
    """
    scheme = scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        raise ValueError(f"{scheme!r} is not a URL scheme")
    if scheme in _OPENERS and not replace:
        raise ValueError(f"scheme {scheme!r} is already registered; pass replace=True")
    _OPENERS[scheme] = opener


def open_store(url: str) -> StateManager:
    """The store a URL names (see the module docstring for the schemes)."""
    if not isinstance(url, str):
        raise StoreURLError(f"a store URL must be a str, got {type(url).__name__}")
    scheme = url.partition(":")[0].lower()
    if ":" not in url or not _SCHEME.fullmatch(scheme):
        raise _fail(url, "it has no scheme (for example sqlite:///chats.db or memory:)")
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise _fail(url, f"unknown scheme {scheme!r}; known: {', '.join(sorted(_OPENERS))}")
    _log.debug("opening store %s", redact_url(url))
    try:
        return opener(url)
    except ChatOrchestratorError:
        raise  # ours: already says what failed, without secrets
    except Exception as exc:
        error = _fail(url, type(exc).__name__)
        # The driver's own message may quote the URL, password and all: keep it only if not.
        if any(secret in str(exc) for secret in _secrets_of(url)):
            raise error from None
        error.args = (f"{error.args[0]}: {exc}",)
        raise error from exc


#: The environment variable that names a store for the command and the examples.
STORE_VARIABLE = "CHAT_STORE"


def store_url(argv: Sequence[str] | None = None, *, default: str = "memory:") -> str:
    """A script's store URL: ``--store URL`` in ``argv`` (default ``sys.argv[1:]``), else
    ``$CHAT_STORE``, else ``default``. Other arguments are left to the script."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store", metavar="URL")
    given = parser.parse_known_args(argv)[0].store
    return given or os.environ.get(STORE_VARIABLE) or default


# -- helpers for the built-in openers ------------------------------------------------------
def _options(url: str, parts: SplitResult, allowed: dict[str, Callable[[str], Any]]) -> Any:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = allowed.get(name)
        if convert is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise _fail(url, f"unknown option {name!r} (options: {known})")
        try:
            options[name] = convert(value)
        except ValueError as exc:
            raise _fail(url, f"option {name}={value!r}: {exc}") from None
    return options


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _seconds_or_none(value: str) -> float | None:
    return None if value.lower() in {"", "none"} else float(value)


def _no_authority(url: str, parts: SplitResult, example: str) -> None:
    if parts.netloc not in {"", "localhost"}:
        raise _fail(url, f"a host is not allowed here; write it as {example}")


# -- built-in openers ------------------------------------------------------------------------
def _open_memory(url: str) -> StateManager:
    from chat_orchestrator.state_managers.inmemory import InMemoryStateManager

    if url.partition(":")[2] not in {"", "//"}:
        raise _fail(url, "a memory store takes nothing after 'memory:'")
    return InMemoryStateManager()


def _open_file(url: str) -> StateManager:
    from chat_orchestrator.state_managers.file import FileStateManager

    parts = urlsplit(url)
    _no_authority(url, parts, "file:///absolute/dir")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise _fail(url, "a file store needs an absolute directory: file:///absolute/dir")
    options = _options(url, parts, {"fsync": _flag, "lock_timeout": _seconds_or_none})
    return FileStateManager(path, **options)


def _open_sqlite(url: str) -> StateManager:
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

    parts = urlsplit(url)
    _no_authority(url, parts, "sqlite:///relative.db or sqlite:////absolute.db")
    path = unquote(parts.path)[1:]  # "/x.db" -> "x.db", "//abs.db" -> "/abs.db"
    if path in {"", ":memory:"}:
        raise _fail(
            url,
            "SQLite needs a file (every connection sees its own in-memory "
            "database); use memory: for a store in memory",
        )
    options = _options(
        url,
        parts,
        {
            "synchronous": str,
            "busy_timeout": float,
            "lock_lease": float,
            "lock_timeout": _seconds_or_none,
        },
    )
    try:
        return SQLiteStateManager(path, **options)
    except ValueError as exc:
        raise _fail(url, str(exc)) from exc


def _open_redis(url: str) -> StateManager:
    from chat_orchestrator.state_managers.redis import RedisStateManager

    return RedisStateManager(url=url)


def _open_redis_cluster(url: str) -> StateManager:
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    from chat_orchestrator.state_managers.redis import RedisStateManager

    plain = url.replace("+cluster", "", 1)  # redis-py's own URL: redis:// or rediss://
    try:
        client = RedisCluster.from_url(plain)  # asks the node for the slot map right away
    except (RedisError, RedisClusterException) as exc:
        raise StateManagerUnavailableError(
            f"Redis Cluster at {redact_url(url)!r} is unavailable: {type(exc).__name__}"
        ) from None  # redis-py's message may hold the URL
    return RedisStateManager(client=client)


#: The PostgreSQL store's own options; any other query option is libpq's (sslmode, ...).
_POSTGRES_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "table_prefix": str,
    "lock_lease": float,
    "lock_timeout": _seconds_or_none,
    "connect_timeout": float,
    "statement_timeout": float,
    "max_size": int,
}


def _open_postgres(url: str) -> StateManager:
    from urllib.parse import urlencode

    from chat_orchestrator.state_managers.postgres import PostgresStateManager

    parts = urlsplit(url)
    ours = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    mine = {k: v for k, v in ours if k in _POSTGRES_OPTIONS}
    options = _options(url, parts._replace(query=urlencode(mine)), _POSTGRES_OPTIONS)
    # libpq's connect_timeout is ours too (the wait for a connection): never both.
    rest = [(k, v) for k, v in ours if k not in _POSTGRES_OPTIONS]
    conninfo = parts._replace(query=urlencode(rest)).geturl()
    try:
        return PostgresStateManager(conninfo, **options)
    except (TypeError, ValueError) as exc:
        raise _fail(url, str(exc)) from exc


def _open_mongodb(url: str) -> StateManager:
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

    database = unquote(urlsplit(url).path.lstrip("/"))
    if database:
        return MongoDBStateManager(url, database=database)
    return MongoDBStateManager(url)


for _scheme, _opener in {
    "memory": _open_memory,
    "file": _open_file,
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
    "unix": _open_redis,
    "redis+cluster": _open_redis_cluster,
    "rediss+cluster": _open_redis_cluster,
    "mongodb": _open_mongodb,
    "mongodb+srv": _open_mongodb,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}.items():
    register_store(_scheme, _opener)
