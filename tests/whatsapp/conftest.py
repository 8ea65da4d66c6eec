"""WhatsApp fixtures: the Graph API stand-in, and the bot served over real HTTP.

``serve`` runs every test that takes it twice: the WSGI app on the stdlib wsgiref server, and
``bot.asgi`` on a real uvicorn server; both on 127.0.0.1 with real sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests

from chat_orchestrator.channels import WhatsAppBot
from tests.whatsapp.asgi_server import UvicornThread
from tests.whatsapp.graph_standin import GraphStandIn

APP_SECRET = "test_app_secret"  # the fixtures' signatures are made with this secret
VERIFY_TOKEN = "verify-me-SECRET"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    standin = GraphStandIn().start()
    yield standin
    standin.stop()


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Served:
    url: str
    session: requests.Session
    kind: str = "wsgi"

    def post(self, body: bytes, signature: str | None = "auto") -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if signature == "auto":
            signature = sign(body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.session.post(self.url, data=body, headers=headers, timeout=10)


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[[WhatsAppBot], Served]]:
    """Serve a WhatsAppBot on 127.0.0.1 in a thread: wsgiref (WSGI) or uvicorn (``bot.asgi``)."""
    kind: str = request.param
    stops: list[Callable[[], None]] = []

    def start(app: WhatsAppBot) -> Served:
        if kind == "asgi":
            uvicorn_thread = UvicornThread(app.asgi).start()
            stops.append(uvicorn_thread.stop)
            port = uvicorn_thread.port
        else:
            server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, handler_class=_Quiet)
            stops.append(server.shutdown)
            stops.append(server.server_close)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            port = server.server_port
        return Served(f"http://127.0.0.1:{port}/webhook", requests.Session(), kind)

    yield start
    for stop in stops:
        stop()
