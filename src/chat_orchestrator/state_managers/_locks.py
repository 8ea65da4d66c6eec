"""Process-local helpers: per-key locks and a claim table, neither growing without bound."""

from __future__ import annotations

import heapq
import math
import threading
import time

from chat_orchestrator._io import Op, Sleep
from chat_orchestrator.errors import LockTimeoutError, describe_chat_id

__all__ = ["ClaimTable", "KeyedLock", "check_lock_timeout"]


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

    def acquire_op(self, key: str, timeout: float | None) -> Op[_Entry]:
        """The same lock taken without blocking a thread: poll, backing off with ``Sleep``.

        The async path uses it, so tasks waiting for a busy chat never occupy the worker
        threads that the chat's holder needs to finish its turn.
        """
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        try:
            while not entry.lock.acquire(blocking=False):
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"chat {describe_chat_id(key)} stayed locked for more than {timeout} s"
                    )
                yield Sleep(pause)
                pause = min(pause * 2, 0.02)
        except BaseException:
            self._drop(key, entry)
            raise
        return entry

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


class ClaimTable:
    """Keys seen in the last ``ttl`` seconds, in this process only.

    Deadlines sit in a heap as well as a dict: claims may carry different ttls, so the
    oldest claim is not the first to expire, and only the heap finds every expired one (an
    ordered dict swept from its oldest end keeps everything behind one long-lived claim).
    """

    __slots__ = ("_deadlines", "_guard", "_heap")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def claim(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._guard:
            heap, deadlines = self._heap, self._deadlines
            while heap and heap[0][0] <= now:
                deadline, expired = heapq.heappop(heap)
                if deadlines.get(expired) == deadline:  # else re-claimed or released since
                    del deadlines[expired]
            current = deadlines.get(key)
            if current is not None and current > now:
                return False
            deadlines[key] = now + ttl
            heapq.heappush(heap, (now + ttl, key))
            return True

    def release(self, key: str) -> None:
        with self._guard:
            self._deadlines.pop(key, None)  # its heap entry goes when its deadline passes

    def __len__(self) -> int:
        return len(self._deadlines)


def check_lock_timeout(lock_timeout: object) -> float | None:
    """A lock wait in seconds (None: forever), checked when a manager is built.

    Checked then, not at the first turn: threading.Lock.acquire raises a raw ValueError for
    NaN or a negative number and OverflowError past TIMEOUT_MAX (an infinity: no limit).
    """
    if lock_timeout is None:
        return None
    if type(lock_timeout) is not float and type(lock_timeout) is not int:
        raise TypeError(f"lock_timeout must be None or seconds, not {type(lock_timeout).__name__}")
    if math.isnan(lock_timeout) or lock_timeout < 0:
        raise ValueError(f"lock_timeout must be None or seconds >= 0, not {lock_timeout!r}")
    return None if lock_timeout > threading.TIMEOUT_MAX else lock_timeout
