"""Acknowledgement latency and turns per second under concurrent signed webhook POSTs.

Run by hand: ``uv run python bench/bench_webhook.py [--quick] [--backend memory|file|redis]``.
The bot (greeting flow) runs in a threaded wsgiref server on 127.0.0.1 and replies through
WhatsAppSender to the local Graph API stand-in, so every turn makes a real HTTP send.
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
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import requests  # noqa: E402
from examples.greeting_bot import greeting_orchestrator  # noqa: E402
from tests.servers import RedisServer  # noqa: E402
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, sign  # noqa: E402
from tests.whatsapp.graph_standin import GraphStandIn, fixture  # noqa: E402

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook  # noqa: E402
from chat_orchestrator.senders.whatsapp import WhatsAppSender  # noqa: E402
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


def main() -> None:
    quick = "--quick" in sys.argv
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "memory"
    per_client = 50 if quick else 400
    graph = GraphStandIn().start()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = None
        manager: StateManager
        if backend == "redis":
            from chat_orchestrator.state_managers.redis import RedisStateManager

            redis_server = RedisServer(Path(tmp) / "redis").start()
            manager = RedisStateManager(port=redis_server.port)
        elif backend == "file":
            manager = FileStateManager(state_dir=Path(tmp) / "states")
        else:
            manager = InMemoryStateManager()
        sender = WhatsAppSender(graph.token, graph.phone_number_id, base_url=graph.base_url)
        bot = WhatsAppBot(
            greeting_orchestrator(manager, sender), WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET)
        )
        server = make_server("127.0.0.1", 0, bot, _Server, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/webhook"
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
        elapsed = time.perf_counter() - started
        server.shutdown()
        graph.stop()
        if redis_server is not None:
            redis_server.stop()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"backend {backend}: {len(latencies)} POSTs from {CLIENTS} concurrent clients")
    print(
        f"  acknowledgement latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (Meta: median <= 250 ms)"
    )
    print(
        f"  turns per second: {bot.turns / elapsed:.0f} ({bot.turns} turns, "
        f"{len(bot.failures)} failures, {len(graph.received)} Graph API sends)"
    )


if __name__ == "__main__":
    main()
