"""Drive a console program as a user at a terminal would: through a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["Terminal", "read_until"]


def read_until(
    fd: int, wanted: bytes, *, timeout: float = 30, seen: bytearray | None = None, start: int = 0
) -> bytes:
    """Read ``fd`` until ``wanted`` is in ``seen[start:]``; returns all read. Fails on timeout."""
    buffer = seen if seen is not None else bytearray()
    deadline = time.monotonic() + timeout
    while wanted not in buffer[start:]:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {wanted[:80]!r}; got {bytes(buffer[-300:])!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"closed while waiting for {wanted[:80]!r}; got {bytes(buffer[-300:])!r}"
            buffer += chunk
    return bytes(buffer)


class Terminal:
    """Runs ``command`` on a pty (stdin, stdout and stderr), with TERM=xterm."""

    def __init__(self, command: list[str], *, cwd: Path) -> None:
        self._master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "80", "LINES": "24"}
        self._proc = subprocess.Popen(
            command, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True
        )
        os.close(slave)
        self.output = bytearray()
        self._mark = 0

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        os.close(self._master)

    def expect(self, wanted: bytes) -> None:
        """Wait for ``wanted`` in what the program wrote after the last match."""
        read_until(self._master, wanted, seen=self.output, start=self._mark)
        self._mark = self.output.index(wanted, self._mark) + len(wanted)

    def type(self, keys: bytes) -> None:
        """Send keys in small pieces, draining the echo so neither side's buffer fills up."""
        for i in range(0, len(keys), 256):
            os.write(self._master, keys[i : i + 256])
            self._drain()

    def _drain(self) -> None:
        while select.select([self._master], [], [], 0.01)[0]:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def wait(self) -> int:
        deadline = time.monotonic() + 30
        while self._proc.poll() is None and time.monotonic() < deadline:
            self._drain()
        return self._proc.wait(timeout=1)
