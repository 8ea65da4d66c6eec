"""MongoDB: shared state for many workers and machines.

One document per chat, ``_id`` = the chat id (always a str: never a query operator):
``s`` state, ``c`` context as JSON text (so context keys such as ``$where`` or ``a.b`` are
stored as data, never interpreted), ``v`` version, ``at`` last write (for the optional TTL
index), ``lk`` the last lease token and ``lu`` its end in epoch ms (0: free).

A turn is two ``find_one_and_update``/``update_one`` round trips: take the lease and read the
record; write it if ``v`` is still the version read and the lease is still ours, dropping the
lease in the same update.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
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
)
from chat_orchestrator.state_managers._primitive_ops import BlockingLeasedStateManager
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateRecord,
    keep_chat,
    validate_chat_id,
)

try:
    import pymongo
    from pymongo import ReturnDocument
    from pymongo.collection import Collection
    from pymongo.errors import (
        ConnectionFailure,
        DocumentTooLarge,
        DuplicateKeyError,
        PyMongoError,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("pymongo", "mongo") from exc

# After the guarded import: this module needs pymongo too.
from chat_orchestrator.state_managers._mongo_admin import (
    connect,
    ensure_claims_index,
    ensure_ttl_index,
    from_ms,
)

__all__ = ["MongoDBStateManager"]

T = TypeVar("T")
_RECORD_FIELDS = {"s": 1, "c": 1, "v": 1}
_INFO_FIELDS = {"s": 1, "v": 1, "at": 1}


def _now_ms() -> int:
    return int(time.time() * 1000)


class MongoDBStateManager(BlockingLeasedStateManager):
    """State in a MongoDB collection for any number of worker processes.

    ``lock_lease`` (s, default 10): how long a dead worker's lease outlives it (measured with
    the workers' clocks: keep them in sync); a live turn renews its lease every third of that
    while its step runs, however long the step takes. ``lock_timeout`` (s, default 30, None:
    forever): how long a turn waits for a busy chat; longer than the lease, so a chat whose
    worker was killed mid-turn is free again before the next message gives up.
    ``ttl`` (s, optional): a TTL index drops chats idle that long; a different ``ttl`` after a
    restart changes that index in place (``collMod``). Claims expire per document, so their
    ``ttl`` may differ from call to call. A bad ``uri`` is StateManagerError, no secret shown.
    """

    def __init__(
        self,
        uri: str = "mongodb://localhost:27017",
        *,
        database: str = "chat_orchestrator",
        collection: str | Collection[dict[str, Any]] = "chat_states",
        client: pymongo.MongoClient[dict[str, Any]] | None = None,
        ttl: float | None = None,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(collection, Collection):
            self._collection = collection
            self._address = ",".join(f"{h}:{p}" for h, p in collection.database.client.nodes)
        else:
            if client is None:
                client, self._address = connect(uri, timeout)
            else:
                self._address = ",".join(f"{h}:{p}" for h, p in client.nodes) or "injected client"
            self._collection = client[database][collection]
        self._claims_indexed = False
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        self._lock_timeout = lock_timeout
        if ttl is not None:
            seconds = max(1, int(ttl))
            self._call(
                "create the TTL index for",
                "*",
                lambda: ensure_ttl_index(self._collection, "at", seconds),
            )

    def __repr__(self) -> str:
        return (
            f"MongoDBStateManager(address={self._address!r}, "
            f"collection={self._collection.full_name!r})"
        )

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, chat_id: str, function: Callable[[], T]) -> T:
        try:
            return function()
        except ConnectionFailure as exc:
            raise StateManagerUnavailableError(
                f"MongoDB at {self._address} is unavailable while trying to {what} chat "
                f"{describe_chat_id(chat_id)}: {type(exc).__name__}"
            ) from None
        except DocumentTooLarge as exc:
            raise StateManagerError(
                f"the record of chat {describe_chat_id(chat_id)} is over MongoDB's document "
                f"size limit (16 MiB): {exc}"
            ) from None
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            raise StateManagerError(
                f"MongoDB at {self._address} failed to {what} chat {describe_chat_id(chat_id)}: "
                f"{type(exc).__name__}"
            ) from None

    @staticmethod
    def _record(chat_id: str, doc: dict[str, Any] | None) -> StateRecord | None:
        if doc is None or "v" not in doc:
            return None  # no document, or only another turn's lease on a new chat
        try:
            state_id, version = doc["s"], doc["v"]
            if not isinstance(state_id, str) or not isinstance(version, int) or version < 1:
                raise ValueError("bad state or version")
            return StateRecord(state_id, decode_context(doc["c"]), version)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"the MongoDB record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
            ) from exc

    # -- seed methods -----------------------------------------------------------------------
    # The base validated every argument before these run (a dict id would be a query operator).
    def _set(self, chat_id: str, state_id: str, text: str) -> None:
        update = {
            "$set": {"s": state_id, "c": text, "at": _utcnow()},
            "$inc": {"v": 1},
            "$setOnInsert": {"lu": 0},
        }
        self._call(
            "write",
            chat_id,
            lambda: self._collection.update_one({"_id": chat_id}, update, upsert=True),
        )

    def _delete(self, chat_id: str) -> None:
        self._call("delete", chat_id, lambda: self._collection.delete_one({"_id": chat_id}))

    # -- versioned records ------------------------------------------------------------------
    def _load(self, chat_id: str) -> StateRecord | None:
        doc = self._call(
            "read", chat_id, lambda: self._collection.find_one({"_id": chat_id}, _RECORD_FIELDS)
        )
        return self._record(chat_id, doc)

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
        query: dict[str, Any] = {"_id": chat_id, "v": expected if expected else {"$exists": False}}
        update: dict[str, Any] = {
            "$set": {"s": state_id, "c": text, "v": expected + 1, "at": _utcnow()}
        }
        if token is not None:
            query["lk"] = token  # still our lease (an expired one nobody took is still ours)
            update["$set"]["lu"] = 0  # drop the lease in the same write
        else:
            update["$setOnInsert"] = {"lu": 0}
        try:
            result = self._call(
                "write",
                chat_id,
                lambda: self._collection.update_one(
                    query, update, upsert=token is None and not expected
                ),
            )
            written = result.matched_count == 1 or result.upserted_id is not None
        except DuplicateKeyError:
            written = False  # an upsert for a new chat met an existing document
        if not written:
            current = self.load(chat_id)
            found = 0 if current is None else current.version
            detail = "another worker took its lease" if found == expected else "it changed"
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
                f"the write expected version {expected}"
            )
        return expected + 1

    # -- once-only markers -----------------------------------------------------------------
    @property
    def _claims(self) -> Collection[dict[str, Any]]:
        return self._collection.database[f"{self._collection.name}_claims"]

    def _claim(self, key: str, ttl: float) -> bool:
        """A document per key in ``<collection>_claims``; the unique ``_id`` makes it atomic."""
        claims = self._claims
        if not self._claims_indexed:
            # Each marker carries its own end (``exp``), so one TTL index of 0 s serves every
            # ``ttl``: a new retention after a restart never needs a different index.
            self._call("index claims for", key, lambda: ensure_claims_index(claims))
            self._claims_indexed = True
        now = _now_ms()
        until = now + max(1, int(ttl * 1000))
        fields = {"until": until, "exp": from_ms(until), "at": _utcnow()}

        def insert() -> bool:
            try:
                claims.insert_one({"_id": key, **fields})
                return True
            except DuplicateKeyError:
                # Taken before: it counts again only once expired.
                taken = claims.find_one_and_update(
                    {"_id": key, "until": {"$lt": now}}, {"$set": fields}
                )
                return taken is not None

        return self._call("claim", key, insert)

    def _release_claim(self, key: str) -> None:
        """Forget ``key``: the next ``claim`` of it succeeds (a turn that failed to run)."""
        claims = self._claims
        self._call("release the claim of", key, lambda: claims.delete_one({"_id": key}))

    # -- leases ---------------------------------------------------------------------------
    def _try_acquire(self, chat_id: str, token: str) -> tuple[bool, StateRecord | None]:
        now = _now_ms()
        # Every document has ``lu`` (0 when free), so one range condition finds a free lease.
        query = {"_id": chat_id, "lu": {"$lt": now}}
        update = {"$set": {"lk": token, "lu": now + self._lease_ms}}
        try:
            doc = self._call(
                "lock",
                chat_id,
                lambda: self._collection.find_one_and_update(
                    query,
                    update,
                    projection=_RECORD_FIELDS,
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                ),
            )
        except DuplicateKeyError:
            doc = None  # MongoDB: the document exists and its lease is live
        # nx-27017 answers that same case with no document instead of the duplicate key error.
        return (False, None) if doc is None else (True, self._record(chat_id, doc))

    def _unlock(self, chat_id: str, token: str) -> None:
        def release() -> None:
            # A new chat whose first turn failed leaves no lease-only document behind.
            removed = self._collection.delete_one(
                {"_id": chat_id, "lk": token, "v": {"$exists": False}}
            )
            if removed.deleted_count == 0:
                self._collection.update_one({"_id": chat_id, "lk": token}, {"$set": {"lu": 0}})

        self._call("unlock", chat_id, release)

    def _renew(self, chat_id: str, token: str) -> bool:
        # ``lu > 0``: a lease already dropped (by the write or an unlock) is never revived.
        query = {"_id": chat_id, "lk": token, "lu": {"$gt": 0}}
        update = {"$set": {"lu": _now_ms() + self._lease_ms}}
        result = self._call(
            "renew the lease of",
            chat_id,
            lambda: self._collection.update_one(query, update),
        )
        return result.matched_count == 1

    def close(self) -> None:
        self._collection.database.client.close()

    # -- operator tools ----------------------------------------------------------------------
    #: Documents per cursor batch of :meth:`iter_chats`.
    list_batch = 1000

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        # A server-side cursor with a projection: the state filter runs in the server and the
        # contexts never cross the wire. The idle filter runs here, on the projected ``at``:
        # servers differ in how they compare dates (nx-27017 hands them back as text).
        query: dict[str, Any] = {"v": {"$exists": True}}
        if state is not None:
            query["s"] = state
        cursor = self._call(
            "list",
            "*",
            lambda: self._collection.find(query, _INFO_FIELDS, batch_size=self.list_batch),
        )
        with cursor:
            while True:
                doc = self._call("list", "*", lambda: next(cursor, None))
                if doc is None:
                    return
                info = self._info(doc)
                if keep_chat(info, None, cutoff):
                    yield info

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        validate_chat_id(chat_id)
        doc = self._call(
            "read",
            chat_id,
            lambda: self._collection.find_one(
                {"_id": chat_id, "v": {"$exists": True}}, _INFO_FIELDS
            ),
        )
        return None if doc is None else self._info(doc)

    @staticmethod
    def _info(doc: dict[str, Any]) -> ChatInfo:
        chat_id, state_id, version = doc["_id"], doc.get("s"), doc.get("v")
        if (
            not isinstance(chat_id, str)
            or not isinstance(state_id, str)
            or type(version) is not int
        ):
            raise CorruptStateError(
                f"the MongoDB record of chat {describe_chat_id(chat_id)} has bad fields"
            )
        return ChatInfo(chat_id, state_id, version, _epoch(doc.get("at")))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _epoch(at: object) -> float | None:
    """``at`` (a BSON date, naive UTC as pymongo returns it, or ISO text) in epoch seconds."""
    if isinstance(at, str):
        try:
            at = dt.datetime.fromisoformat(at)
        except ValueError:
            return None
    if not isinstance(at, dt.datetime):
        return None
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()


def _from_ms(epoch_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
