"""The greeting bot on WhatsApp, served as a WSGI app (stdlib wsgiref server, one thread a request).

Environment:
  WHATSAPP_TOKEN            access token (a System User token)           required
  WHATSAPP_PHONE_NUMBER_ID  the business phone number id                 required
  WHATSAPP_VERIFY_TOKEN     the verify token you typed in the Meta app   required
  WHATSAPP_APP_SECRET       the Meta app's secret (signs every webhook)  required
  CHAT_STORE                the store's URL (or --store URL); default: SQLite in CHAT_DB
  CHAT_DB                   the SQLite database file (default: chats.db)
  REDIS_URL                 keep state (and seen message ids) in Redis instead
  CHAT_STATE_DIR            keep state in files in this directory instead
  HOST, PORT                where to listen (default 127.0.0.1:8000)
  WHATSAPP_API_BASE         Graph API base URL (default https://graph.facebook.com)
  REQUEST_TIMEOUT           seconds a client may take to send its request (default 10)
  CHAT_MODE                 direct (run each turn in the request) or queue (store it; workers
                            run it: never lose a message, answer Meta at once); default direct
  CHAT_WORKERS              queue mode: worker threads in this process (default 2; 0: run
                            them apart: ``chat-orchestrator worker examples/whatsapp_bot.py:bot``)

Every path answers the webhook; point Meta's callback URL at ``https://<your host>/webhook``.
Run it with ``uv run examples/whatsapp_bot.py`` behind an HTTPS reverse proxy or tunnel.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import ClassVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.stores import open_store, store_url
from examples.greeting_bot import greeting_orchestrator

REQUIRED = (
    "WHATSAPP_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_APP_SECRET",
)
_QUERY = re.compile(r"\?[^\s\"']*")  # the subscription check carries hub.verify_token here


class SettingsError(Exception):
    """A setting is missing or wrong; the message is the one line the user sees."""


def check_settings(env: Mapping[str, str]) -> None:
    """Name every missing or empty required variable at once, and a PORT that is no number."""
    missing = [name for name in REQUIRED if not env.get(name, "").strip()]
    if missing:
        raise SettingsError(f"missing environment variables: {', '.join(missing)}")
    if env.get("CHAT_MODE", "direct") not in ("direct", "queue"):
        raise SettingsError(f"CHAT_MODE must be direct or queue, got {env['CHAT_MODE']!r}")
    workers = env.get("CHAT_WORKERS", "")
    if workers and not (workers.isascii() and workers.isdigit() and int(workers) < 1000):
        raise SettingsError(f"CHAT_WORKERS must be a whole number below 1000, got {workers!r}")
    for name in ("PORT", "REQUEST_TIMEOUT"):
        value = env.get(name, "")
        if value and not (value.isascii() and value.isdigit() and 0 < int(value) < 65536):
            raise SettingsError(f"{name} must be a whole number from 1 to 65535, got {value!r}")


def state_manager_from_env(argv: Sequence[str] = ()) -> StateManager:
    """``--store``/``CHAT_STORE``, else ``REDIS_URL``, else ``CHAT_STATE_DIR`` files, else SQLite.

    SQLite is the durable store for one machine: no server, a turn committed survives a crash.
    """
    url = store_url(argv, default="") or os.environ.get("REDIS_URL")
    if url:
        return open_store(url)
    state_dir = os.environ.get("CHAT_STATE_DIR")
    if state_dir:
        return FileStateManager(state_dir=state_dir)
    return SQLiteStateManager(os.environ.get("CHAT_DB") or "chats.db")


def build_app(argv: Sequence[str] = ()) -> WhatsAppBot:
    env = os.environ
    check_settings(env)
    sender = WhatsAppSender(
        access_token=env["WHATSAPP_TOKEN"],
        phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"],
        base_url=env.get("WHATSAPP_API_BASE") or "https://graph.facebook.com",
    )
    orchestrator = greeting_orchestrator(state_manager_from_env(argv), sender)
    webhook = WhatsAppWebhook(env["WHATSAPP_VERIFY_TOKEN"], env["WHATSAPP_APP_SECRET"])
    mode = env.get("CHAT_MODE") or "direct"
    return WhatsAppBot(orchestrator, webhook, phone_number_id=sender.phone_number_id, mode=mode)


def __getattr__(name: str) -> object:
    # ``chat-orchestrator worker examples/whatsapp_bot.py:bot`` builds the bot from the
    # same environment as the server.
    if name == "bot":
        return build_app()
    raise AttributeError(name)


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow client holds up only itself."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Access log without query strings (no verify token) and a socket timeout per request."""

    timeout: ClassVar[float | None] = 10.0  # applied to the socket: an under-sent body ends in 408

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log_message('"%s %s" %s %s', self.command, path, code, size)

    def log_message(self, format: str, *args: object) -> None:
        # log_error's messages quote the request line too: drop any query string from them.
        line = _QUERY.sub("?...", format % args)
        sys.stderr.write(f"{self.address_string()} {line}\n")


def main() -> int:
    try:
        app = build_app(sys.argv[1:])
    except SettingsError as exc:
        print(f"whatsapp_bot: {exc}", file=sys.stderr)
        return 2
    except StateManagerError as exc:  # a bad or unreachable store (its URL is redacted)
        print(f"whatsapp_bot: {exc}", file=sys.stderr)
        return 1
    host, port = os.environ.get("HOST") or "127.0.0.1", int(os.environ.get("PORT") or "8000")
    QuietHandler.timeout = float(os.environ.get("REQUEST_TIMEOUT") or "10")
    try:
        server = make_server(host, port, app, ThreadingServer, handler_class=QuietHandler)
    except OSError as exc:
        print(f"whatsapp_bot: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    workers = int(os.environ.get("CHAT_WORKERS") or "2") if app.mode == "queue" else 0
    stop = threading.Event()
    if workers:
        worker = Worker(app)
        threading.Thread(
            target=worker.run, args=(stop,), kwargs={"threads": workers}, daemon=True
        ).start()
    with server:
        print(f"listening on http://{host}:{server.server_port} ({app.mode} mode)", flush=True)
        try:
            server.serve_forever()
        finally:
            stop.set()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print("whatsapp_bot: stopped", file=sys.stderr)
        sys.exit(130)
