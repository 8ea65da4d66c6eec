"""A local stand-in for the Graph API's ``POST /{version}/{phone_number_id}/messages``.

It checks the bearer token, the URL shape and the body against the documented shapes, and
answers with the documented success and error bodies from ``tests/whatsapp/fixtures``.
Tests script answers with ``respond(status, fixture_or_body, delay=...)``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Inside the repository, so a clone in an empty directory passes (see fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


def shape_problem(body: Any) -> str | None:
    """What is wrong with a request body, per the documented shapes (None: fine)."""
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return "messaging_product must be whatsapp"
    if body.get("status") == "read":
        ok = isinstance(body.get("message_id"), str)
        typing = body.get("typing_indicator")
        return None if ok and typing in (None, {"type": "text"}) else "bad read receipt"
    if body.get("recipient_type") != "individual":
        return "recipient_type must be individual"
    to, recipient = body.get("to"), body.get("recipient")
    if not (isinstance(to, str) and to.startswith("+")) and not isinstance(recipient, str):
        return "to must carry + and a country code (or use recipient)"
    kind = body.get("type")
    if kind == "text":
        text = body.get("text", {})
        if not isinstance(text.get("body"), str) or not 0 < len(text["body"]) <= 4096:
            return "text.body must be 1..4096 characters"
    elif kind == "interactive":
        interactive = body.get("interactive", {})
        action = interactive.get("action", {})
        if interactive.get("type") == "button":
            buttons = action.get("buttons", [])
            titles = [b["reply"]["title"] for b in buttons]
            if not 0 < len(buttons) <= 3 or any(len(t) > 20 for t in titles):
                return "1..3 buttons with titles of at most 20 characters"
            if len(set(titles)) != len(titles):
                return "button titles must be unique"
        elif interactive.get("type") == "list":
            rows = [row for s in action.get("sections", []) for row in s.get("rows", [])]
            if not 0 < len(rows) <= 10 or any(len(r["title"]) > 24 for r in rows):
                return "1..10 rows with titles of at most 24 characters"
        else:
            return "unknown interactive type"
        if not isinstance(interactive.get("body", {}).get("text"), str):
            return "interactive.body.text is required"
    elif kind == "template":
        template = body.get("template", {})
        if not isinstance(template.get("name"), str) or "code" not in template.get("language", {}):
            return "template needs name and language.code"
    else:
        return f"unsupported type {kind!r}"
    return None


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog of 5 resets connections under 50 concurrent sends.
    request_queue_size = 128
    daemon_threads = True


@dataclass
class GraphStandIn:
    token: str = "test-token-SECRET-123"
    phone_number_id: str = "200000000000002"
    version: str = "v25.0"
    received: list[Received] = field(default_factory=list)
    _script: deque[tuple[int, Any, float]] = field(default_factory=deque)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def respond(self, status: int, answer: str | bytes | dict[str, Any], delay: float = 0) -> None:
        """Queue one answer: a fixture file name, raw bytes, or a JSON body."""
        self._script.append((status, answer, delay))

    def start(self) -> GraphStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                standin._handle(self)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        raw = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.received.append(Received(request.path, dict(request.headers), body))
        status, answer, delay = self._next(request, body)
        if delay:
            time.sleep(delay)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout tests)

    def _next(self, request: BaseHTTPRequestHandler, body: Any) -> tuple[int, Any, float]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, fixture("error_190_token_expired.json"), 0
        if request.path != f"/{self.version}/{self.phone_number_id}/messages":
            return 400, fixture("error_100_invalid_parameter.json"), 0
        problem = shape_problem(body)
        if problem is not None:
            error = fixture("error_100_invalid_parameter.json")
            error["error"]["error_data"]["details"] = problem
            return 400, error, 0
        if self._script:
            status, answer, delay = self._script.popleft()
            if isinstance(answer, str):
                answer = fixture(answer)
            return status, answer, delay
        if body.get("status") == "read":
            return 200, fixture("mark_read_response.json"), 0
        success = fixture("send_success_response.json")
        success["contacts"][0]["input"] = body.get("to") or body.get("recipient")
        success["messages"][0]["id"] = f"wamid.STANDIN_{next(self._ids)}"
        return 200, success, 0
