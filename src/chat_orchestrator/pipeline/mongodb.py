"""The pipeline in the database of :class:`MongoDBStateManager`, on its clients.

Collections (``<prefix>`` is the records' collection name and ``_pipe_``):

* ``<prefix>inbox``: one document per event key, ``_id`` = the key (a str: never an
  operator), ``c`` chat, ``q`` seq, ``st`` ``"p"`` (pending) or ``"d"`` (done), ``b`` the
  event's JSON (removed when done), ``u`` the end of the key's retention (epoch ms) and the
  same end as a date: ``ux`` while pending, renamed ``exp`` when done. The TTL index is on
  ``exp`` (0 s: each document carries its own end), so MongoDB deletes done keys once their
  retention ends and never a pending event. Index ``(c, st, q)``: ``pending`` is one range.
* ``<prefix>seq``: one counter per chat (``_id`` = chat, ``n``); ``$inc`` hands an add a
  block of seqs, so a chat's events sort in the order their adds reached the counter,
  whatever the clocks of the machines. The race accepted: two adds of one chat at the same
  instant (Meta's parallel deliveries) get their seqs in one order and may insert in the
  other, so a worker reading between the two inserts runs the later event first. Counters
  are never deleted (one tiny document per chat, like its record).
* ``<prefix>work``: ``_id`` = chat, ``r`` ready_at (absent: none), ``s`` stamp, ``o`` owner,
  ``l`` lease end (0: free); index on ``r``. Stamps are random 62-bit numbers, not a global
  counter (one document every add would update): a document dropped and made again never
  gets a stamp a late release still holds (collision chance 2**-62 per pair).
* ``<prefix>dead``: ``_id`` and ``i`` = letter id, ``c`` chat, ``at``, ``j`` the letter's
  JSON; indexes ``(at, i)`` and ``(c, at, i)``.

No op needs a transaction (nx-27017 and standalone servers have none); each write is one
single-document atomic command, or a sequence of them in which each command's filter alone
decides what it may change:

* ``add``: ``$inc`` the counter, ``insert_many(ordered=False)``: the unique ``_id`` refuses
  a seen key (a redelivery, or the retry of an add whose reply was lost, stores nothing
  twice); a refused key whose document is done and past its retention (the TTL monitor runs
  once a minute) is taken over by one conditional ``update_one``, which only one racer can
  match. Then the schedule (a separate command: a crash before it is repaired by Meta's
  redelivery, which schedules even when every key was seen).
* ``take``: one ``find_one_and_update`` on ``r <= now and l <= now`` sorted by ``r`` (the
  index): two workers never take one chat; a lost reply leaves a lease that ends.
* ``renew``: read, then a compare-and-set on ``(o, l, r)`` as read; a lost race reads again.
* ``release``: up to four conditional commands, one per case of (stamp still ours?) x
  (lease still ours?), tried in an order the document can only move along (a stamp never
  comes back, an owner never takes back its own chat while releasing it), so exactly one
  matches and it applies what an atomic release would at that instant; a retry repeats it.
* ``finish``: one ``update_many`` conditioned on ``st = "p"``: idempotent.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from chat_orchestrator._io import Op
from chat_orchestrator.errors import PipelineError
from chat_orchestrator.pipeline.store import DeadLetter, PipelineStore
from chat_orchestrator.state_managers._mongo_admin import ensure_ttl_index, from_ms
from chat_orchestrator.state_managers.base import validate_chat_id, validate_claim_key
from chat_orchestrator.state_managers.mongodb import MongoCall, Target

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

__all__ = ["MongoPipelineStore", "create_indexes"]

#: Below any ready_at: a range that finds every scheduled chat through the index.
_LOWEST = -(2**62)
#: Tries of an op that lost a race (an upsert's duplicate key, renew's compare-and-set).
_TRIES = 5


@dataclass(frozen=True, slots=True)
class Find:
    """``find(filter, projection).sort(sort).limit(limit)`` read to a list (sync or async)."""

    target: Target
    filter: dict[str, Any]
    projection: dict[str, Any]
    sort: tuple[tuple[str, int], ...]
    limit: int


@dataclass(frozen=True, slots=True)
class InsertNew:
    """``insert_many(docs, ordered=False)``; the result is the indexes refused as duplicates."""

    target: Target
    docs: tuple[dict[str, Any], ...]


def _text(value: str) -> str:
    """``value`` as a queried (non-``_id``) field: backslash and NUL escaped, injectively.

    nx-27017 compares such strings only up to their first NUL ("a" would find "a\\0b"'s
    events); ``_id`` is compared whole everywhere, so ids themselves are stored as they are.
    """
    # Always both replacements: escaping only NUL-holding values would let "a\\0" (raw)
    # meet "a\x00" (escaped). A str without either is returned as is by ``replace``.
    return value.replace("\\", "\\\\").replace("\x00", "\\0")


def _call(target: Target, method: str, *args: Any, **kwargs: Any) -> MongoCall:
    return MongoCall(target, method, args, tuple(kwargs.items()))


def _duplicates(exc: BulkWriteError) -> list[int]:
    errors = exc.details.get("writeErrors", [])
    if any(error.get("code") != 11000 for error in errors):
        raise exc  # another failure: the manager's classification reports it
    return [int(error["index"]) for error in errors]


def create_indexes(manager: MongoDBStateManager) -> None:
    """The pipeline's indexes (idempotent: ``create_index`` of an existing one is a no-op)."""
    targets = manager._targets
    targets["pipe_inbox"].create_index([("c", 1), ("st", 1), ("q", 1)])
    ensure_ttl_index(targets["pipe_inbox"], "exp", 0)
    targets["pipe_work"].create_index("r")
    # ``i`` repeats ``_id``: nx-27017 cannot index ``_id`` inside a compound index.
    targets["pipe_dead"].create_index([("at", 1), ("i", 1)])
    targets["pipe_dead"].create_index([("c", 1), ("at", 1), ("i", 1)])


class MongoPipelineStore(PipelineStore):
    """Inbox, work index and dead letters beside the manager's records, on its clients."""

    name = "mongodb"

    def __init__(self, manager: MongoDBStateManager) -> None:
        self._manager = manager

    def __repr__(self) -> str:
        return f"MongoPipelineStore(prefix={self._manager._targets['pipe_inbox'].full_name!r})"

    # -- I/O: the manager's clients; two reads that return lists need their own shape ----
    def _execute(self, command: Any) -> Any:
        if type(command) is Find:
            collection = self._manager._targets[command.target]
            cursor = collection.find(command.filter, command.projection)
            return list(cursor.sort(list(command.sort)).limit(command.limit))
        if type(command) is InsertNew:
            try:
                self._manager._targets[command.target].insert_many(command.docs, ordered=False)
            except BulkWriteError as exc:
                return _duplicates(exc)
            return []
        return self._manager._execute(command)

    async def _execute_async(self, command: Any) -> Any:
        if type(command) is Find:
            collection = self._manager._async_collections()[command.target]
            cursor = collection.find(command.filter, command.projection)
            return await cursor.sort(list(command.sort)).limit(command.limit).to_list()
        if type(command) is InsertNew:
            target = self._manager._async_collections()[command.target]
            try:
                await target.insert_many(command.docs, ordered=False)
            except BulkWriteError as exc:
                return _duplicates(exc)
            return []
        return await self._manager._execute_async(command)

    def _do(self, what: str, name: str, command: Any) -> Op[Any]:
        # The manager's error classification (unavailable, too large, failed), chat named.
        return (yield from self._manager._do(what, name, command))

    # -- operations -------------------------------------------------------------------------
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        counter = _call(
            "pipe_seq",
            "find_one_and_update",
            {"_id": chat_id},
            {"$inc": {"n": len(events)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        top = yield from self._upsert("store events of", chat_id, counter)
        first = int(top["n"]) - len(events) + 1
        until = now + retention_ms
        chat = _text(chat_id)
        expiry = from_ms(until)
        docs = tuple(
            {
                "_id": key,
                "c": chat,
                "q": first + n,
                "st": "p",
                "b": text,
                "u": until,
                "ux": expiry,
            }
            for n, (key, text) in enumerate(events)
        )
        refused = yield from self._do("store events of", chat_id, InsertNew("pipe_inbox", docs))
        added = [True] * len(events)
        for index in refused:
            doc = docs[index]
            # Seen, but done and past its retention (the TTL monitor has not run yet): new.
            query = {"_id": doc["_id"], "st": "d", "u": {"$lte": now}}
            fields = {k: v for k, v in doc.items() if k != "_id"}
            update = {"$set": fields, "$unset": {"exp": ""}}
            call = _call("pipe_inbox", "update_one", query, update)
            result = yield from self._do("store events of", chat_id, call)
            added[index] = result.modified_count == 1
        yield from self._schedule_op(chat_id, now)
        return added

    def _upsert(self, what: str, chat_id: str, call: MongoCall) -> Op[Any]:
        # Two upserts of one new _id may race: the loser's duplicate key means "now it
        # exists", and the same command then updates it.
        for _ in range(_TRIES - 1):
            try:
                return (yield from self._do(what, chat_id, call))
            except DuplicateKeyError:
                continue
        return (yield from self._do(what, chat_id, call))

    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        validate_chat_id(chat_id)
        if limit <= 0:
            return []
        query = Find("pipe_inbox", {"c": _text(chat_id), "st": "p"}, {"b": 1}, (("q", 1),), limit)
        docs = yield from self._do("read the inbox of", chat_id, query)
        return [doc["b"] for doc in docs]

    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        validate_chat_id(chat_id)
        checked = [validate_claim_key(key) for key in keys]
        query = {"_id": {"$in": checked}, "c": _text(chat_id), "st": "p"}
        # ``$rename``: each document's own retention end becomes its TTL date, in one command.
        update = {"$set": {"st": "d"}, "$unset": {"b": ""}, "$rename": {"ux": "exp"}}
        yield from self._do(
            "mark events done in", chat_id, _call("pipe_inbox", "update_many", query, update)
        )

    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        update = {"$min": {"r": at}, "$set": {"s": secrets.randbits(62)}, "$setOnInsert": {"l": 0}}
        call = _call("pipe_work", "update_one", {"_id": chat_id}, update, upsert=True)
        yield from self._upsert("schedule", chat_id, call)

    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        until = now + lease_ms
        call = _call(
            "pipe_work",
            "find_one_and_update",
            {"r": {"$lte": now}, "l": {"$lte": now}},
            {"$set": {"o": _text(owner), "l": until, "r": until}},
            sort=[("r", 1)],
            projection={"s": 1},
            return_document=ReturnDocument.AFTER,
        )
        doc = yield from self._do("take a chat for", owner, call)
        return None if doc is None else (doc["_id"], int(doc["s"]))

    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        owner = _text(owner)
        for _ in range(_TRIES):
            read = _call("pipe_work", "find_one", {"_id": chat_id, "o": owner}, {"r": 1, "l": 1})
            doc = yield from self._do("renew the pipeline lease of", chat_id, read)
            if doc is None:
                return False
            lease, ready = doc.get("l"), doc.get("r")
            query = {"_id": chat_id, "o": owner, "l": lease, "r": ready}
            fields: dict[str, Any] = {"l": until}
            if ready == lease:
                fields["r"] = until  # ready_at is the lease's: it moves with it
            call = _call("pipe_work", "update_one", query, {"$set": fields})
            result = yield from self._do("renew the pipeline lease of", chat_id, call)
            if result.matched_count == 1:
                return True
        return False  # the document kept changing under us: say "not renewed", safely

    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        what = "release"
        owner = _text(owner)
        ours = {"o": owner}
        theirs = {"o": {"$ne": owner}}
        drop_lease: dict[str, Any] = {"$set": {"l": 0}, "$unset": {"o": ""}}
        # 1. Our lease, no news: ready_at = next_at (None: the document goes).
        if next_at is None:
            call = _call("pipe_work", "delete_one", {"_id": chat_id, "s": stamp, **ours})
            if (yield from self._do(what, chat_id, call)).deleted_count:
                return
        else:
            update = {"$set": {"l": 0, "r": next_at}, "$unset": {"o": ""}}
            call = _call("pipe_work", "update_one", {"_id": chat_id, "s": stamp, **ours}, update)
            if (yield from self._do(what, chat_id, call)).matched_count:
                return
        # 2. Our lease, news arrived: keep the news' ready_at (or next_at if earlier).
        update = drop_lease if next_at is None else drop_lease | {"$min": {"r": next_at}}
        query = {"_id": chat_id, "s": {"$ne": stamp}, **ours}
        call = _call("pipe_work", "update_one", query, update)
        if (yield from self._do(what, chat_id, call)).matched_count:
            return
        # 3. Not our lease any more (it ended and another worker took it), no news.
        if next_at is None:
            idle = {"_id": chat_id, "s": stamp, "o": None}
            call = _call("pipe_work", "delete_one", idle)
            if (yield from self._do(what, chat_id, call)).deleted_count:
                return
            change: dict[str, Any] = {"$unset": {"r": ""}}
        else:
            change = {"$set": {"r": next_at}}
        call = _call("pipe_work", "update_one", {"_id": chat_id, "s": stamp, **theirs}, change)
        if (yield from self._do(what, chat_id, call)).matched_count or next_at is None:
            return
        # 4. Neither: only an earlier next_at matters.
        query = {"_id": chat_id, "s": {"$ne": stamp}, **theirs}
        call = _call("pipe_work", "update_one", query, {"$min": {"r": next_at}})
        yield from self._do(what, chat_id, call)

    def _next_ready_op(self) -> Op[int | None]:
        query = Find("pipe_work", {"r": {"$gte": _LOWEST}}, {"r": 1}, (("r", 1),), 1)
        docs = yield from self._do("read the work index for", "*", query)
        return int(docs[0]["r"]) if docs else None

    def _park_op(self, letter: DeadLetter) -> Op[None]:
        _check_letter_id(letter.id)
        validate_chat_id(letter.chat_id)
        fields = {
            "i": _text(letter.id),
            "c": _text(letter.chat_id),
            "at": letter.at,
            "j": letter.to_json(),
        }
        # update_one with upsert, not replace_one: nx-27017 ignores the _id of a replace upsert.
        call = _call("pipe_dead", "update_one", {"_id": letter.id}, {"$set": fields}, upsert=True)
        yield from self._upsert("park a dead letter of", letter.chat_id, call)

    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        if limit <= 0:
            return []
        query = {} if chat_id is None else {"c": _text(validate_chat_id(chat_id))}
        find = Find("pipe_dead", query, {"j": 1}, (("at", 1), ("i", 1)), limit)
        docs = yield from self._do("list dead letters of", chat_id or "*", find)
        return [doc["j"] for doc in docs]

    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        _check_letter_id(letter_id)
        call = _call("pipe_dead", "delete_one", {"_id": letter_id})
        result = yield from self._do("drop a dead letter of", "*", call)
        return result.deleted_count == 1  # type: ignore[no-any-return]


def _check_letter_id(letter_id: object) -> None:
    # Not validate_claim_key: a letter id is "event:" + a key, so it may be longer than one.
    if type(letter_id) is not str or not letter_id:
        raise PipelineError(f"a dead letter id must be a non-empty str, not {letter_id!r}")
    try:
        letter_id.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError("a dead letter id must be valid Unicode") from None
