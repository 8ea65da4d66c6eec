"""The ASGI face of the bot: mounted under FastAPI and Starlette, async steps, lifespan, limits.

The WSGI app's behaviour and hostile-request tests run against ``bot.asgi`` too (the ``serve``
fixture serves each test both ways); these are the ASGI-only guarantees, over real uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from chat_orchestrator.channels import (
    StatusEvent,
    WhatsAppBot,
    WhatsAppWebhook,
    inbound_message,
    parse_payload,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import AsyncMessageSender
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.whatsapp.asgi_server import UvicornThread
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, sign
from tests.whatsapp.graph_standin import fixture, fixture_bytes
from tests.whatsapp.test_webhook import echo_bot

CHALLENGE = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": VERIFY_TOKEN}


async def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("up")


def fastapi_app(bot: WhatsAppBot) -> Any:
    app = FastAPI()
    app.add_api_route("/health", _health)
    app.mount("/hooks/wa", bot.asgi)
    return app


def starlette_app(bot: WhatsAppBot) -> Any:
    return Starlette(routes=[Route("/health", _health), Mount("/hooks/wa", app=bot.asgi)])


@pytest.mark.parametrize("make_app", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_mounted_at_a_sub_path_it_verifies_runs_and_dedups(
    make_app: Callable[[WhatsAppBot], Any],
) -> None:
    bot, sender = echo_bot()
    server = UvicornThread(make_app(bot)).start()
    base = f"http://127.0.0.1:{server.port}"
    body = fixture_bytes("inbound_text.json")
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/health").text == "up"  # the framework's own routes still work
            assert client.get("/hooks/wa/", params=CHALLENGE).text == "42"
            headers = {"X-Hub-Signature-256": sign(body)}
            assert client.post("/hooks/wa/", content=body, headers=headers).status_code == 200
            assert client.post("/hooks/wa/", content=body, headers=headers).status_code == 200
            forged = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
            assert client.post("/hooks/wa/", content=body, headers=forged).status_code == 403
            assert client.put("/hooks/wa/").headers["allow"] == "GET, POST"
    finally:
        server.stop()
    assert len(sender.sent) == 1
    assert bot.turns == 1


def async_bot() -> tuple[WhatsAppBot, RecordingSender, list[str]]:
    """A flow of an ``async def`` step and a plain ``def`` step, both reading inbound_message."""
    sender = RecordingSender()
    orchestrator = ChatOrchestrator(InMemoryStateManager(), sender)
    seen: list[str] = []

    @orchestrator.register_step("start")
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(0)  # the message is still the task's after a suspension
        message = inbound_message()
        assert message is not None
        seen.append(f"async:{message.id}")
        await sender.send_message(chat_id, f"async|{text}")
        return "again", {"n": context.get("n", 0) + 1}

    @orchestrator.register_step("again")
    def again(
        chat_id: str, text: str | None, context: dict[str, Any], sender: Any
    ) -> tuple[str, dict[str, Any]]:
        message = inbound_message()  # a worker thread: the context was copied into it
        assert message is not None
        seen.append(f"sync:{message.id}")
        sender.send_message(chat_id, f"sync|{text}")
        return "start", {"n": context.get("n", 0) + 1}

    return WhatsAppBot(orchestrator, WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET)), sender, seen


def text_message(message_id: str, chat_id: str, text: str) -> bytes:
    payload = fixture("inbound_text.json")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update({"id": message_id, "from": chat_id, "text": {"body": text}})
    return json.dumps(payload).encode()


def test_async_and_sync_steps_see_the_inbound_message() -> None:
    bot, sender, seen = async_bot()
    server = UvicornThread(bot.asgi).start()
    try:
        with httpx.Client(timeout=10) as client:
            for index in range(2):
                body = text_message(f"wamid.{index}", "15550001111", f"hi {index}")
                response = client.post(
                    f"http://127.0.0.1:{server.port}/",
                    content=body,
                    headers={"X-Hub-Signature-256": sign(body)},
                )
                assert response.status_code == 200
    finally:
        server.stop()
    assert seen == ["async:wamid.0", "sync:wamid.1"]
    assert sender.texts() == ["async|hi 0", "sync|hi 1"]
    assert list(bot.failures) == []


def test_concurrent_posts_to_one_chat_lose_no_turn() -> None:
    """8 clients x 10 messages to one chat on uvicorn's event loop: the counter is exact."""
    bot, sender = echo_bot()
    server = UvicornThread(bot.asgi).start()
    url = f"http://127.0.0.1:{server.port}/webhook"

    async def client(number: int, http: httpx.AsyncClient) -> None:
        for index in range(10):
            body = text_message(f"wamid.{number}.{index}", "15550002222", "x")
            headers = {"X-Hub-Signature-256": sign(body)}
            assert (await http.post(url, content=body, headers=headers)).status_code == 200

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            await asyncio.gather(*(client(n, http) for n in range(8)))

    try:
        asyncio.run(main())
    finally:
        server.stop()
    manager = bot.orchestrator.state_manager
    assert isinstance(manager, InMemoryStateManager)
    assert manager.get_state("15550002222") == ("start", {"n": 80})
    assert len(sender.sent) == 80


def test_an_async_on_status_is_awaited_once_per_status() -> None:
    bot, _ = echo_bot()
    seen: list[StatusEvent] = []

    async def on_status(status: StatusEvent) -> None:
        await asyncio.sleep(0)
        seen.append(status)

    bot.on_status = on_status
    body = fixture_bytes("status_delivered.json")
    for _ in range(2):
        assert asyncio.run(call(bot, "POST", body)) == (200, b"OK")
    assert [s.status for s in seen] == ["delivered"]


def test_an_async_on_status_runs_on_the_wsgi_path_too() -> None:
    bot, _ = echo_bot()
    seen: list[str] = []

    async def on_status(status: StatusEvent) -> None:
        await asyncio.sleep(0)
        seen.append(status.status)

    bot.on_status = on_status
    batch = parse_payload(fixture("status_delivered.json"))
    assert bot.handle(batch) == (200, "OK")
    assert bot.handle(batch) == (200, "OK")
    assert seen == ["delivered"]


class Receiver:
    """An ASGI ``receive`` that hands over ``body`` in chunks and counts what it handed over."""

    def __init__(self, body: bytes, chunk: int = 100, *, endless: bool = False) -> None:
        self.body, self.chunk, self.endless = body, chunk, endless
        self.handed = 0

    async def __call__(self) -> dict[str, Any]:
        piece = self.body[self.handed : self.handed + self.chunk]
        if self.endless and not piece:
            piece = b"x" * self.chunk
        self.handed += len(piece)
        more = self.endless or self.handed < len(self.body)
        return {"type": "http.request", "body": piece, "more_body": more}


async def call(
    bot: WhatsAppBot,
    method: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    receiver: Receiver | None = None,
) -> tuple[int, bytes]:
    if headers is None:
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"x-hub-signature-256", sign(body).encode()),
        ]
    scope = {"type": "http", "method": method, "path": "/", "query_string": b"", "headers": headers}
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await bot.asgi(scope, receiver or Receiver(body), send)
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize("declared", ["500", "501", "10000000", "-1"])
def test_never_more_than_the_limit_and_one_chunk_is_received(declared: str) -> None:
    bot, sender = echo_bot()
    bot.webhook.max_body_bytes = 500
    receiver = Receiver(b"", endless=True)  # a client that never stops sending
    headers = [(b"content-length", declared.encode())]
    status, _ = asyncio.run(call(bot, "POST", b"", headers, receiver))
    assert receiver.handed <= 600  # the limit, plus the one chunk that overshot it
    assert status in {400, 413}
    assert sender.sent == []


def test_a_body_in_many_small_chunks_is_verified_over_its_bytes() -> None:
    bot, sender = echo_bot()
    body = fixture_bytes("batch_two_messages.json")
    receiver = Receiver(body, chunk=7)
    assert asyncio.run(call(bot, "POST", body, receiver=receiver)) == (200, b"OK")
    assert len(sender.sent) == 2


def test_lifespan_is_acknowledged_and_a_websocket_refused() -> None:
    bot, _ = echo_bot()

    async def drive(scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
        queue = list(incoming)
        out: list[Any] = []

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            out.append(message["type"])

        await asyncio.wait_for(bot.asgi(scope, receive, send), 5)
        return out

    lifespan = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    assert asyncio.run(drive({"type": "lifespan"}, lifespan)) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    websocket = asyncio.run(drive({"type": "websocket"}, [{"type": "websocket.connect"}]))
    assert websocket == ["websocket.close"]
