"""Acknowledgement latency and turns per second under concurrent signed webhook POSTs.

Run by hand: ``uv run python bench/bench_webhook.py [--quick] [--backend memory|file|redis]
[--server wsgi|asgi|asgi-threads|all]`` (default all, one after the other in the same run).
wsgi: the greeting flow in a threaded wsgiref server, replying through WhatsAppSender. asgi:
the async greeting flow of examples/whatsapp_fastapi.py (``async def`` steps) served as
``bot.asgi`` by uvicorn, replying through AsyncWhatsAppSender. asgi-threads: ``bot.asgi`` on
uvicorn with the plain ``def`` greeting flow and WhatsAppSender (steps in worker threads), which
separates the ASGI glue's cost from the async sender's. All on 127.0.0.1, all send every reply
over real HTTP to the local Graph API stand-in.
Load: CLIENTS threads, each posting signed one-message payloads with fresh message ids over
keep-alive connections. Meta expects a median acknowledgement of 250 ms or less.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import requests  # noqa: E402
from examples.greeting_bot import greeting_orchestrator  # noqa: E402
from examples.whatsapp_fastapi import async_greeting_orchestrator  # noqa: E402
from tests.servers import RedisServer  # noqa: E402
from tests.whatsapp.asgi_server import UvicornThread  # noqa: E402
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, sign  # noqa: E402
from tests.whatsapp.graph_standin import GraphStandIn, fixture  # noqa: E402

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook  # noqa: E402
from chat_orchestrator.senders.whatsapp import WhatsAppSender  # noqa: E402
from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender  # noqa: E402
from chat_orchestrator.state_managers.base import StateManager  # noqa: E402
from chat_orchestrator.state_managers.file import FileStateManager  # noqa: E402
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager  # noqa: E402

CLIENTS = 8


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def payload(client: int, index: int) -> bytes:
    body = fixture("inbound_text.json")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["id"] = f"wamid.BENCH_{client}_{index}"
    message["from"] = f"1555{client:04d}{index % 50:03d}"  # 50 chats per client
    return json.dumps(body, separators=(",", ":")).encode()


def serve(kind: str, manager: StateManager, graph: GraphStandIn) -> tuple[str, WhatsAppBot, Any]:
    """Start the bot under ``kind``'s server; (url, bot, stop)."""
    webhook = WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET)
    sender = WhatsAppSender(graph.token, graph.phone_number_id, base_url=graph.base_url)
    if kind == "asgi-threads":
        bot = WhatsAppBot(greeting_orchestrator(manager, sender), webhook)
        uvicorn_thread = UvicornThread(bot.asgi).start()
        return f"http://127.0.0.1:{uvicorn_thread.port}/webhook", bot, uvicorn_thread.stop
    if kind == "asgi":
        async_sender = AsyncWhatsAppSender(
            graph.token, graph.phone_number_id, base_url=graph.base_url
        )
        bot = WhatsAppBot(async_greeting_orchestrator(manager, async_sender), webhook)
        uvicorn_thread = UvicornThread(bot.asgi).start()
        return f"http://127.0.0.1:{uvicorn_thread.port}/webhook", bot, uvicorn_thread.stop
    bot = WhatsAppBot(greeting_orchestrator(manager, sender), webhook)
    server = make_server("127.0.0.1", 0, bot, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/webhook", bot, server.shutdown


def load(url: str, per_client: int) -> tuple[list[float], float]:
    """CLIENTS threads posting signed payloads over keep-alive; (sorted latencies, seconds)."""
    bodies = [[payload(c, i) for i in range(per_client)] for c in range(CLIENTS)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        mine = []
        for body in bodies[index]:
            started = time.perf_counter()
            response = session.post(url, data=body, headers={"X-Hub-Signature-256": sign(body)})
            mine.append(time.perf_counter() - started)
            assert response.status_code == 200
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies), time.perf_counter() - started


def main() -> None:
    quick = "--quick" in sys.argv
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "memory"
    chosen = sys.argv[sys.argv.index("--server") + 1] if "--server" in sys.argv else "all"
    kinds = ["wsgi", "asgi", "asgi-threads"] if chosen == "all" else [chosen]
    per_client = 50 if quick else 400
    graph = GraphStandIn().start()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = None
        if backend == "redis":
            redis_server = RedisServer(Path(tmp) / "redis").start()
        for kind in kinds:
            manager: StateManager
            if redis_server is not None:
                from chat_orchestrator.state_managers.redis import RedisStateManager

                manager = RedisStateManager(port=redis_server.port, key_prefix=f"{kind}-")
            elif backend == "file":
                manager = FileStateManager(state_dir=Path(tmp) / kind)
            else:
                manager = InMemoryStateManager()
            sends_before = len(graph.received)
            url, bot, stop = serve(kind, manager, graph)
            latencies, elapsed = load(url, per_client)
            stop()
            report(kind, backend, bot, latencies, elapsed, len(graph.received) - sends_before)
        graph.stop()
        if redis_server is not None:
            redis_server.stop()


def report(
    kind: str, backend: str, bot: WhatsAppBot, latencies: list[float], elapsed: float, sends: int
) -> None:
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"{kind.upper()}, backend {backend}: {len(latencies)} POSTs from {CLIENTS} clients")
    print(
        f"  acknowledgement latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (Meta: median <= 250 ms)"
    )
    print(
        f"  turns per second: {bot.turns / elapsed:.0f} ({bot.turns} turns, "
        f"{len(bot.failures)} failures, {sends} Graph API sends)"
    )


if __name__ == "__main__":
    main()
