"""Sans-I/O operations: every storage decision written once, driven by a sync or an async loop.

A backend writes each operation as a generator that *yields* commands (a Redis command, a
MongoDB call, a function to run on a file) and receives their results, in the manner of
``h11``: the generator holds the logic (keys, scripts, version checks, error classification,
waits) and never touches a socket. Two small drivers run it:

* :func:`run_sync` executes each command with a blocking ``execute`` and sleeps with
  ``time.sleep``;
* :func:`run_async` awaits an ``execute`` coroutine and sleeps with ``asyncio.sleep``.

A failing command is thrown back into the generator (``op.throw``), so retries and error
translation are decided inside the operation too. A sync and an async caller of the same
operation therefore send the very same commands to the same store and interoperate.

``Sleep`` is the only command the drivers understand themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

__all__ = ["Op", "Sleep", "run_async", "run_sync"]

T = TypeVar("T")

#: An operation: yields commands, is sent their results, returns ``T``.
Op: TypeAlias = Generator[Any, Any, T]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` before the operation goes on (lock back-off)."""

    seconds: float


def run_sync(op: Op[T], execute: Callable[[Any], Any]) -> T:
    """Drive ``op`` to completion with blocking I/O."""
    try:
        command = next(op)
        while True:
            try:
                if type(command) is Sleep:
                    time.sleep(command.seconds)
                    result = None
                else:
                    result = execute(command)
            except Exception as exc:
                command = op.throw(exc)
            else:
                command = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        op.close()


async def run_async(op: Op[T], execute: Callable[[Any], Awaitable[Any]]) -> T:
    """Drive ``op`` to completion on the running event loop.

    Cancellation (``CancelledError``) is not an ``Exception``: it leaves the operation at
    once, and ``op.close()`` runs the operation's own ``finally`` clauses.
    """
    task = asyncio.current_task()
    try:
        command = next(op)
        while True:
            try:
                if type(command) is Sleep:
                    await asyncio.sleep(command.seconds)
                    result = None
                else:
                    result = await execute(command)
            except Exception as exc:
                command = op.throw(exc)
            else:
                if task is not None and task.cancelling():
                    # A driver swallowed our cancellation (seen with pymongo's async pool
                    # under load): stop here, or a cancelled wait for a chat runs on until
                    # its lock timeout.
                    raise asyncio.CancelledError
                command = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        op.close()
