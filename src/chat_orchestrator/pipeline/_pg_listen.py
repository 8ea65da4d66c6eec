"""The PostgreSQL pipeline store's wake-ups: one LISTEN connection per store, in a thread.

Idle workers (threads and asyncio tasks alike) wait on :class:`Listener` instead of
polling. One daemon thread owns a dedicated connection (never a pooled one held forever),
``LISTEN``s on the store's channel and, on each notification, wakes every waiting thread
and every event loop with a waiting task.

A wake-up is sticky: a notification that arrives while the workers are busy (between a take
that found nothing and the wait that follows) is kept, and the next wait returns at once.
So no notification is lost between "nothing ready" and "wait". When the connection dies
(a restarted server) it is reopened with back-off; every waiter is woken then, because
notifications sent while it was down are gone and the workers must look for themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import psycopg

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

#: How long one read of notifications blocks (s): how soon the thread sees close().
_READ = 1.0
#: Back-off between reconnection attempts (s): first, and at most.
_BACKOFF = (0.1, 2.0)


class Listener:
    """Wakes waiting workers on NOTIFY ``channel``; ``connect()`` opens the connection."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._cond = threading.Condition()
        self._news = False
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Notifications seen and connections opened (for tests and operators).
        self.notified = 0
        self.connections = 0

    # -- the waiting side -------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        self._start()
        with self._cond:
            if not self._news:
                self._cond.wait(timeout)
            self._news = False

    async def wait_async(self, timeout: float) -> None:
        self._start()
        loop = asyncio.get_running_loop()
        with self._cond:
            event = self._loops.get(loop)
            if event is None:
                event = self._loops[loop] = asyncio.Event()
                event.set()  # a new loop may have missed news: look once
        if not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    def _wake(self) -> None:
        with self._cond:
            self._news = True
            self._cond.notify_all()
            loops = list(self._loops.items())
        for loop, event in loops:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: forget it
                with self._cond:
                    self._loops.pop(loop, None)

    # -- the listening thread -----------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"pg-listen-{self._channel[-8:]}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        delay = _BACKOFF[0]
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # the server is down: the workers poll meanwhile
                logger.warning(
                    "pipeline listener cannot connect (%s); retrying in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                self._wake()
                self._stop.wait(delay)
                delay = min(_BACKOFF[1], delay * 2)
                continue
            delay = _BACKOFF[0]
            try:
                with conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    self.connections += 1
                    self._wake()  # news sent before LISTEN took effect would be missed
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=_READ, stop_after=1):
                            self.notified += 1
                            self._wake()
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    logger.warning(
                        "pipeline listener lost its connection (%s); reopening",
                        type(exc).__name__,
                    )
                    self._wake()
                    self._stop.wait(delay)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_READ + 1)
        self._wake()
