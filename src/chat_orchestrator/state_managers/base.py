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

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import InvalidChatIdError, VersionConflictError, describe_chat_id
from chat_orchestrator.state_managers._locks import ClaimTable, KeyedLock

__all__ = [
    "MAX_CHAT_ID_LENGTH",
    "RecordStateManager",
    "StateManager",
    "StateRecord",
    "TurnLease",
    "validate_chat_id",
]

#: Longest chat id accepted (characters). WhatsApp ids are ~15 digits; this leaves room for
#: any channel's ids while keeping keys and file headers bounded.
MAX_CHAT_ID_LENGTH = 16_384


def validate_chat_id(chat_id: object) -> str:
    """Return ``chat_id`` if every backend can store it exactly, else raise InvalidChatIdError.

    Accepted: any non-empty ``str`` of at most :data:`MAX_CHAT_ID_LENGTH` characters that is
    valid Unicode (NUL, path separators, ``$``, emoji are all fine: backends never use the id
    as a path or a query operator). Refused: non-str ids (a dict could become a MongoDB query
    operator), the empty string, lone surrogates (not encodable as UTF-8), overlong ids.
    """
    if type(chat_id) is not str:
        raise InvalidChatIdError(f"chat id must be a str, got {type(chat_id).__name__}")
    if not chat_id:
        raise InvalidChatIdError("chat id must not be empty")
    if len(chat_id) > MAX_CHAT_ID_LENGTH:
        raise InvalidChatIdError(
            f"chat id is {len(chat_id)} characters long; the limit is {MAX_CHAT_ID_LENGTH}"
        )
    if not chat_id.isascii():
        try:
            chat_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidChatIdError(
                f"chat id {describe_chat_id(chat_id)} is not valid Unicode (lone surrogate)"
            ) from None
    return chat_id


@dataclass(frozen=True, slots=True)
class StateRecord:
    """What a backend stores for one chat. ``context`` is a fresh dict owned by the caller."""

    state_id: str
    context: dict[str, Any]
    version: int


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

    def commit(self, state_id: str, context: dict[str, Any], encoded: str) -> None:
        expected = 0 if self.record is None else self.record.version
        self._manager.compare_and_set(
            self.chat_id, state_id, context, expected_version=expected, encoded=encoded
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


def _fingerprint(state_id: str, context: dict[str, Any]) -> int:
    digest = hashlib.blake2b(
        encode_context({"s": state_id, "c": context}).encode("utf-8"), digest_size=8
    ).digest()
    # Never 0: 0 is the "no record" version.
    return (int.from_bytes(digest, "big") >> 1) or 1


class StateManager(ABC):
    """Stores, for each chat, the current state id, its JSON context and a version.

    Subclass it and implement the three seed methods; everything else has a default.
    """

    #: Seconds a turn waits for a chat's lock before LockTimeoutError; ``None`` waits forever.
    lock_timeout: ClassVar[float | None] = 60.0

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
        got = self.get_state(chat_id)
        if got is None:
            return None
        state_id, context = got
        return StateRecord(state_id, context, _fingerprint(state_id, context))

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
        current = self.load(chat_id)
        self._check_version(chat_id, 0 if current is None else current.version, expected_version)
        self.set_state(chat_id, state_id, context)
        return _fingerprint(state_id, context)

    def lock(self, chat_id: str) -> AbstractContextManager[None]:
        """Hold the chat's lock (default: process-local, per chat).

        Nothing here takes the lock while holding it, so an override need not be reentrant.
        """
        return self._local_lock(chat_id)

    def begin_turn(self, chat_id: str) -> TurnLease:
        """Lock the chat and load its record; the orchestrator commits and closes the turn."""
        return TurnLease(self, chat_id)

    # -- once-only markers (inbound message ids) ---------------------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """Record ``key`` as seen for ``ttl`` seconds; True only for the first caller.

        Channels use it so a redelivered message runs at most once. Atomic across everything
        that shares the store in the built-in backends; this default is **process-local**.
        """
        table: ClaimTable | None = self.__dict__.get("_claims")
        if table is None:
            table = self.__dict__.setdefault("_claims", ClaimTable())
        return table.claim(key, ttl)

    # LEAD (h5-webhook): minimal default so the WhatsApp bot's 503-and-redeliver path is
    # testable on this branch; the state-manager helpers add release_claim to every backend.
    # Reconcile by keeping theirs.
    def release_claim(self, key: str) -> None:
        """Forget ``key`` so the next ``claim`` of it succeeds (a turn that must run again)."""
        table: ClaimTable | None = self.__dict__.get("_claims")
        if table is not None:
            table.release(key)

    # -- lifecycle ------------------------------------------------------------------------
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

    @contextmanager
    def _local_lock(self, chat_id: str) -> Iterator[None]:
        # Created lazily: a user's subclass need not call super().__init__().
        locks: KeyedLock | None = self.__dict__.get("_chat_locks")
        if locks is None:
            locks = self.__dict__.setdefault("_chat_locks", KeyedLock())
        entry = locks.acquire(chat_id, self.lock_timeout)
        try:
            yield
        finally:
            locks.release(chat_id, entry)


class RecordStateManager(StateManager):
    """Base of backends whose primitive is the versioned record: ``get_state`` comes from
    :meth:`load`, which they must implement (with ``compare_and_set`` and ``set_state``)."""

    @abstractmethod
    def load(self, chat_id: str) -> StateRecord | None: ...

    def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
        record = self.load(chat_id)
        return None if record is None else (record.state_id, record.context)
