"""Telegram fixtures: the Bot API stand-in, and a TelegramBot served over real HTTP (both ways)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import make_server

import pytest
import requests

from chat_orchestrator.channels.telegram_app import TelegramBot
from tests.telegram.bot_api_standin import BotAPIStandIn
from tests.whatsapp.asgi_server import UvicornThread
from tests.whatsapp.conftest import ThreadingWSGIServer, _Quiet

SECRET = "s3cret-Token_for-tests"


@pytest.fixture
def api() -> Iterator[BotAPIStandIn]:
    standin = BotAPIStandIn().start()
    yield standin
    standin.stop()


@dataclass
class Served:
    url: str
    session: requests.Session
    kind: str

    def post(self, body: bytes, secret: str | None = SECRET) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        return self.session.post(self.url, data=body, headers=headers, timeout=10)


Serve = Callable[[TelegramBot], Served]


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    kind: str = request.param
    stops: list[Callable[[], None]] = []

    def start(bot: TelegramBot) -> Served:
        if kind == "asgi":
            thread = UvicornThread(bot.asgi).start()
            stops.append(thread.stop)
            port = thread.port
        else:
            server = make_server("127.0.0.1", 0, bot, ThreadingWSGIServer, handler_class=_Quiet)
            stops.extend([server.shutdown, server.server_close])
            threading.Thread(target=server.serve_forever, daemon=True).start()
            port = server.server_port
        return Served(f"http://127.0.0.1:{port}/telegram", requests.Session(), kind)

    yield start
    for stop in stops:
        stop()
