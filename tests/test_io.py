"""The sans-I/O drivers: a cancelled operation stops even when a driver swallows the cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat_orchestrator._io import Op, Sleep, run_async, run_sync


def poll_forever() -> Op[None]:
    while True:
        yield "poll"
        yield Sleep(0.001)


async def swallowing_execute(command: Any) -> Any:
    # What a driver that catches CancelledError internally (and retries) looks like.
    try:
        await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        return "swallowed"
    return "ok"


def test_a_cancelled_operation_stops_even_if_the_driver_swallows_the_cancel() -> None:
    async def main() -> None:
        task = asyncio.create_task(run_async(poll_forever(), swallowing_execute))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):  # before: the op went on polling forever
                await task

    asyncio.run(main())


def test_a_failing_command_is_thrown_into_the_operation() -> None:
    def op() -> Op[str]:
        try:
            yield "boom"
        except KeyError:
            return "handled"
        return "not thrown"

    def execute(command: Any) -> Any:
        raise KeyError(command)

    assert run_sync(op(), execute) == "handled"
