"""Every store refuses a claim ttl it could not honour; a cancelled lease request frees the chat.

Found by the attack on the hardened library: Redis, MongoDB and file accepted NaN and inf (a
marker that never expires: the message's redelivery is a "duplicate" forever) or raised raw
driver errors; an async turn cancelled while its lease command was in flight left the lease
to a token nobody held, so the chat stayed locked for a whole lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from chat_orchestrator.errors import InvalidClaimTTLError
from chat_orchestrator.state_managers._leased import LeasedStateManager
from chat_orchestrator.state_managers.base import StateManager
from tests.state_managers.test_leases import backend, build  # noqa: F401 - the fixture

BAD_TTLS: list[Any] = [float("nan"), float("inf"), -1, 0, 1e300, "5", None, True]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_every_store_refuses_a_bad_claim_ttl_and_claims_nothing(
    manager: StateManager, ttl: Any
) -> None:
    with pytest.raises(InvalidClaimTTLError):
        manager.claim("wa:k", ttl)
    with pytest.raises(InvalidClaimTTLError):
        asyncio.run(manager.claim_async("wa:k", ttl))
    assert manager.claim("wa:k", 60) is True  # the bad calls claimed nothing
    assert manager.claim("wa:k", 60) is False


def test_a_turn_cancelled_with_its_lease_command_in_flight_frees_the_chat(
    backend: tuple[type[LeasedStateManager], str],  # noqa: F811 - the imported fixture
) -> None:
    cls, address = backend
    manager = build(cls, address, lock_lease=5.0, lock_timeout=10.0)
    real = manager._execute_async
    calls = {"n": 0}

    async def lost_reply(command: Any) -> Any:
        # The store runs the lease command, then the task is cancelled before the reply.
        result = await real(command)
        calls["n"] += 1
        if calls["n"] == 1:
            raise asyncio.CancelledError
        return result

    async def main() -> float:
        manager._execute_async = lost_reply  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await manager.begin_turn_async("c")
        manager._execute_async = real  # type: ignore[method-assign]
        started = time.monotonic()
        turn = await manager.begin_turn_async("c")
        await turn.close()
        return time.monotonic() - started

    # Before: about 5 s (the whole lease); now the lease was given back at once.
    assert asyncio.run(main()) < 2.0


def test_a_save_cancelled_during_its_write_raises_cancelled_and_frees_the_chat(
    backend: tuple[type[LeasedStateManager], str],  # noqa: F811 - the imported fixture
) -> None:
    cls, address = backend
    manager = build(cls, address, lock_lease=5.0, lock_timeout=10.0)
    real = manager._execute_async
    calls = {"n": 0}

    async def cancel_second(command: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the conditional write, after the lease was taken
            raise asyncio.CancelledError
        return await real(command)

    async def main() -> float:
        manager._execute_async = cancel_second  # type: ignore[method-assign]
        # Before: RuntimeError("generator ignored GeneratorExit") instead of the cancellation.
        with pytest.raises(asyncio.CancelledError):
            await manager.save_async("c", "s", {}, expected_version=0)
        manager._execute_async = real  # type: ignore[method-assign]
        started = time.monotonic()
        turn = await manager.begin_turn_async("c")
        assert turn.record is None  # the cancelled write stored nothing
        await turn.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0
