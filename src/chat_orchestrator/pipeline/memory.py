"""The pipeline in this process's memory, beside :class:`InMemoryStateManager`.

For tests, the console and single-process bots: nothing survives a restart, exactly like the
records it sits beside. One lock guards everything (every operation is a few dict updates).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from chat_orchestrator._io import Op
from chat_orchestrator.pipeline.store import BlockingPipelineStore, DeadLetter

__all__ = ["MemoryPipelineStore"]


@dataclass(slots=True)
class _Work:
    ready_at: int | None = None
    stamp: int = 0
    owner: str | None = None
    until: int = 0


@dataclass(slots=True)
class _Inbox:
    pending: deque[tuple[str, str]] = field(default_factory=deque)


class MemoryPipelineStore(BlockingPipelineStore):
    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # event key -> expiry (ms)
        self._expiries: list[tuple[int, str]] = []  # heap of (expiry, key)
        self._inbox: dict[str, _Inbox] = {}
        self._work: dict[str, _Work] = {}
        self._ready: list[tuple[int, str]] = []  # heap of (ready_at, chat); stale entries skipped
        self._dead: dict[str, DeadLetter] = {}
        self._stamps = 0
        #: Set on every schedule: in-process workers wait on it instead of polling.
        self.wakeup = threading.Condition(self._lock)

    async def _execute_async(self, command: Any) -> Any:
        return command()  # no I/O: a thread would only cost time

    def _purge(self, now: int) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expiry, key = heapq.heappop(self._expiries)
            if self._seen.get(key) == expiry:
                del self._seen[key]

    def _set_ready(self, chat_id: str, work: _Work, at: int | None) -> None:
        work.ready_at = at
        if at is not None:
            heapq.heappush(self._ready, (at, chat_id))

    def _schedule(self, chat_id: str, at: int) -> None:
        work = self._work.setdefault(chat_id, _Work())
        self._set_ready(chat_id, work, at if work.ready_at is None else min(work.ready_at, at))
        self._stamps += 1
        work.stamp = self._stamps
        self.wakeup.notify_all()

    # -- operations -------------------------------------------------------------------------
    def _add_op(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> Op[list[bool]]:
        return (yield partial(self._add, chat_id, events, retention_ms, now))  # type: ignore[no-any-return]

    def _add(
        self, chat_id: str, events: Sequence[tuple[str, str]], retention_ms: int, now: int
    ) -> list[bool]:
        with self._lock:
            self._purge(now)
            added = []
            inbox = self._inbox.setdefault(chat_id, _Inbox())
            for key, text in events:
                if key in self._seen:
                    added.append(False)
                    continue
                expiry = now + retention_ms
                self._seen[key] = expiry
                heapq.heappush(self._expiries, (expiry, key))
                inbox.pending.append((key, text))
                added.append(True)
            self._schedule(chat_id, now)
            return added

    def _pending_op(self, chat_id: str, limit: int) -> Op[list[str]]:
        return (yield partial(self._pending, chat_id, limit))  # type: ignore[no-any-return]

    def _pending(self, chat_id: str, limit: int) -> list[str]:
        with self._lock:
            inbox = self._inbox.get(chat_id)
            if inbox is None:
                return []
            return [text for _, text in list(inbox.pending)[:limit]]

    def _finish_op(self, chat_id: str, keys: Sequence[str]) -> Op[None]:
        yield partial(self._finish, chat_id, set(keys))

    def _finish(self, chat_id: str, keys: set[str]) -> None:
        with self._lock:
            inbox = self._inbox.get(chat_id)
            if inbox is None:
                return
            inbox.pending = deque(item for item in inbox.pending if item[0] not in keys)
            if not inbox.pending:
                del self._inbox[chat_id]

    def _schedule_op(self, chat_id: str, at: int) -> Op[None]:
        yield partial(self._locked_schedule, chat_id, at)

    def _locked_schedule(self, chat_id: str, at: int) -> None:
        with self._lock:
            self._schedule(chat_id, at)

    def _take_op(self, now: int, lease_ms: int, owner: str) -> Op[tuple[str, int] | None]:
        return (yield partial(self._take, now, lease_ms, owner))  # type: ignore[no-any-return]

    def _take(self, now: int, lease_ms: int, owner: str) -> tuple[str, int] | None:
        with self._lock:
            busy: list[tuple[int, str]] = []
            try:
                while self._ready and self._ready[0][0] <= now:
                    at, chat_id = heapq.heappop(self._ready)
                    work = self._work.get(chat_id)
                    if work is None or work.ready_at != at:
                        continue  # stale: the entry moved since
                    if work.owner is not None and work.until > now:
                        busy.append((at, chat_id))  # news for a chat being worked on
                        continue
                    work.owner, work.until = owner, now + lease_ms
                    self._set_ready(chat_id, work, work.until)
                    return chat_id, work.stamp
                return None
            finally:
                for item in busy:
                    heapq.heappush(self._ready, item)

    def _renew_op(self, chat_id: str, owner: str, until: int) -> Op[bool]:
        return (yield partial(self._renew, chat_id, owner, until))  # type: ignore[no-any-return]

    def _renew(self, chat_id: str, owner: str, until: int) -> bool:
        with self._lock:
            work = self._work.get(chat_id)
            if work is None or work.owner != owner:
                return False
            if work.ready_at == work.until:
                self._set_ready(chat_id, work, until)
            work.until = until
            return True

    def _release_op(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> Op[None]:
        yield partial(self._release, chat_id, owner, stamp, next_at)

    def _release(self, chat_id: str, owner: str, stamp: int, next_at: int | None) -> None:
        with self._lock:
            work = self._work.get(chat_id)
            if work is None:
                return
            # A late release (our lease ended, another worker took the chat) must not clear
            # the new holder's ready_at: that is what brings the chat back if it dies.
            mine = work.owner is None or work.owner == owner
            if work.owner == owner:
                work.owner, work.until = None, 0
            if work.stamp == stamp and mine:
                self._set_ready(chat_id, work, next_at)
            elif next_at is not None:
                current = work.ready_at
                self._set_ready(
                    chat_id, work, next_at if current is None else min(current, next_at)
                )
            if work.ready_at is None and work.owner is None:
                del self._work[chat_id]
            else:
                self.wakeup.notify_all()

    def _next_ready_op(self) -> Op[int | None]:
        return (yield partial(self._next_ready))  # type: ignore[no-any-return]

    def _next_ready(self) -> int | None:
        with self._lock:
            while self._ready:
                at, chat_id = self._ready[0]
                work = self._work.get(chat_id)
                if work is not None and work.ready_at == at:
                    return at
                heapq.heappop(self._ready)
            return None

    def _park_op(self, letter: DeadLetter) -> Op[None]:
        yield partial(self._park, letter)

    def _park(self, letter: DeadLetter) -> None:
        with self._lock:
            self._dead[letter.id] = letter

    def _dead_op(self, limit: int, chat_id: str | None) -> Op[list[str]]:
        return (yield partial(self._dead_list, limit, chat_id))  # type: ignore[no-any-return]

    def _dead_list(self, limit: int, chat_id: str | None) -> list[str]:
        with self._lock:
            letters = sorted(self._dead.values(), key=lambda letter: (letter.at, letter.id))
            chosen = [d for d in letters if chat_id is None or d.chat_id == chat_id]
            return [letter.to_json() for letter in chosen[:limit]]

    def _drop_dead_op(self, letter_id: str) -> Op[bool]:
        return (yield partial(self._drop_dead, letter_id))  # type: ignore[no-any-return]

    def _drop_dead(self, letter_id: str) -> bool:
        with self._lock:
            return self._dead.pop(letter_id, None) is not None

    def wait(self, timeout: float) -> None:
        """Block until something is scheduled or ``timeout`` passes (idle in-process workers)."""
        with self._lock:
            self.wakeup.wait(timeout)
