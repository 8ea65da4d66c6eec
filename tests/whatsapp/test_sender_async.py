"""What only the async sender can show: concurrency on one loop, cancellation, a free loop.

Run with anyio's pytest plugin (it comes with httpx through anyio; no extra dependency), on the
asyncio backend.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender
from tests.whatsapp.graph_standin import GraphStandIn

pytestmark = pytest.mark.anyio


def aimed_at(graph: GraphStandIn, **kw: object) -> AsyncWhatsAppSender:
    return AsyncWhatsAppSender(
        graph.token,
        graph.phone_number_id,
        base_url=graph.base_url,
        **kw,  # type: ignore[arg-type]
    )


async def test_concurrent_sends_share_one_client(graph: GraphStandIn) -> None:
    ids: list[str] = []

    async def send(n: int) -> None:
        ids.append(await sender.send_message("15550002222", f"message {n}"))

    async with aimed_at(graph) as sender, anyio.create_task_group() as group:
        for n in range(50):
            group.start_soon(send, n)
    assert len(set(ids)) == 50
    assert sorted(r.body["text"]["body"] for r in graph.received) == sorted(
        f"message {n}" for n in range(50)
    )


async def test_a_small_injected_pool_queues_instead_of_failing(graph: GraphStandIn) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=2)) as client:
        sender = aimed_at(graph, client=client)
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(sender.send_message, "15550002222", "hi")
        await sender.aclose()
        assert not client.is_closed  # the caller's client stays the caller's
    assert len(graph.received) == 20


async def test_a_cancelled_send_stops_and_the_sender_still_works(graph: GraphStandIn) -> None:
    graph.respond(200, "send_success_response.json", delay=1.0)
    async with aimed_at(graph) as sender:
        with anyio.move_on_after(0.2) as scope:
            await sender.send_message("15550002222", "slow")
        assert scope.cancelled_caught
        assert (await sender.send_message("15550002222", "next")).startswith("wamid.STANDIN_")
    assert len(graph.received) == 2


async def test_a_send_cancelled_in_its_backoff_is_not_resent(graph: GraphStandIn) -> None:
    graph.respond(429, "error_130429_throughput.json")
    async with aimed_at(graph, backoff=30.0) as sender:
        with anyio.move_on_after(0.5) as scope:
            await sender.send_message("15550002222", "hi")
        assert scope.cancelled_caught
    assert len(graph.received) == 1


async def test_the_backoff_wait_does_not_block_the_loop(graph: GraphStandIn) -> None:
    other = GraphStandIn().start()
    finished: list[str] = []
    graph.respond(429, "error_130429_throughput.json")

    async def retried() -> None:
        await slow.send_message("15550002222", "retried")
        finished.append("retried")

    async def quick() -> None:
        for _ in range(500):  # wait, bounded, until the first attempt has been answered
            if graph.received:
                break
            await anyio.sleep(0.01)
        await fast.send_message("15550002222", "quick")
        finished.append("quick")

    try:
        async with (
            aimed_at(graph, backoff=1.5) as slow,
            aimed_at(other) as fast,
            anyio.create_task_group() as group,
        ):
            group.start_soon(retried)
            group.start_soon(quick)
    finally:
        other.stop()
    assert finished == ["quick", "retried"]  # the default sleep is the loop's, not time.sleep
    assert len(graph.received) == 2
