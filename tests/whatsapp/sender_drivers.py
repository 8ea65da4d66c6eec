"""Both WhatsApp senders behind one blocking interface, so every sender test runs on both.

The async sender runs on a real event loop in a thread (an anyio blocking portal), over real
sockets; the tests call it like the sync one and see the same results and exceptions.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.from_thread import BlockingPortal

from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender

FLAVORS = ["sync", "async"]


class Driven(Protocol):
    @property
    def phone_number_id(self) -> str: ...

    def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str: ...

    def send_template(
        self,
        chat_id: str,
        name: str,
        language: str = "en_US",
        components: Sequence[Mapping[str, Any]] | None = None,
    ) -> str: ...

    def mark_as_read(self, message_id: str, *, typing: bool = False) -> None: ...

    def close(self) -> None: ...


class AsyncDriven:
    """An AsyncWhatsAppSender whose coroutines run on the portal's event loop."""

    def __init__(self, sender: AsyncWhatsAppSender, portal: BlockingPortal) -> None:
        self.sender = sender
        self._portal = portal

    @property
    def phone_number_id(self) -> str:
        return self.sender.phone_number_id

    def __repr__(self) -> str:
        return repr(self.sender)

    def send_message(
        self, chat_id: str, text: str, options: Mapping[str, Any] | None = None
    ) -> str:
        message_id: str = self._portal.call(self.sender.send_message, chat_id, text, options)
        return message_id

    def send_template(
        self,
        chat_id: str,
        name: str,
        language: str = "en_US",
        components: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        call = functools.partial(self.sender.send_template, chat_id, name, language, components)
        message_id: str = self._portal.call(call)
        return message_id

    def mark_as_read(self, message_id: str, *, typing: bool = False) -> None:
        self._portal.call(functools.partial(self.sender.mark_as_read, message_id, typing=typing))

    def close(self) -> None:
        self._portal.call(self.sender.aclose)


class MakeSender(Protocol):
    """The ``make`` fixture: a sender of the test's flavor aimed at the stand-in."""

    def __call__(self, delays: list[float] | None = None, **kw: Any) -> Driven: ...


@dataclass
class SenderFactory:
    """Makes senders of one flavor; ``delays`` records every retry wait instead of sleeping."""

    flavor: str
    portal: BlockingPortal
    made: list[Driven] = field(default_factory=list)

    def __call__(
        self,
        token: str,
        phone_number_id: str,
        base_url: str,
        delays: list[float] | None = None,
        **kw: Any,
    ) -> Driven:
        sink = delays if delays is not None else []
        sender: Driven
        if self.flavor == "sync":
            sender = WhatsAppSender(
                token, phone_number_id, base_url=base_url, sleep=sink.append, **kw
            )
        else:

            async def record(delay: float) -> None:
                sink.append(delay)

            sender = AsyncDriven(
                AsyncWhatsAppSender(token, phone_number_id, base_url=base_url, sleep=record, **kw),
                self.portal,
            )
        self.made.append(sender)
        return sender


@dataclass
class SilentServer:
    """Accepts connections and reads requests; answers nothing, or hangs up after reading."""

    hang_up: bool = False
    connections: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def serving(self) -> Iterator[str]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        open_sockets: list[socket.socket] = []

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                self.connections += 1
                _read_request(conn)  # the request arrived: from here it may have been delivered
                if self.hang_up:
                    conn.close()
                else:
                    open_sockets.append(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            self._stop.set()
            thread.join()
            for conn in open_sockets:
                conn.close()
            listener.close()


def _read_request(conn: socket.socket) -> None:
    """Read one whole request, so a hang-up is a clean FIN and not a reset of unread bytes."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
