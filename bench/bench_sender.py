"""What the WhatsApp senders cost per message on top of a raw httpx call, sync and async.

Run by hand: ``uv run python bench/bench_sender.py [--quick]``.
Each pair sends the same text message one at a time: the raw side posts a prebuilt body with
``httpx`` and reads the id from the JSON answer; the sender side builds and checks the payload,
interprets the answer and runs the retry loop. Two targets: the local Graph API stand-in over
real HTTP on 127.0.0.1, served from its own process so that client and server do not share a
GIL (what a send costs end to end), and ``httpx.MockTransport`` answering
in-process (the sender's own CPU cost, without the socket and server noise).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import anyio  # noqa: E402
import httpx  # noqa: E402
from tests.whatsapp.graph_standin import GraphStandIn  # noqa: E402

from _timing import compare, report  # noqa: E402
from chat_orchestrator.senders.whatsapp import WhatsAppSender  # noqa: E402
from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender  # noqa: E402
from chat_orchestrator.senders.whatsapp_core import GraphAPI, RetryPolicy  # noqa: E402

CHAT, TEXT = "15550002222", "Your order #1234 has shipped."
BODY = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "+" + CHAT,
    "type": "text",
    "text": {"preview_url": False, "body": TEXT},
}
ANSWER = json.dumps({"messaging_product": "whatsapp", "messages": [{"id": "wamid.X"}]}).encode()


def serve_standin(conn: Connection) -> None:
    """Child process: run the stand-in, report where it listens, serve until told to stop."""
    graph = GraphStandIn().start()
    conn.send((graph.base_url, graph.token, graph.phone_number_id, graph.version))
    conn.recv()
    graph.stop()


def mock_transport() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, content=ANSWER))


async def compare_async(
    contenders: dict[str, Callable[[], Awaitable[object]]], ops: int, rounds: int
) -> dict[str, float]:
    """``_timing.compare`` on one event loop: interleaved rounds, median seconds per op."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(rounds + 1):
        for name, fn in contenders.items():
            started = time.perf_counter()
            for _ in range(ops if round_ else max(1, ops // 10)):  # round 0 warms up
                await fn()
            if round_:
                samples[name].append((time.perf_counter() - started) / ops)
    return {name: statistics.median(values) for name, values in samples.items()}


def sync_pair(url: str, base_url: str, token: str, number: str, **client: Any) -> dict[str, Any]:
    raw = httpx.Client(**client)
    sender = WhatsAppSender(token, number, base_url=base_url, client=httpx.Client(**client))
    auth = {"Authorization": f"Bearer {token}"}
    return {
        "raw httpx.Client.post": lambda: raw.post(url, json=BODY, headers=auth).json()["messages"][
            0
        ]["id"],
        "WhatsAppSender.send_message": lambda: sender.send_message(CHAT, TEXT),
    }


async def async_run(
    url: str, base_url: str, token: str, number: str, ops: int, rounds: int, **client: Any
) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(**client) as raw,
        AsyncWhatsAppSender(
            token, number, base_url=base_url, client=httpx.AsyncClient(**client)
        ) as sender,
    ):

        async def raw_post() -> str:
            response = await raw.post(url, json=BODY, headers=auth)
            message_id: str = response.json()["messages"][0]["id"]
            return message_id

        return await compare_async(
            {
                "raw httpx.AsyncClient.post": raw_post,
                "AsyncWhatsAppSender.send_message": lambda: sender.send_message(CHAT, TEXT),
            },
            ops,
            rounds,
        )


def core_pair() -> dict[str, Callable[[], object]]:
    """The decisions alone, no I/O: the raw side only encodes and decodes the same JSON."""
    api = GraphAPI(
        "tok",
        "1",
        api_version="v25.0",
        base_url="http://graph.test",
        timeout=5.0,
        retry_policy=RetryPolicy(),
    )
    return {
        "raw json.dumps + json.loads": lambda: (json.dumps(BODY), json.loads(ANSWER)),
        "GraphAPI.message + GraphCall.answered": lambda: api.message(CHAT, TEXT, None).answered(
            200, ANSWER
        ),
    }


def overhead(medians: dict[str, float]) -> str:
    raw, ours = medians.values()
    return f"  sender overhead: {(ours - raw) * 1e6:+.1f} us per message ({ours / raw:.2f}x)"


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 3 if quick else 7
    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve_standin, args=(child,))
    server.start()
    base_url, token, number, version = parent.recv()
    real = (f"{base_url}/{version}/{number}/messages", base_url, token, number)
    mock = ("http://graph.test/v25.0/1/messages", "http://graph.test", "tok", "1")
    try:
        ops = 100 if quick else 400
        medians = compare(sync_pair(*real), ops, rounds)
        title = f"sync, Graph stand-in over HTTP ({ops} sends x {rounds} rounds)"
        report(title, medians, "raw httpx.Client.post")
        print(overhead(medians))
        medians = anyio.run(lambda: async_run(*real, ops, rounds))
        report("async, Graph stand-in over HTTP", medians, "raw httpx.AsyncClient.post")
        print(overhead(medians))
    finally:
        parent.send("stop")
        server.join()
    ops = 1000 if quick else 5000
    medians = compare(sync_pair(*mock, transport=mock_transport()), ops, rounds)
    report(
        f"sync, in-process MockTransport ({ops} sends x {rounds} rounds)",
        medians,
        "raw httpx.Client.post",
    )
    print(overhead(medians))
    transport = mock_transport()
    medians = anyio.run(lambda: async_run(*mock, ops, rounds, transport=transport))
    report("async, in-process MockTransport", medians, "raw httpx.AsyncClient.post")
    print(overhead(medians))
    ops = 10000 if quick else 50000
    medians = compare(core_pair(), ops, rounds)
    report(
        f"the sans-I/O core alone ({ops} messages x {rounds} rounds)",
        medians,
        "raw json.dumps + json.loads",
    )
    print(overhead(medians))


if __name__ == "__main__":
    main()
