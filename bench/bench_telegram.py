"""Telegram webhook ack latency beside WhatsApp's, and the Telegram sender's overhead.

Run by hand: ``uv run python bench/bench_telegram.py [--quick]``. Both bots run the greeting
flow in a threaded wsgiref server on 127.0.0.1 and reply over real HTTP to their local API
stand-ins; 8 client threads post one-update bodies (fresh ids) over keep-alive connections.
Sender overhead: ``TelegramSender.send_message`` against a raw ``httpx.Client.post`` of the
same JSON to the same stand-in, in the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import httpx  # noqa: E402
import requests  # noqa: E402
from examples.greeting_bot import greeting_orchestrator  # noqa: E402
from tests.telegram.bot_api_standin import BotAPIStandIn  # noqa: E402
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, ThreadingWSGIServer, _Quiet, sign  # noqa: E402
from tests.whatsapp.graph_standin import GraphStandIn, fixture  # noqa: E402

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook  # noqa: E402
from chat_orchestrator.channels.telegram_app import TelegramBot  # noqa: E402
from chat_orchestrator.senders.telegram import TelegramSender  # noqa: E402
from chat_orchestrator.senders.whatsapp import WhatsAppSender  # noqa: E402
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager  # noqa: E402

CLIENTS = 8
SECRET = "bench-secret"  # noqa: S105 - a local stand-in's test value


def serve(app: Any) -> tuple[str, Any]:
    server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/hook", server


def load(url: str, bodies: list[list[tuple[bytes, dict[str, str]]]]) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def client(mine: list[tuple[bytes, dict[str, str]]]) -> None:
        session = requests.Session()
        local = []
        for body, headers in mine:
            start = time.perf_counter()
            answer = session.post(url, data=body, headers=headers, timeout=30)
            local.append(time.perf_counter() - start)
            assert answer.status_code == 200, answer.text
        with lock:
            times.extend(local)

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"{name:<26} n={len(times):>5}  median {statistics.median(times) * 1e3:6.2f} ms  "
        f"p99 {p99 * 1e3:6.2f} ms"
    )


def whatsapp_bodies(per_client: int) -> list[list[tuple[bytes, dict[str, str]]]]:
    template = fixture("inbound_text.json")
    out = []
    for c in range(CLIENTS):
        mine = []
        for n in range(per_client):
            payload = json.loads(json.dumps(template))
            message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
            message["id"] = f"wamid.bench.{c}.{n}"
            message["from"] = f"1555000{c:04d}"
            body = json.dumps(payload).encode()
            mine.append((body, {"X-Hub-Signature-256": sign(body)}))
        out.append(mine)
    return out


def telegram_bodies(per_client: int) -> list[list[tuple[bytes, dict[str, str]]]]:
    out = []
    for c in range(CLIENTS):
        mine = []
        for n in range(per_client):
            chat = 1000 + c
            update = {
                "update_id": c * 1_000_000 + n,
                "message": {
                    "message_id": n,
                    "chat": {"id": chat, "type": "private"},
                    "from": {"id": chat, "is_bot": False, "first_name": "B"},
                    "date": 1700000000,
                    "text": "Ann",
                },
            }
            mine.append(
                (
                    json.dumps(update).encode(),
                    {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"},
                )
            )
        out.append(mine)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    per_client = 50 if quick else 250
    graph, api = GraphStandIn().start(), BotAPIStandIn().start()
    wa_sender = WhatsAppSender(graph.token, graph.phone_number_id, base_url=graph.base_url)
    wa = WhatsAppBot(
        greeting_orchestrator(InMemoryStateManager(), wa_sender),
        WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET),
    )
    tg_sender = TelegramSender(api.token, base_url=api.base_url)
    tg = TelegramBot(greeting_orchestrator(InMemoryStateManager(), tg_sender), secret_token=SECRET)
    print(f"webhook ack, {CLIENTS} clients x {per_client} posts (wsgiref, memory store)")
    for name, app, bodies in (
        ("whatsapp", wa, whatsapp_bodies(per_client)),
        ("telegram", tg, telegram_bodies(per_client)),
    ):
        url, server = serve(app)
        load(url, [b[:5] for b in bodies])  # warm-up (the first turns create the chats)
        report(f"{name} webhook ack", load(url, [b[5:] for b in bodies]))
        server.shutdown()
    n = 300 if quick else 2000
    body = {"chat_id": 111, "text": "hello", "link_preview_options": {"is_disabled": True}}
    url = f"{api.base_url}/bot{api.token}/sendMessage"
    with httpx.Client() as raw:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for _ in range(50):
            raw.post(url, content=content, headers=headers)
        start = time.perf_counter()
        for _ in range(n):
            raw.post(url, content=content, headers=headers)
        raw_time = (time.perf_counter() - start) / n
    for _ in range(50):
        tg_sender.send_message("tg:111", "hello")
    start = time.perf_counter()
    for _ in range(n):
        tg_sender.send_message("tg:111", "hello")
    sender_time = (time.perf_counter() - start) / n
    print(
        f"sender, {n} sends: raw httpx {raw_time * 1e6:7.1f} us  TelegramSender "
        f"{sender_time * 1e6:7.1f} us  overhead {(sender_time - raw_time) * 1e6:6.1f} us "
        f"({sender_time / raw_time:.2f}x)"
    )
    wa_sender.close()
    tg_sender.close()
    graph.stop()
    api.stop()


if __name__ == "__main__":
    main()
