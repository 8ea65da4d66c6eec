"""A local stand-in for the Telegram Bot API: ``POST /bot<token>/<method>`` on 127.0.0.1.

The token is checked in the path (a wrong one is the documented 401 body); requests are
checked against the documented limits (text 1-4096 UTF-16 units, callback_data 1-64 bytes);
answers are ``{"ok": true, "result": ...}`` or the documented error body ``{"ok": false,
"error_code", "description", "parameters"}`` (fixtures in ``tests/telegram/fixtures``).
``getUpdates`` serves a queue: updates below ``offset`` are confirmed and dropped, as Telegram
does; with ``timeout`` it waits for a new update (bounded). Tests script answers with
``respond(status, body)``.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKEN = "123456789:AAHtest-token-SECRET_abcdefghijklmn"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


@dataclass
class Call:
    method: str
    body: Any


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def shape_problem(method: str, body: Any) -> str | None:
    """What is wrong with a request, per the Bot API reference (None: fine)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if method in {"sendMessage", "sendPhoto", "sendChatAction"}:
        chat = body.get("chat_id")
        if not (isinstance(chat, int) or (isinstance(chat, str) and chat.startswith("@"))):
            return "Bad Request: chat not found"
    if method == "sendMessage":
        text = body.get("text")
        if not isinstance(text, str) or not 0 < _utf16(text) <= 4096:
            return "Bad Request: message text is empty or too long"
    if method == "sendPhoto" and not isinstance(body.get("photo"), str):
        return "Bad Request: there is no photo in the request"
    markup = body.get("reply_markup")
    if isinstance(markup, dict) and "inline_keyboard" in markup:
        for row in markup["inline_keyboard"]:
            for button in row:
                data = button.get("callback_data", "")
                if not 1 <= len(data.encode()) <= 64:
                    return "Bad Request: BUTTON_DATA_INVALID"
    if method == "answerCallbackQuery" and not isinstance(body.get("callback_query_id"), str):
        return "Bad Request: query is too old and response timeout expired or query ID is invalid"
    return None


@dataclass
class BotAPIStandIn:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    _scripted: deque[tuple[int, Any]] = field(default_factory=deque)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    webhook: dict[str, Any] | None = None
    max_wait: float = 2.0

    def respond(self, status: int, answer: Any) -> None:
        """The next request gets this answer (a fixture name, a dict, or raw bytes)."""
        self._scripted.append((status, fixture(answer) if isinstance(answer, str) else answer))

    def push_update(self, update: dict[str, Any]) -> None:
        with self._cond:
            self._updates.append(update)
            self._cond.notify_all()

    def pending(self) -> list[int]:
        with self._cond:
            return [u["update_id"] for u in self._updates]

    def sent(self, method: str = "sendMessage") -> list[Any]:
        return [c.body for c in self.calls if c.method == method]

    def start(self) -> BotAPIStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                standin._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        prefix, _, method = request.path.lstrip("/").partition("/")
        status, answer = self._answer(prefix, method, body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _answer(self, prefix: str, method: str, body: Any) -> tuple[int, Any]:
        if prefix != f"bot{self.token}":
            return 401, fixture("error_401_unauthorized.json")
        self.calls.append(Call(method, body))
        if self._scripted:
            return self._scripted.popleft()
        problem = shape_problem(method, body)
        if problem is not None:
            return 400, {"ok": False, "error_code": 400, "description": problem}
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(body)}
        if method in {"sendMessage", "sendPhoto"}:
            message = {
                "message_id": next(self._ids),
                "date": 1700000000,
                "chat": {"id": body["chat_id"], "type": "private"},
                "text": body.get("text", body.get("caption", "")),
            }
            return 200, {"ok": True, "result": message}
        if method == "getMe":
            bot_id = int(self.token.partition(":")[0])
            return 200, {"ok": True, "result": {"id": bot_id, "is_bot": True, "first_name": "T"}}
        if method == "setWebhook":
            self.webhook = body
        if method == "deleteWebhook":
            self.webhook = None
        return 200, {"ok": True, "result": True}

    def _get_updates(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        offset = body.get("offset")
        limit = int(body.get("limit", 100))
        with self._cond:
            if isinstance(offset, int):  # confirmed: Telegram forgets them
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if not self._updates and body.get("timeout"):
                self._cond.wait(min(float(body["timeout"]), self.max_wait))
            return list(self._updates[:limit])
