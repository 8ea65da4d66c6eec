"""The state manager contract.

A user's own manager implements only the three seed methods of the original API
(``get_state``, ``set_state``, ``delete_state``) and gets working defaults for the rest:

* a **process-local** per-chat lock (threads of one process are serialized; other processes
  are not: use a built-in backend or override :meth:`StateManager.lock` for that), and
* versions that are a fingerprint of the stored content, so a write is still conditional on
  what was read.

Built-in backends override :meth:`load`, :meth:`compare_and_set`, :meth:`lock` and, where a
backend can do a whole turn in fewer round trips, :meth:`begin_turn`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from chat_orchestrator._jsonctx import check_text, encode_context
from chat_orchestrator.errors import (
    ContextSerializationError,
    CorruptStateError,
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidClaimTTLError,
    InvalidStateIdError,
    StoreCapabilityError,
    VersionConflictError,
    describe_chat_id,
)
from chat_orchestrator.state_managers._locks import ClaimTable, KeyedLock

if TYPE_CHECKING:
    from chat_orchestrator.pipeline.store import PipelineStore
    from chat_orchestrator.state_managers.async_base import AsyncTurnLease

__all__ = [
    "MAX_CHAT_ID_LENGTH",
    "MAX_CLAIM_KEY_LENGTH",
    "MAX_CLAIM_TTL",
    "MAX_STATE_ID_LENGTH",
    "ChatInfo",
    "RecordStateManager",
    "StateManager",
    "StateRecord",
    "StateUpdate",
    "TurnLease",
    "chat_filter",
    "keep_chat",
    "validate_chat_id",
    "validate_claim_key",
    "validate_claim_ttl",
    "validate_state_id",
    "validate_write",
]

#: Longest chat id accepted (characters). WhatsApp ids are ~15 digits; this leaves room for
#: any channel's ids while keeping keys and file headers bounded.
MAX_CHAT_ID_LENGTH = 16_384


#: Longest claim key accepted (characters); channels build keys from ids of similar size.
MAX_CLAIM_KEY_LENGTH = MAX_CHAT_ID_LENGTH
#: Longest state id accepted (characters): state ids are names in code, not user data.
MAX_STATE_ID_LENGTH = 1_024


def _validate_id(value: object, what: str, limit: int, error: type[InvalidChatIdError]) -> str:
    # One copy of the id rules. Cheap on the hot path: a type check, a length and, for
    # ASCII text (nearly every id), no encoding at all.
    if type(value) is not str:
        raise error(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise error(f"{what} must not be empty")
    if len(value) > limit:
        raise error(f"{what} is {len(value)} characters long; the limit is {limit}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(
                f"{what} {describe_chat_id(value)} is not valid Unicode (lone surrogate)"
            ) from None
    return value


def validate_chat_id(chat_id: object) -> str:
    """Return ``chat_id`` if every backend can store it exactly, else raise InvalidChatIdError.

    Accepted: any non-empty ``str`` of at most :data:`MAX_CHAT_ID_LENGTH` characters that is
    valid Unicode (NUL, path separators, ``$``, emoji are all fine: backends never use the id
    as a path or a query operator). Refused: non-str ids (a dict could become a MongoDB query
    operator), the empty string, lone surrogates (not encodable as UTF-8), overlong ids.
    """
    if type(chat_id) is str and chat_id.isascii() and 0 < len(chat_id) <= MAX_CHAT_ID_LENGTH:
        return chat_id  # the hot path: one call, no encoding
    return _validate_id(chat_id, "chat id", MAX_CHAT_ID_LENGTH, InvalidChatIdError)


def validate_claim_key(key: object) -> str:
    """Return ``key`` if it is a valid claim key (the rules of :func:`validate_chat_id`).

    Raises InvalidClaimKeyError: a non-str key (``1``, ``b"x"``) must not alias its str form.
    """
    if type(key) is str and key.isascii() and 0 < len(key) <= MAX_CLAIM_KEY_LENGTH:
        return key
    return _validate_id(key, "claim key", MAX_CLAIM_KEY_LENGTH, InvalidClaimKeyError)


#: Longest claim ttl accepted (seconds, 100 years): every backend can add it to a clock in ms
#: (SQLite and Redis take 64-bit integers) and WhatsApp's retention is 7 days.
MAX_CLAIM_TTL = 100 * 365 * 86_400


def validate_claim_ttl(ttl: object) -> float:
    """Return ``ttl`` if it is a positive, finite number of seconds up to :data:`MAX_CLAIM_TTL`.

    Raises InvalidClaimTTLError: a NaN ttl would make every claim win (a message run twice),
    and a str, an infinity or 1e300 would fail as a raw TypeError/OverflowError in a driver.
    """
    if type(ttl) is not float and type(ttl) is not int:
        raise InvalidClaimTTLError(
            f"claim ttl must be a number of seconds, not {type(ttl).__name__}"
        )
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_CLAIM_TTL):
        raise InvalidClaimTTLError(
            f"claim ttl must be > 0 and at most {MAX_CLAIM_TTL} seconds, not {ttl!r}"
        )
    return ttl


def validate_state_id(state_id: object) -> str:
    """Return ``state_id`` if it can be stored: a non-empty, valid-Unicode ``str`` of at most
    :data:`MAX_STATE_ID_LENGTH` characters; else raise InvalidStateIdError."""
    if type(state_id) is str and state_id.isascii() and 0 < len(state_id) <= MAX_STATE_ID_LENGTH:
        return state_id
    return _validate_id(state_id, "state id", MAX_STATE_ID_LENGTH, InvalidStateIdError)


def validate_write(
    chat_id: str, state_id: str, context: dict[str, Any], encoded: str | None = None
) -> str:
    """Check a write before it touches a store; return the context's JSON text.

    Raises InvalidChatIdError, InvalidStateIdError or ContextSerializationError (original
    chained). ``encoded``, when given, is the caller's own encoding of ``context`` (a turn
    has it); it is still checked to be valid Unicode, the one thing a store cannot take.
    """
    validate_chat_id(chat_id)
    validate_state_id(state_id)
    try:
        if encoded is None:
            return encode_context(context)
        if not encoded.isascii():
            check_text(encoded)
        return encoded
    except (TypeError, ValueError) as exc:
        raise ContextSerializationError(
            f"the context cannot be stored as JSON: {exc}", chat_id=chat_id, state_id=state_id
        ) from exc


@dataclass(frozen=True, slots=True)
class StateRecord:
    """What a backend stores for one chat. ``context`` is a fresh dict owned by the caller."""

    state_id: str
    context: dict[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """A turn's result, named once: the next state and its context, dict and JSON text.

    ``context_json`` is what backends store; ``context`` is the same value as a dict, for
    managers that store dicts (the three seed methods take one).
    """

    state_id: str
    context: dict[str, Any]
    context_json: str


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """One line of a store's chat list: what an operator asks about a chat, without its context.

    ``updated_at`` is the last write in epoch seconds; ``None`` for a record written before
    the store kept timestamps (it counts as idle for any ``idle_for``).
    """

    chat_id: str
    state_id: str
    version: int
    updated_at: float | None


def chat_filter(state: str | None, idle_for: float | None) -> tuple[str | None, float | None]:
    """Check the filters of :meth:`StateManager.iter_chats`; returns ``(state, cutoff)``.

    ``cutoff`` is the epoch time a chat's last update must not be after (``None``: any).
    """
    if state is not None:
        validate_state_id(state)
    if idle_for is None:
        return state, None
    if isinstance(idle_for, bool) or not isinstance(idle_for, int | float) or not idle_for >= 0:
        raise ValueError(f"idle_for must be seconds >= 0, not {idle_for!r}")
    return state, time.time() - idle_for


def keep_chat(info: ChatInfo, state: str | None, cutoff: float | None) -> bool:
    """Whether ``info`` passes the filters (for stores that cannot filter themselves)."""
    if state is not None and info.state_id != state:
        return False
    return cutoff is None or info.updated_at is None or info.updated_at <= cutoff


class TurnLease:
    """One chat's turn: holds the chat's lock from creation until :meth:`close`.

    ``record`` is what was stored when the turn began (``None`` for a new chat).
    :meth:`commit` stores the new state conditionally on ``record.version``.
    """

    __slots__ = ("_held", "_manager", "chat_id", "record")

    def __init__(self, manager: StateManager, chat_id: str) -> None:
        self._manager = manager
        self.chat_id = chat_id
        self._held: AbstractContextManager[None] | None = None
        held = manager.lock(chat_id)
        held.__enter__()
        self._held = held
        try:
            self.record = manager.load(chat_id)
        except BaseException:
            self.close()
            raise

    def commit(self, update: StateUpdate) -> None:
        """Store ``update`` if the chat is still at the version this turn read."""
        expected = 0 if self.record is None else self.record.version
        self._manager.compare_and_set(
            self.chat_id,
            update.state_id,
            update.context,
            expected_version=expected,
            encoded=update.context_json,
        )

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def fingerprint(chat_id: str, state_id: str, context: dict[str, Any]) -> int:
    """The default version of a seed-only manager's record: a hash of its content."""
    try:
        text = encode_context(context)
    except (TypeError, ValueError) as exc:
        raise CorruptStateError(
            f"the record of chat {describe_chat_id(chat_id)} holds a context that breaks "
            f"the context rules: {exc}"
        ) from exc
    # A user's store may hand back any state id: its length in front keeps the split between
    # state id and context unambiguous, and surrogatepass keeps a bad one from raising here.
    payload = f"{len(state_id)}:{state_id}{text}"
    digest = hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    # Never 0: 0 is the "no record" version.
    return (int.from_bytes(digest, "big") >> 1) or 1


class StateManager(ABC):
    """Stores, for each chat, the current state id, its JSON context and a version.

    Subclass it and implement the three seed methods; everything else has a default.
    """

    #: Seconds a turn waits for a chat's lock before LockTimeoutError; ``None`` waits forever.
    lock_timeout: ClassVar[float | None] = 60.0
    #: False for a store that cannot hold NUL in text (PostgreSQL): it refuses chat ids,
    #: state ids and claim keys holding ``"\x00"`` with InvalidChatIdError (or its
    #: subclasses), and the conformance kit checks that refusal instead of the round trip.
    stores_nul: ClassVar[bool] = True
    #: True when ``compare_and_set`` is one atomic conditional write that needs no lock of
    #: the caller's (it refuses a chat another turn holds): the message pipeline then marks
    #: a delivery with it instead of taking the chat's lock again.
    atomic_compare_and_set: ClassVar[bool] = False

    # -- the original three methods -------------------------------------------------------
    @abstractmethod
    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        """Return ``(state_id, context)`` for the chat, or ``None`` if nothing is stored."""

    @abstractmethod
    def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
        """Store ``state_id`` and ``context`` for the chat unconditionally."""

    @abstractmethod
    def delete_state(self, chat_id: str) -> None:
        """Forget the chat (no error if nothing is stored)."""

    # -- versioned records: defaults built on the seed methods -----------------------------
    def load(self, chat_id: str) -> StateRecord | None:
        """Return the chat's record, or ``None``. Its version is 0 only for "no record"."""
        got = self.get_state(validate_chat_id(chat_id))
        if got is None:
            return None
        state_id, context = got
        return StateRecord(state_id, context, fingerprint(chat_id, state_id, context))

    def save(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        """Take the chat's lock and :meth:`compare_and_set`; returns the new version."""
        encoded = validate_write(chat_id, state_id, context, encoded)
        with self.lock(chat_id):
            return self.compare_and_set(
                chat_id, state_id, context, expected_version=expected_version, encoded=encoded
            )

    def compare_and_set(
        self,
        chat_id: str,
        state_id: str,
        context: dict[str, Any],
        *,
        expected_version: int,
        encoded: str | None = None,
    ) -> int:
        """Store the record if its current version is ``expected_version`` (0: no record).

        The caller holds the chat's lock (a turn does). Returns the new version; raises
        VersionConflictError otherwise. ``encoded`` is the context's JSON text when the
        caller already has it. Backends whose lock can expire make this one atomic operation.
        """
        validate_write(chat_id, state_id, context, encoded)
        current = self.load(chat_id)
        self._check_version(chat_id, 0 if current is None else current.version, expected_version)
        self.set_state(chat_id, state_id, context)
        return fingerprint(chat_id, state_id, context)

    def lock(self, chat_id: str) -> AbstractContextManager[None]:
        """Hold the chat's lock (default: process-local, per chat).

        Nothing here takes the lock while holding it, so an override need not be reentrant.
        """
        return self._local_lock(validate_chat_id(chat_id))

    def begin_turn(self, chat_id: str) -> TurnLease:
        """Lock the chat and load its record; the orchestrator commits and closes the turn."""
        return TurnLease(self, validate_chat_id(chat_id))

    # -- once-only markers (inbound message ids) ---------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """Record ``key`` as seen for ``ttl`` seconds; True only for the first caller.

        Channels use it so a redelivered message runs at most once. Atomic across everything
        that shares the store in the built-in backends; this default is **process-local**.
        """
        return self._claim_table().claim(validate_claim_key(key), validate_claim_ttl(ttl))

    def release_claim(self, key: str) -> None:
        """Forget ``key`` so it can be claimed again (no error if it is not claimed).

        A channel calls it when a turn failed for a reason that is not the step's fault (the
        chat stayed locked, the backend was down), so the redelivered message runs. This
        default is **process-local**, like :meth:`claim`.
        """
        self._claim_table().release(validate_claim_key(key))

    def _claim_table(self) -> ClaimTable:
        # Created lazily: a user's subclass need not call super().__init__().
        table: ClaimTable | None = self.__dict__.get("_claims")
        if table is None:
            table = self.__dict__.setdefault("_claims", ClaimTable())
        return table

    # -- the async path: defaults for a sync manager -------------------------------------
    # Built-in managers override these with the same operations on an async driver; a
    # user's sync manager runs its blocking calls in worker threads.
    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        """Lock the chat and load its record without blocking the event loop."""
        from chat_orchestrator.state_managers import async_base

        chat_id = validate_chat_id(chat_id)
        cls = type(self)
        if cls.lock is StateManager.lock and cls.begin_turn is StateManager.begin_turn:
            # The process-local lock is awaited, never waited for in a thread: tasks queued
            # on a busy chat must not take the threads its holder needs to commit.
            return await async_base.local_turn(
                async_base.SyncManagerOnLoop(self),
                self._keyed_locks(),
                chat_id,
                self.lock_timeout,
            )
        return async_base.ThreadedTurn(await asyncio.to_thread(self.begin_turn, chat_id))

    async def load_async(self, chat_id: str) -> StateRecord | None:
        return await asyncio.to_thread(self.load, chat_id)

    async def delete_state_async(self, chat_id: str) -> None:
        # Validated here: a user's seed delete_state may take any key (the sync engine
        # validates before calling it; this is a public method of its own).
        await asyncio.to_thread(self.delete_state, validate_chat_id(chat_id))

    async def claim_async(self, key: str, ttl: float) -> bool:
        return await asyncio.to_thread(self.claim, key, ttl)

    async def release_claim_async(self, key: str) -> None:
        await asyncio.to_thread(self.release_claim, key)

    async def close_async(self) -> None:
        await asyncio.to_thread(self.close)

    # -- lifecycle ------------------------------------------------------------------------
    def pipeline_store(self) -> PipelineStore:
        """The message pipeline's inbox and work index in this manager's store.

        Stores that can hold them return one (the same one on every call); this default
        refuses with StoreCapabilityError naming the stores that can.
        """
        raise StoreCapabilityError(
            f"{type(self).__name__} cannot hold the message pipeline (inbox, outbox, timers); "
            "use memory:, sqlite:, redis:, redis+cluster:, mongodb: or postgresql:"
        )

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract on purpose
        """Release connections or handles; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def _check_version(chat_id: str, found: int, expected: int) -> None:
        if found != expected:
            raise VersionConflictError(
                f"chat {describe_chat_id(chat_id)} is at version {found}, "
                f"the write expected {expected}"
            )

    def _keyed_locks(self) -> KeyedLock:
        # Created lazily: a user's subclass need not call super().__init__().
        locks: KeyedLock | None = self.__dict__.get("_chat_locks")
        if locks is None:
            locks = self.__dict__.setdefault("_chat_locks", KeyedLock())
        return locks

    @contextmanager
    def _local_lock(self, chat_id: str) -> Iterator[None]:
        locks = self._keyed_locks()
        entry = locks.acquire(chat_id, self.lock_timeout)
        try:
            yield
        finally:
            locks.release(chat_id, entry)

    # -- operator tools: listing and conditional reset ------------------------------------
    def iter_chats(
        self, *, state: str | None = None, idle_for: float | None = None
    ) -> Iterator[ChatInfo]:
        """Every stored chat (streaming: constant memory), optionally only those in ``state``
        or idle (no write) for at least ``idle_for`` seconds. Order is the store's own.

        Raises StoreCapabilityError for a store that cannot list (a seed-only manager).
        """
        state, cutoff = chat_filter(state, idle_for)
        return self._scan_chats(state, cutoff)

    def _scan_chats(self, state: str | None, cutoff: float | None) -> Iterator[ChatInfo]:
        """What a store that can list implements; filters already checked (see keep_chat)."""
        raise StoreCapabilityError(
            f"this store ({type(self).__name__}) cannot list chats: it implements only "
            "get_state, set_state and delete_state; override _scan_chats to list them"
        )

    def chat_info(self, chat_id: str) -> ChatInfo | None:
        """One chat's line of :meth:`iter_chats`, or ``None``; this default knows no time."""
        record = self.load(chat_id)
        if record is None:
            return None
        return ChatInfo(chat_id, record.state_id, record.version, None)

    def delete_if(self, chat_id: str, *, expected_version: int) -> None:
        """Delete the chat's record if it is still at ``expected_version``, under its lock, so
        an operator's reset waits for a live turn and never lands inside one.

        Raises VersionConflictError (and deletes nothing) if the record changed. This default
        suits managers whose ``delete_state`` does not take the chat's lock itself.
        """
        with self.lock(chat_id):
            current = self.load(chat_id)
            found = 0 if current is None else current.version
            self._check_version(chat_id, found, expected_version)
            if current is not None:
                self.delete_state(chat_id)


class RecordStateManager(StateManager):
    """Base of backends whose primitive is the versioned record: ``get_state`` comes from
    :meth:`load`, which they must implement (with ``compare_and_set`` and ``set_state``)."""

    @abstractmethod
    def load(self, chat_id: str) -> StateRecord | None: ...

    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        record = self.load(chat_id)
        return None if record is None else (record.state_id, record.context)
