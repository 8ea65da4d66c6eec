"""The greeting bot on WhatsApp as async code: FastAPI, uvicorn, ``AsyncWhatsAppSender``.

The same settings as ``examples/whatsapp_bot.py`` (the WSGI one):
  WHATSAPP_TOKEN            access token (a System User token)           required
  WHATSAPP_PHONE_NUMBER_ID  the business phone number id                 required
  WHATSAPP_VERIFY_TOKEN     the verify token you typed in the Meta app   required
  WHATSAPP_APP_SECRET       the Meta app's secret (signs every webhook)  required
  REDIS_URL                 keep state (and seen message ids) in Redis; default: files
  CHAT_STATE_DIR            directory for file state (default: whatsapp_states)
  HOST, PORT                where to listen (default 127.0.0.1:8000)
  WHATSAPP_API_BASE         Graph API base URL (default https://graph.facebook.com)
  REQUEST_TIMEOUT           seconds a client may take to send its body (default 10)

The bot is mounted at ``/webhook``: point Meta's callback URL at ``https://<host>/webhook/``
(with the slash; Starlette redirects the bare path). ``GET /health`` is the app's own route.
FastAPI and uvicorn are this example's dependencies, not the library's:
``uv run --with fastapi --with uvicorn examples/whatsapp_fastapi.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

import uvicorn
from fastapi import FastAPI

from chat_orchestrator.channels import WhatsAppASGI, WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender
from chat_orchestrator.state_managers.base import StateManager
from examples.whatsapp_bot import SettingsError, check_settings, state_manager_from_env


def async_greeting_orchestrator(
    state_manager: StateManager, sender: AsyncMessageSender
) -> ChatOrchestrator:
    """The README's two greeting steps as ``async def`` steps: each send is awaited."""
    orchestrator = ChatOrchestrator(state_manager, sender)

    @orchestrator.register_step("start")
    async def start_step(
        chat_id: str, user_input: str | None, context: dict[str, object], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, object]]:
        await sender.send_message(chat_id, "Hello! What's your name?")
        return "get_name", {}

    @orchestrator.register_step("get_name")
    async def get_name_step(
        chat_id: str, user_input: str | None, context: dict[str, object], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, object]]:
        await sender.send_message(chat_id, f"Nice to meet you, {user_input}!")
        return "start", {}

    return orchestrator


def build_app() -> FastAPI:
    env = os.environ
    check_settings(env)
    sender = AsyncWhatsAppSender(
        access_token=env["WHATSAPP_TOKEN"],
        phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"],
        base_url=env.get("WHATSAPP_API_BASE") or "https://graph.facebook.com",
    )
    orchestrator = async_greeting_orchestrator(state_manager_from_env(), sender)
    webhook = WhatsAppWebhook(env["WHATSAPP_VERIFY_TOKEN"], env["WHATSAPP_APP_SECRET"])
    bot = WhatsAppBot(orchestrator, webhook, phone_number_id=sender.phone_number_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await sender.aclose()  # the HTTP connection pool to the Graph API
        await orchestrator.state_manager.close_async()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, int]:
        return {"turns": bot.turns, "failures": len(bot.failures)}

    timeout = float(env.get("REQUEST_TIMEOUT") or "10")
    app.mount("/webhook", WhatsAppASGI(bot, body_timeout=timeout))
    return app


class NoQueryStrings(logging.Filter):
    """uvicorn's access log quotes the query string, where hub.verify_token travels: drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            path = str(record.args[2]).split("?", 1)[0]
            record.args = (*record.args[:2], path, *record.args[3:])
        return True


def main() -> int:
    try:
        app = build_app()
    except SettingsError as exc:
        print(f"whatsapp_fastapi: {exc}", file=sys.stderr)
        return 2
    host, port = os.environ.get("HOST") or "127.0.0.1", int(os.environ.get("PORT") or "8000")
    # Bound here, not by uvicorn: a port in use is one line, and the URL printed is real.
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets (else 40 ms an answer).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"whatsapp_fastapi: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    config = uvicorn.Config(app, log_level="info")  # configures uvicorn's loggers: filter after
    logging.getLogger("uvicorn.access").addFilter(NoQueryStrings())
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shuts down cleanly, then re-raises it
        print("whatsapp_fastapi: stopped", file=sys.stderr)
        sys.exit(130)
