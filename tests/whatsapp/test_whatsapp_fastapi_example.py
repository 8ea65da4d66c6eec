"""examples/whatsapp_fastapi.py as a user runs it: uvicorn, async steps, the Graph stand-in."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tests.servers import free_port
from tests.whatsapp.conftest import VERIFY_TOKEN, sign
from tests.whatsapp.graph_standin import GraphStandIn, fixture_bytes
from tests.whatsapp.test_whatsapp_bot_example import Example, example_env, greetings

EXAMPLE = ROOT / "examples" / "whatsapp_fastapi.py"
CHALLENGE = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": VERIFY_TOKEN}


@pytest.fixture
def run_example(graph: GraphStandIn, tmp_path: Path) -> Iterator[Callable[..., Example]]:
    procs: list[subprocess.Popen[str]] = []

    def start(**extra_env: str) -> Example:
        env = {**example_env(graph, tmp_path, free_port()), **extra_env}
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
        return Example(f"http://127.0.0.1:{env['PORT']}/webhook/", proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=10)


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"X-Hub-Signature-256": sign(body)}, timeout=10)


def test_the_fastapi_example_greets_with_async_steps(
    run_example: Callable[..., Example], graph: GraphStandIn
) -> None:
    example = run_example()
    assert httpx.get(example.url, params=CHALLENGE, timeout=5).text == "42"
    body = fixture_bytes("inbound_text.json")
    for _ in range(2):  # Meta redelivers: the second copy must not run again
        assert post(example.url, body).status_code == 200
    assert post(example.url, fixture_bytes("batch_two_messages.json")).status_code == 200
    forged = httpx.post(example.url, content=body, headers={"X-Hub-Signature-256": "x"})
    assert forged.status_code == 403
    health = httpx.get(example.url.replace("/webhook/", "/health"), timeout=5).json()
    assert health == {"turns": 3, "failures": 0}
    assert greetings(graph) == [
        ("+15550002222", "Hello! What's your name?"),
        ("+15550002222", "Nice to meet you, first message (user A)!"),
        ("+15550003333", "Hello! What's your name?"),
    ]
    example.proc.send_signal(signal.SIGINT)
    out, err = example.proc.communicate(timeout=10)
    assert (example.proc.returncode, err.splitlines()[-1]) == (130, "whatsapp_fastapi: stopped")
    assert '"GET /webhook/ HTTP/1.1" 200' in out  # uvicorn's access log, without the query
    assert VERIFY_TOKEN not in out + err


def test_missing_settings_are_named_in_one_line(graph: GraphStandIn, tmp_path: Path) -> None:
    env = example_env(graph, tmp_path, free_port())
    del env["WHATSAPP_TOKEN"]
    env["PORT"] = "eighty"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert result.stderr.startswith("whatsapp_fastapi: missing environment variables")
    assert "WHATSAPP_TOKEN" in result.stderr
