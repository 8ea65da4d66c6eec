"""A real uvicorn server on a free 127.0.0.1 port, in a thread (tests and bench)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn


class UvicornThread:
    """``UvicornThread(app).start()`` serves ``app`` until ``stop()``; ``port`` is its port."""

    def __init__(self, app: Any, *, lifespan: Literal["auto", "on", "off"] = "on") -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it uvicorn's two writes (head, body) meet delayed ACKs: 40 ms a request.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # bound here, so the port is known before serving
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> UvicornThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()
