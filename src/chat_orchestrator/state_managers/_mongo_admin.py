"""MongoDB set-up: clients from a URI (errors without secrets), TTL indexes changed in place.

Imported by :mod:`chat_orchestrator.state_managers.mongodb` only, after pymongo imported there.
Index set-up is blocking (pymongo's sync API): it runs once, at construction or at the first
claim, and the async path runs it in a worker thread, so it never blocks an event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from chat_orchestrator.errors import StateManagerError

__all__ = [
    "async_twin",
    "client_options",
    "connect",
    "ensure_claims_index",
    "ensure_ttl_index",
    "from_ms",
]

logger = logging.getLogger(__name__)


def _secrets_in(uri: str) -> list[str]:
    """The user-info of ``uri`` and its parts, raw and percent-decoded, longest first."""
    rest = uri.partition("://")[2]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo = netloc.rpartition("@")[0]
    parts = {userinfo, *userinfo.split(":")}
    parts |= {urllib.parse.unquote_plus(part) for part in parts}
    return sorted((part for part in parts if part), key=len, reverse=True)


def _redact(text: str, uri: str) -> str:
    for secret in _secrets_in(uri):
        text = text.replace(secret, "***")
    return text


def connect(uri: str, timeout: float) -> tuple[pymongo.MongoClient[dict[str, Any]], str]:
    """A client and its ``host:port`` list; a bad URI is StateManagerError with no secret.

    The cause chained is a copy of the driver's exception with any user-info replaced by
    ``***`` (its traceback kept), so a logged traceback shows no password either.
    """
    if not isinstance(uri, str):
        raise StateManagerError(f"the MongoDB URI must be a str, not {type(uri).__name__}")
    try:
        nodes = parse_uri(uri)["nodelist"]  # resolves mongodb+srv (DNS) once, here
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, **client_options(timeout)
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        failure = exc
    else:
        return client, ",".join(f"{host}:{port}" for host, port in nodes)
    # Raised outside the ``except`` block, so the original is not even the hidden __context__.
    reason = _redact(f"{type(failure).__name__}: {failure}", uri)
    try:
        cause: BaseException = type(failure)(_redact(str(failure), uri))
    except Exception:  # an exception type with another constructor: keep the message only
        cause = StateManagerError(reason)
    raise StateManagerError(
        f"invalid MongoDB URI or client options ({reason})"
    ) from cause.with_traceback(failure.__traceback__)


def client_options(timeout: float) -> dict[str, Any]:
    """The options of every client a manager makes, sync and async alike (one timeout)."""
    ms = int(timeout * 1000)
    return {"serverSelectionTimeoutMS": ms, "connectTimeoutMS": ms, "socketTimeoutMS": ms}


def async_twin(client: pymongo.MongoClient[dict[str, Any]]) -> AsyncMongoClient[dict[str, Any]]:
    """An ``AsyncMongoClient`` made with the arguments ``client`` was made with.

    For a sync client a user injected without an ``async_client``: pymongo keeps its
    constructor arguments (``_init_kwargs``, what its own ``_duplicate`` uses), URI, options
    and event listeners included, so the async path talks to the same servers the same way.
    """
    arguments = getattr(client, "_init_kwargs", None)
    if not isinstance(arguments, dict):
        raise StateManagerError(
            "cannot derive an AsyncMongoClient from the injected MongoClient; pass "
            "async_client= to use the async methods"
        )
    return AsyncMongoClient(**arguments)


def ensure_ttl_index(collection: Collection[dict[str, Any]], field: str, seconds: int) -> None:
    """A TTL index on ``field`` of ``seconds``, changing an existing one in place.

    MongoDB refuses ``createIndex`` for a key that already has an index with other options
    (IndexOptionsConflict), so a changed TTL goes through ``collMod``. Indexes are found by
    key, not name: another tool (or server) may have named it differently.
    """
    for info in collection.list_indexes():
        if dict(info["key"]) != {field: 1}:
            continue
        current = info.get("expireAfterSeconds")
        if current is None:
            raise StateManagerError(
                f"{collection.full_name} has an index {info['name']!r} on {field!r} that is not "
                "a TTL index; drop it to let chat-orchestrator expire documents"
            )
        if current != seconds:
            logger.info(
                "changing the TTL index of %s on %r from %s s to %s s",
                collection.full_name,
                field,
                current,
                seconds,
            )
            collection.database.command(
                {
                    "collMod": collection.name,
                    "index": {"keyPattern": {field: 1}, "expireAfterSeconds": seconds},
                }
            )
        return
    collection.create_index(field, expireAfterSeconds=seconds)


def from_ms(epoch_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)


def ensure_claims_index(claims: Collection[dict[str, Any]]) -> None:
    for info in claims.list_indexes():
        # Before per-marker expiry, claims expired ``retention`` after ``at``: that index
        # would delete markers early after a longer retention, so it goes, once the markers
        # it served carry their own ``exp`` (the TTL index ignores a document without one).
        if dict(info["key"]) == {"at": 1} and "expireAfterSeconds" in info:
            _backfill_expiry(claims)
            logger.info("dropping the old TTL index %r of %s", info["name"], claims.full_name)
            claims.drop_index(info["name"])
    ensure_ttl_index(claims, "exp", 0)


def _backfill_expiry(claims: Collection[dict[str, Any]]) -> None:
    # Plain updates in batches, not an update pipeline: not every server speaks those.
    batch: list[UpdateOne] = []
    for doc in claims.find({"exp": {"$exists": False}}, {"until": 1}):
        until = doc.get("until")
        if isinstance(until, int):
            query = {"_id": doc["_id"], "exp": {"$exists": False}}
            batch.append(UpdateOne(query, {"$set": {"exp": from_ms(until)}}))
        if len(batch) >= 1000:
            claims.bulk_write(batch, ordered=False)
            batch = []
    if batch:
        claims.bulk_write(batch, ordered=False)
