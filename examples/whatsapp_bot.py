"""The greeting bot on WhatsApp, served as a WSGI app (stdlib wsgiref server).

Environment:
  WHATSAPP_TOKEN            access token (a System User token)           required
  WHATSAPP_PHONE_NUMBER_ID  the business phone number id                 required
  WHATSAPP_VERIFY_TOKEN     the verify token you typed in the Meta app   required
  WHATSAPP_APP_SECRET       the Meta app's secret (signs every webhook)  required
  REDIS_URL                 keep state (and seen message ids) in Redis; default: files
  CHAT_STATE_DIR            directory for file state (default: whatsapp_states)
  HOST, PORT                where to listen (default 127.0.0.1:8000)
  WHATSAPP_API_BASE         Graph API base URL (default https://graph.facebook.com)

Run it with ``uv run examples/whatsapp_bot.py`` behind an HTTPS reverse proxy or tunnel.
"""

import os
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from examples.greeting_bot import greeting_orchestrator


def state_manager_from_env() -> StateManager:
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        from chat_orchestrator.state_managers.redis import RedisStateManager

        return RedisStateManager(url=redis_url)
    return FileStateManager(state_dir=os.environ.get("CHAT_STATE_DIR", "whatsapp_states"))


def build_app() -> WhatsAppBot:
    env = os.environ
    sender = WhatsAppSender(
        access_token=env["WHATSAPP_TOKEN"],
        phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"],
        base_url=env.get("WHATSAPP_API_BASE", "https://graph.facebook.com"),
    )
    orchestrator = greeting_orchestrator(state_manager_from_env(), sender)
    webhook = WhatsAppWebhook(env["WHATSAPP_VERIFY_TOKEN"], env["WHATSAPP_APP_SECRET"])
    return WhatsAppBot(orchestrator, webhook, phone_number_id=sender.phone_number_id)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


if __name__ == "__main__":
    app = build_app()
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    with make_server(host, port, app, handler_class=_QuietHandler) as server:
        print(f"listening on http://{host}:{server.server_port}", flush=True)
        server.serve_forever()
