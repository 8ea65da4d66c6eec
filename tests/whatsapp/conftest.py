"""WhatsApp fixtures: the Graph API stand-in, and a WSGI app served over real HTTP."""

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

    def post(self, body: bytes, signature: str | None = "auto") -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if signature == "auto":
            signature = sign(body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.session.post(self.url, data=body, headers=headers, timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[WhatsAppBot], Served]]:
    """Serve a WhatsAppBot with the stdlib wsgiref server on 127.0.0.1 in a thread."""
    servers: list[WSGIServer] = []

    def start(app: WhatsAppBot) -> Served:
        server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, handler_class=_Quiet)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return Served(f"http://127.0.0.1:{server.server_port}/webhook", requests.Session())

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
