"""The WhatsApp bot as an ASGI application (uvicorn, FastAPI/Starlette ``app.mount``, ...).

Only I/O lives here: read the scope's headers, receive the body in the server's chunks and
stop at the first byte past the admitted length, send the answer. Admission, the body's
completeness, verification over the raw bytes, parsing, dedup, ordering and what a failure
means are the very code the WSGI app runs (``webhook_http`` and ``WhatsAppBot._request_op``),
driven here by ``run_async``: turns are awaited with ``handle_message_async`` and message ids
claimed with ``claim_async``, so nothing blocks the event loop.

The app answers at whatever path it is mounted on (Meta posts to the one callback URL), and
needs no web framework: FastAPI and Starlette only mount it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from chat_orchestrator.channels.webhook_http import (
    BodyBuffer,
    HttpReply,
    admit,
    body_timed_out,
)
from chat_orchestrator.errors import WebhookError

if TYPE_CHECKING:  # the bot modules import this one
    from chat_orchestrator.channels.webhook_http import HttpReply as _Reply


class WebhookApp(Protocol):
    """What the ASGI glue needs of a bot (WhatsAppBot, TelegramBot)."""

    @property
    def max_body_bytes(self) -> int: ...

    def _refused(self, exc: WebhookError) -> _Reply: ...

    async def respond_async(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply: ...


__all__ = ["WebhookASGI", "WhatsAppASGI"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ClientGoneError(Exception):
    """The client disconnected before its body was complete: there is no one to answer."""


#: Seconds a client may take to send its whole body (the WSGI example's REQUEST_TIMEOUT).
BODY_TIMEOUT = 10.0


class WebhookASGI:
    """``bot.asgi``: an ASGI 3 app serving ``bot`` (shares its ``failures``, ``turns``).

    The same class serves a WhatsAppBot and a TelegramBot: all it asks of the bot is its body
    limit and ``respond_async``.

    ``body_timeout``: a client that stops sending mid-body is answered 408 after this many
    seconds, rather than holding a task for ever (ASGI servers set no such limit themselves).
    Runs on asyncio (uvicorn; FastAPI or Starlette mount it).
    """

    def __init__(self, bot: WebhookApp, *, body_timeout: float = BODY_TIMEOUT) -> None:
        self.bot = bot
        self.body_timeout = body_timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bot!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # a websocket: refuse the handshake (403), nothing else
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = _headers(scope.get("headers", ()))
        method = str(scope.get("method", "GET"))
        try:
            length = admit(method, headers, self.bot.max_body_bytes)
            body = await self._read_body(receive, length) if length else b""
        except WebhookError as exc:
            reply = self.bot._refused(exc)
        except _ClientGoneError:
            log.warning("webhook request abandoned: the client left before its body was sent")
            return
        else:
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            reply = await self.bot.respond_async(method, query, headers, body)
        await _answer(send, reply)

    async def _read_body(self, receive: Receive, length: int) -> bytes:
        buffer = BodyBuffer(length)
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGoneError
                    buffer.feed(bytes(message.get("body", b"")))  # past the length: 400, stop
                    if not message.get("more_body", False):
                        return buffer.finish()
        except TimeoutError:
            raise body_timed_out() from None


#: The WhatsApp bot's ASGI app: the shared class under the name it was published with.
WhatsAppASGI = WebhookASGI


def _headers(raw: Any) -> dict[str, str]:
    """Lower-case names to latin-1 text, as WSGI sees them; a repeated header is joined.

    Joined rather than last-wins: two Content-Lengths become "5, 7", which ``admit`` refuses,
    and two signatures never match.
    """
    out: dict[str, str] = {}
    for name, value in raw:
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


async def _answer(send: Send, reply: HttpReply) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in reply.headers()],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the bot holds nothing to open or close itself."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
