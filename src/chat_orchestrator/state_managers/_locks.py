"""Process-local per-key locks that do not grow without bound."""

from __future__ import annotations

import threading

from chat_orchestrator.errors import LockTimeoutError, describe_chat_id

__all__ = ["KeyedLock"]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class KeyedLock:
    """One mutex per key, created on first use and dropped when nobody holds or waits for it.

    The guard is held only to find the entry, so different keys never wait for each other.
    """

    __slots__ = ("_entries", "_guard")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def acquire(self, key: str, timeout: float | None) -> _Entry:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        if entry.lock.acquire(timeout=-1 if timeout is None else timeout):
            return entry
        self._drop(key, entry)
        raise LockTimeoutError(
            f"chat {describe_chat_id(key)} stayed locked for more than {timeout} s"
        )

    def release(self, key: str, entry: _Entry) -> None:
        entry.lock.release()
        self._drop(key, entry)

    def _drop(self, key: str, entry: _Entry) -> None:
        with self._guard:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
