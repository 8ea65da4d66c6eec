"""examples/whatsapp_bot.py as a user runs it, and exactly-once across workers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from chat_orchestrator.state_managers.redis import RedisStateManager
from tests.helpers import ROOT
from tests.servers import free_port
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, Served, sign
from tests.whatsapp.graph_standin import GraphStandIn, fixture_bytes
from tests.whatsapp.test_webhook import echo_bot

Serve = Callable[..., Served]


@pytest.fixture
def run_example(graph: GraphStandIn, tmp_path: Path) -> Iterator[Callable[..., str]]:
    procs: list[subprocess.Popen[str]] = []

    def start(**extra_env: str) -> str:
        port = free_port()
        env = {
            **os.environ,
            "WHATSAPP_TOKEN": graph.token,
            "WHATSAPP_PHONE_NUMBER_ID": graph.phone_number_id,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_API_BASE": graph.base_url,
            "CHAT_STATE_DIR": str(tmp_path / "states"),
            "PORT": str(port),
            **extra_env,
        }
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "whatsapp_bot.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
        return f"http://127.0.0.1:{port}/webhook"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def greetings(graph: GraphStandIn) -> list[tuple[str, str]]:
    return [(r.body["to"], r.body["text"]["body"]) for r in graph.received if r.body.get("text")]


def test_the_example_greets_on_whatsapp_with_file_state(
    run_example: Callable[..., str], graph: GraphStandIn
) -> None:
    url = run_example()
    check = requests.get(
        url,
        params={"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": VERIFY_TOKEN},
        timeout=5,
    )
    assert check.text == "42"
    body = fixture_bytes("inbound_text.json")
    for _ in range(2):  # Meta redelivers: the second copy must not run again
        response = requests.post(
            url, data=body, headers={"X-Hub-Signature-256": sign(body)}, timeout=10
        )
        assert response.status_code == 200
    batch = fixture_bytes("batch_two_messages.json")
    requests.post(url, data=batch, headers={"X-Hub-Signature-256": sign(batch)}, timeout=10)
    assert greetings(graph) == [
        ("+15550002222", "Hello! What's your name?"),
        ("+15550002222", "Nice to meet you, first message (user A)!"),
        ("+15550003333", "Hello! What's your name?"),
    ]


def test_the_example_uses_redis_when_redis_url_is_set(
    run_example: Callable[..., str], graph: GraphStandIn, redis_url: str
) -> None:
    url = run_example(REDIS_URL=redis_url)
    body = fixture_bytes("inbound_text.json")
    requests.post(url, data=body, headers={"X-Hub-Signature-256": sign(body)}, timeout=10)
    state = RedisStateManager(url=redis_url).get_state("15550002222")
    assert state == ("get_name", {})


def test_two_workers_on_one_redis_run_a_redelivered_message_once(
    serve: Serve, redis_url: str
) -> None:
    bots = [echo_bot(RedisStateManager(url=redis_url)) for _ in range(2)]
    servers = [serve(bot) for bot, _ in bots]
    body = fixture_bytes("batch_two_messages.json")
    barrier = threading.Barrier(6)

    def deliver(served: Served) -> None:
        barrier.wait()
        assert served.post(body).status_code == 200

    threads = [threading.Thread(target=deliver, args=(servers[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = [m for _, sender in bots for m in sender.sent]
    assert sorted(m.chat_id for m in sent) == ["15550002222", "15550003333"]
    assert RedisStateManager(url=redis_url).get_state("15550002222") == ("start", {"n": 1})


def test_missing_httpx_is_a_clear_import_error() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from chat_orchestrator.errors import MissingDependencyError\n"
        "try:\n"
        "    import chat_orchestrator.senders.whatsapp\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert 'pip install "chat-orchestrator[whatsapp]"' in result.stdout, result.stderr
