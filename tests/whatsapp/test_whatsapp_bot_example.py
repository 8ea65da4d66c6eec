"""examples/whatsapp_bot.py as a user runs it, and exactly-once across workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass
class Example:
    url: str
    proc: subprocess.Popen[str]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``; (exit code, everything the example wrote to stderr)."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


def example_env(graph: GraphStandIn, tmp_path: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "WHATSAPP_TOKEN": graph.token,
        "WHATSAPP_PHONE_NUMBER_ID": graph.phone_number_id,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_API_BASE": graph.base_url,
        "CHAT_STATE_DIR": str(tmp_path / "states"),
        "PORT": str(port),
    }


@pytest.fixture
def run_example(graph: GraphStandIn, tmp_path: Path) -> Iterator[Callable[..., Example]]:
    procs: list[subprocess.Popen[str]] = []

    def start(**extra_env: str) -> Example:
        env = {**example_env(graph, tmp_path, free_port()), **extra_env}
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
        return Example(f"http://127.0.0.1:{env['PORT']}/webhook", proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=10)


def greetings(graph: GraphStandIn) -> list[tuple[str, str]]:
    return [(r.body["to"], r.body["text"]["body"]) for r in graph.received if r.body.get("text")]


def test_the_example_greets_on_whatsapp_with_file_state(
    run_example: Callable[..., Example], graph: GraphStandIn
) -> None:
    url = run_example().url
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
    run_example: Callable[..., Example], graph: GraphStandIn, redis_url: str
) -> None:
    url = run_example(REDIS_URL=redis_url).url
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


def test_a_slow_client_does_not_block_others_and_times_out(
    run_example: Callable[..., Example],
) -> None:
    example = run_example(REQUEST_TIMEOUT="2")
    port = int(example.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        # Promises 1,000 bytes, sends 10, then goes quiet (the old server served nobody else).
        slow.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        params = {"hub.mode": "subscribe", "hub.challenge": "7", "hub.verify_token": VERIFY_TOKEN}
        for _ in range(3):
            assert requests.get(example.url, params=params, timeout=1.5).text == "7"
        answer = slow.recv(4096)  # the socket timeout ends the slow request
    assert answer.startswith(b"HTTP/1.0 408") or answer.startswith(b"HTTP/1.1 408"), answer


def test_the_access_log_never_shows_the_verify_token(run_example: Callable[..., Example]) -> None:
    example = run_example()
    params = {"hub.mode": "subscribe", "hub.challenge": "7", "hub.verify_token": VERIFY_TOKEN}
    assert requests.get(example.url, params=params, timeout=5).status_code == 200
    port = int(example.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as broken:
        # A request line wsgiref refuses: its error log quotes the line, query string and all.
        broken.sendall(f"GET /webhook?hub.verify_token={VERIFY_TOKEN} HTTP/1.1 x\r\n\r\n".encode())
        broken.recv(4096)
    _, err = example.stop()
    assert '"GET /webhook" 200' in err
    assert "400" in err
    assert VERIFY_TOKEN not in err


def test_missing_settings_are_named_in_one_line(graph: GraphStandIn, tmp_path: Path) -> None:
    env = {**os.environ, **example_env(graph, tmp_path, free_port())}
    del env["WHATSAPP_TOKEN"]
    env["WHATSAPP_APP_SECRET"] = " "
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "whatsapp_bot.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "WHATSAPP_TOKEN" in result.stderr
    assert "WHATSAPP_APP_SECRET" in result.stderr
    assert "WHATSAPP_VERIFY_TOKEN" not in result.stderr
    env["WHATSAPP_TOKEN"], env["WHATSAPP_APP_SECRET"], env["PORT"] = "t", "s", "eighty"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "whatsapp_bot.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert "PORT" in result.stderr


def test_ctrl_c_stops_the_example_with_one_line(run_example: Callable[..., Example]) -> None:
    code, err = run_example().stop(signal.SIGINT)
    assert err == "whatsapp_bot: stopped\n"
    assert code == 130


def test_the_readme_names_every_setting_and_limit_of_the_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## WhatsApp\n") :]
    section = section[: section.index("\n## ")]
    source = (ROOT / "examples" / "whatsapp_bot.py").read_text(encoding="utf-8")
    read = set(re.findall(r"""env(?:iron)?(?:\.get\(|\[)["']([A-Z_]+)["']""", source))
    read |= set(re.findall(r'^    "([A-Z_]+)",$', source, re.M))  # REQUIRED
    assert {"HOST", "PORT", "WHATSAPP_API_BASE", "WHATSAPP_TOKEN", "REDIS_URL"} <= read
    for name in read:
        assert f"`{name}`" in section, name
    for fact in ["/webhook", "24-hour window", "5 allow-listed recipients", "131030", "131047"]:
        assert fact in section, fact
    setup = readme[: readme.index("## The decorator API")]
    for fact in ['uv run pytest -m "not slow"', "Python >= 3.11", 'uv add "chat-orchestrator[']:
        assert fact in setup, fact
    assert 'pip install "chat-orchestrator[' in setup
