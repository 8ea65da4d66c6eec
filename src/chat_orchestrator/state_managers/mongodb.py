"""MongoDB: shared state for many workers and machines, from sync and async code alike.

One document per chat, ``_id`` = the chat id (always a str: never a query operator):
``s`` state, ``c`` context as JSON text (so context keys such as ``$where`` or ``a.b`` are
stored as data, never interpreted), ``v`` version, ``at`` last write (for the optional TTL
index), ``lk`` the last lease token and ``lu`` its end in epoch ms (0: free).

A turn is two ``find_one_and_update``/``update_one`` round trips: take the lease and read the
record; write it if ``v`` is still the version read and the lease is still ours, dropping the
lease in the same update.

Every operation is written once, as a generator (:mod:`chat_orchestrator._io`) that yields
:class:`MongoCall` commands (which collection, which method, which arguments) and decides
on their results and errors. The sync methods run the calls on pymongo's ``MongoClient``;
the ``..._async`` methods await the same calls on pymongo's own ``AsyncMongoClient``
(pymongo >= 4.10; not Motor). So a sync and an async worker send the very same queries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from chat_orchestrator._io import Op
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
)
from chat_orchestrator.state_managers.base import (
    ChatInfo,
    StateRecord,
    keep_chat,
    validate_chat_id,
)

try:
    import pymongo
    from pymongo import AsyncMongoClient, ReturnDocument
    from pymongo.asynchronous.collection import AsyncCollection
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
    async_twin,
    client_options,
    connect,
    ensure_claims_index,
    ensure_ttl_index,
    from_ms,
)

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.mongodb import MongoPipelineStore

__all__ = ["MongoCall", "MongoDBStateManager", "Target"]

_RECORD_FIELDS = {"s": 1, "c": 1, "v": 1}
Target = Literal["states", "claims", "pipe_inbox", "pipe_seq", "pipe_work", "pipe_dead"]
#: The message pipeline's collections, ``<collection>_<target>`` (see pipeline.mongodb).
_PIPELINE_TARGETS: tuple[Target, ...] = ("pipe_inbox", "pipe_seq", "pipe_work", "pipe_dead")


@dataclass(frozen=True, slots=True)
class MongoCall:
    """One command of an operation: ``<target collection>.<method>(*args, **kwargs)``.

    ``target`` is ``"states"`` (the chats) or ``"claims"`` (``<collection>_claims``); the
    sync layer calls the method on a pymongo ``Collection``, the async layer awaits it on the
    matching ``AsyncCollection``. ``kwargs`` is a tuple of pairs so the command is immutable.
    """

    target: Target
    method: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def _call(target: Target, method: str, *args: Any, **kwargs: Any) -> MongoCall:
    return MongoCall(target, method, args, tuple(kwargs.items()))


@dataclass(frozen=True, slots=True)
class _Blocking:
    """Index set-up on the sync client: run as is by the sync layer, in a thread by the async."""

    function: Callable[[], Any]


T = TypeVar("T")
_INFO_FIELDS = {"s": 1, "v": 1, "at": 1}


def _now_ms() -> int:
    return int(time.time() * 1000)


class MongoDBStateManager(LeasedStateManager):
    """State in a MongoDB collection for any number of worker processes, sync or async.

    ``lock_lease`` (s, default 10): how long a dead worker's lease outlives it (measured with
    the workers' clocks: keep them in sync); a live turn renews its lease every third of that
    while its step runs, however long the step takes. ``lock_timeout`` (s, default 30, None:
    forever): how long a turn waits for a busy chat; longer than the lease, so a chat whose
    worker was killed mid-turn is free again before the next message gives up.
    ``ttl`` (s, optional): a TTL index drops chats idle that long; a different ``ttl`` after a
    restart changes that index in place (``collMod``). Claims expire per document, so their
    ``ttl`` may differ from call to call. A bad ``uri`` is StateManagerError, no secret shown.

    The async methods use ``async_client`` if given, else an ``AsyncMongoClient`` made from
    the same URI and options (or from the injected ``client``'s arguments), one per event
    loop (pymongo binds an async client to its loop; an injected ``async_client`` serves the
    loop it is first used on); :meth:`close_async` closes the running loop's one. The sync
    client is always there: the lease renewer thread and the one-time index set-up (TTL
    index at construction, claims index at the first claim, in a worker thread on the async
    path) use it.
    """

    def __init__(
        self,
        uri: str = "mongodb://localhost:27017",
        *,
        database: str = "chat_orchestrator",
        collection: str | Collection[dict[str, Any]] = "chat_states",
        client: pymongo.MongoClient[dict[str, Any]] | None = None,
        async_client: AsyncMongoClient[dict[str, Any]] | None = None,
        ttl: float | None = None,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(collection, Collection):
            self._collection = collection
            client = collection.database.client
            self._address = ",".join(f"{h}:{p}" for h, p in client.nodes)
            self._new_async: Callable[[], AsyncMongoClient[dict[str, Any]]] = partial(
                async_twin, client
            )
        else:
            if client is None:
                client, self._address = connect(uri, timeout)
                # The URI was checked by ``connect``: the async clients cannot fail on it.
                self._new_async = partial(AsyncMongoClient, uri, **client_options(timeout))
            else:
                self._address = ",".join(f"{h}:{p}" for h, p in client.nodes) or "injected client"
                self._new_async = partial(async_twin, client)
            self._collection = client[database][collection]
        self._targets: dict[str, Collection[dict[str, Any]]] = {
            "states": self._collection,
            "claims": self._collection.database[f"{self._collection.name}_claims"],
        }
        # Handles only (no I/O): listed now so every event loop's async twins include them.
        for target in _PIPELINE_TARGETS:
            self._targets[target] = self._collection.database[f"{self._collection.name}_{target}"]
        self._pipeline: MongoPipelineStore | None = None
        self._pipeline_lock = threading.Lock()
        self._async_client = async_client
        self._async_targets: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[AsyncMongoClient[dict[str, Any]], dict[str, AsyncCollection[dict[str, Any]]]],
        ] = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        self._claims_indexed = False
        self._lease_ms = check_lease_settings(lock_lease, lock_timeout)
        self._lock_timeout = lock_timeout
        if ttl is not None:
            seconds = max(1, int(ttl))
            self._run(
                self._do(
                    "create the TTL index for",
                    "*",
                    _Blocking(partial(ensure_ttl_index, self._collection, "at", seconds)),
                )
            )

    def __repr__(self) -> str:
        return (
            f"MongoDBStateManager(address={self._address!r}, "
            f"collection={self._collection.full_name!r})"
        )

    # -- the two I/O layers ----------------------------------------------------------------
    def _execute(self, command: MongoCall | _Blocking) -> Any:
        if type(command) is _Blocking:
            return command.function()
        assert type(command) is MongoCall
        method = getattr(self._targets[command.target], command.method)
        return method(*command.args, **dict(command.kwargs))

    async def _execute_async(self, command: MongoCall | _Blocking) -> Any:
        if type(command) is _Blocking:
            return await asyncio.to_thread(command.function)
        assert type(command) is MongoCall
        method = getattr(self._async_collections()[command.target], command.method)
        return await method(*command.args, **dict(command.kwargs))

    def _async_collections(self) -> dict[str, AsyncCollection[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        found = self._async_targets.get(loop)
        if found is None:
            with self._async_lock:  # two threads' loops may start at once
                found = self._async_targets.get(loop)
                if found is None:
                    client = self._async_client or self._new_async()
                    database = client[self._collection.database.name]
                    collections = {
                        target: database[collection.name]
                        for target, collection in self._targets.items()
                    }
                    found = self._async_targets[loop] = (client, collections)
        return found[1]

    # -- error classification, once for both layers --------------------------------------
    def _do(self, what: str, name: str, command: MongoCall | _Blocking) -> Op[Any]:
        """Yield one command; a driver error becomes ours (DuplicateKeyError is the op's)."""
        try:
            return (yield command)
        except DuplicateKeyError:
            raise
        except ConnectionFailure as exc:
            raise StateManagerUnavailableError(
                f"MongoDB at {self._address} is unavailable while trying to {what} chat "
                f"{describe_chat_id(name)}: {type(exc).__name__}"
            ) from None
        except DocumentTooLarge as exc:
            raise StateManagerError(
                f"the record of chat {describe_chat_id(name)} is over MongoDB's document "
                f"size limit (16 MiB): {exc}"
            ) from None
        except PyMongoError as exc:
            raise StateManagerError(
                f"MongoDB at {self._address} failed to {what} chat {describe_chat_id(name)}: "
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
    def _set_op(self, chat_id: str, state_id: str, text: str) -> Op[None]:
        update = {
            "$set": {"s": state_id, "c": text, "at": _utcnow()},
            "$inc": {"v": 1},
            "$setOnInsert": {"lu": 0},
        }
        call = _call("states", "update_one", {"_id": chat_id}, update, upsert=True)
        yield from self._do("write", chat_id, call)

    def _delete_op(self, chat_id: str) -> Op[None]:
        yield from self._do("delete", chat_id, _call("states", "delete_one", {"_id": chat_id}))

    # -- versioned records ------------------------------------------------------------------
    def _load_op(self, chat_id: str) -> Op[StateRecord | None]:
        call = _call("states", "find_one", {"_id": chat_id}, _RECORD_FIELDS)
        doc = yield from self._do("read", chat_id, call)
        return self._record(chat_id, doc)

    def _write_op(
        self, chat_id: str, token: str | None, expected: int, state_id: str, text: str
    ) -> Op[int]:
        query: dict[str, Any] = {"_id": chat_id, "v": expected if expected else {"$exists": False}}
        update: dict[str, Any] = {
            "$set": {"s": state_id, "c": text, "v": expected + 1, "at": _utcnow()}
        }
        if token is not None:
            query["lk"] = token  # still our lease (an expired one nobody took is still ours)
            update["$set"]["lu"] = 0  # drop the lease in the same write
        else:
            update["$setOnInsert"] = {"lu": 0}
        upsert = token is None and not expected
        try:
            call = _call("states", "update_one", query, update, upsert=upsert)
            result = yield from self._do("write", chat_id, call)
            written = result.matched_count == 1 or result.upserted_id is not None
        except DuplicateKeyError:
            written = False  # an upsert for a new chat met an existing document
        if not written:
            current = yield from self._load_op(chat_id)
            found = 0 if current is None else current.version
            detail = "another worker took its lease" if found == expected else "it changed"
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found} and {detail}; "
                f"the write expected version {expected}"
            )
        return expected + 1

    # -- once-only markers -----------------------------------------------------------------
    def _claim_op(self, key: str, ttl: float) -> Op[bool]:
        """A document per key in ``<collection>_claims``; the unique ``_id`` makes it atomic."""
        if not self._claims_indexed:
            # Each marker carries its own end (``exp``), so one TTL index of 0 s serves every
            # ``ttl``: a new retention after a restart never needs a different index.
            setup = _Blocking(partial(ensure_claims_index, self._targets["claims"]))
            yield from self._do("index claims for", key, setup)
            self._claims_indexed = True
        now = _now_ms()
        until = now + max(1, int(ttl * 1000))
        fields = {"until": until, "exp": from_ms(until), "at": _utcnow()}
        try:
            yield from self._do("claim", key, _call("claims", "insert_one", {"_id": key, **fields}))
            return True
        except DuplicateKeyError:
            pass
        # Taken before: it counts again only once expired.
        query = {"_id": key, "until": {"$lt": now}}
        call = _call("claims", "find_one_and_update", query, {"$set": fields})
        taken = yield from self._do("claim", key, call)
        return taken is not None

    def _release_claim_op(self, key: str) -> Op[None]:
        """Forget ``key``: the next ``claim`` of it succeeds (a turn that failed to run)."""
        call = _call("claims", "delete_one", {"_id": key})
        yield from self._do("release the claim of", key, call)

    # -- leases ---------------------------------------------------------------------------
    def _acquire_op(self, chat_id: str, token: str) -> Op[tuple[bool, StateRecord | None]]:
        now = _now_ms()
        # Every document has ``lu`` (0 when free), so one range condition finds a free lease.
        query = {"_id": chat_id, "lu": {"$lt": now}}
        update = {"$set": {"lk": token, "lu": now + self._lease_ms}}
        call = _call(
            "states",
            "find_one_and_update",
            query,
            update,
            projection=_RECORD_FIELDS,
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        try:
            doc = yield from self._do("lock", chat_id, call)
        except DuplicateKeyError:
            doc = None  # MongoDB: the document exists and its lease is live
        # nx-27017 answers that same case with no document instead of the duplicate key error.
        return (False, None) if doc is None else (True, self._record(chat_id, doc))

    def _unlock_op(self, chat_id: str, token: str) -> Op[None]:
        # A new chat whose first turn failed leaves no lease-only document behind.
        leased_only = {"_id": chat_id, "lk": token, "v": {"$exists": False}}
        removed = yield from self._do("unlock", chat_id, _call("states", "delete_one", leased_only))
        if removed.deleted_count == 0:
            call = _call("states", "update_one", {"_id": chat_id, "lk": token}, {"$set": {"lu": 0}})
            yield from self._do("unlock", chat_id, call)

    def _renew_op(self, chat_id: str, token: str) -> Op[bool]:
        # ``lu > 0``: a lease already dropped (by the write or an unlock) is never revived.
        query = {"_id": chat_id, "lk": token, "lu": {"$gt": 0}}
        update = {"$set": {"lu": _now_ms() + self._lease_ms}}
        call = _call("states", "update_one", query, update)
        result = yield from self._do("renew the lease of", chat_id, call)
        return result.matched_count == 1  # type: ignore[no-any-return]

    # -- the message pipeline ---------------------------------------------------------------
    def pipeline_store(self) -> MongoPipelineStore:
        """The pipeline's inbox, work index and dead letters, beside the records."""
        with self._pipeline_lock:  # two threads' first calls must get one store
            if self._pipeline is None:
                from chat_orchestrator.pipeline import mongodb as pipe

                self._call("index the pipeline of", "*", partial(pipe.create_indexes, self))
                self._pipeline = pipe.MongoPipelineStore(self)
            return self._pipeline

    def close(self) -> None:
        self._collection.database.client.close()

    async def close_async(self) -> None:
        """Close the running loop's async client, then the sync one (in a worker thread)."""
        try:
            loop = asyncio.get_running_loop()
            found = self._async_targets.pop(loop, None)
            if found is not None:
                await found[0].close()
        finally:
            await asyncio.to_thread(self.close)

    # -- operator tools ----------------------------------------------------------------------
    def _call(self, what: str, name: str, function: Callable[[], T]) -> T:
        """A blocking call of the operator tools, classified like every operation's command."""
        return self._run(self._do(what, name, _Blocking(function)))  # type: ignore[no-any-return]

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
