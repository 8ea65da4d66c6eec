"""HTTP decisions for a webhook endpoint, free of any server framework.

WSGI (``WhatsAppBot.__call__``) and ASGI (``WhatsAppASGI``) ask the same questions here: is
the method allowed, how many body bytes may be read (never more than the limit), is the body
complete, and what the answer looks like. Every refusal is a WebhookError carrying its HTTP
status, so a hostile request gets a clean 4xx and never an exception escaping the app (a 500
Meta retries for days).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chat_orchestrator.errors import WebhookError

__all__ = [
    "ALLOWED_METHODS",
    "BodyBuffer",
    "HttpReply",
    "admit",
    "body_timed_out",
    "read_body",
    "reply_for_error",
]

#: What the webhook answers; a 405 names them in its ``Allow`` header (RFC 9110, 15.5.6).
ALLOWED_METHODS = ("GET", "POST")
_DECIMAL = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() would accept "²"
_CHUNK = 65536
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A plain-text answer: status, body text, and the headers that go with it."""

    status: int
    text: str

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Error")

    @property
    def body(self) -> bytes:
        return self.text.encode("utf-8")

    def headers(self) -> list[tuple[str, str]]:
        out = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(self.body))),
        ]
        if self.status == 405:
            out.append(("Allow", ", ".join(ALLOWED_METHODS)))
        return out


def reply_for_error(exc: WebhookError) -> HttpReply:
    return HttpReply(exc.status, str(exc))


def admit(method: str, headers: Mapping[str, str], limit: int) -> int:
    """How many body bytes to read for this request (0 for GET), or WebhookError.

    ``headers`` maps lower-case header names to values. A POST needs a decimal Content-Length
    of at most ``limit``; a chunked body without one is 411, since the signature must be checked
    over bytes we were allowed to count; both headers at once is 400 (request smuggling).
    """
    if method not in ALLOWED_METHODS:
        raise WebhookError(f"method {method[:16]!r} not allowed", status=405)
    if method == "GET":
        return 0
    declared = headers.get("content-length")
    chunked = headers.get("transfer-encoding")
    if chunked and declared:
        raise WebhookError("both Transfer-Encoding and Content-Length", status=400)
    if chunked:
        raise WebhookError("a Content-Length is required (chunked bodies are refused)", status=411)
    if declared is None or declared == "":
        return 0  # HTTP/1.1: no length and no chunking means an empty body
    if not _DECIMAL.fullmatch(declared.strip()):
        if declared.strip().isascii() and declared.strip().isdigit():
            raise WebhookError(f"body over {limit} bytes", status=413)
        raise WebhookError("Content-Length must be a decimal number of bytes", status=400)
    length = int(declared)
    if length > limit:
        raise WebhookError(f"body over {limit} bytes", status=413)
    return length


class BodyBuffer:
    """Collects an admitted body chunk by chunk, whatever the server hands over at a time.

    ``wanted`` is how many bytes are still due; a chunk that overshoots the Content-Length is
    400 and is dropped at once, so at most ``length + chunk`` bytes are ever held (WSGI never
    asks for more than ``wanted``; ASGI stops receiving at the first byte too many).
    """

    __slots__ = ("_length", "_parts", "_received")

    def __init__(self, length: int) -> None:
        self._length = length
        self._parts: list[bytes] = []
        self._received = 0

    @property
    def wanted(self) -> int:
        return self._length - self._received

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._length:
            self._parts.clear()
            raise WebhookError("the body is longer than its Content-Length", status=400)
        self._parts.append(chunk)

    def finish(self) -> bytes:
        """The whole body, or 400 when the client stopped short of its Content-Length."""
        if self._received < self._length:
            raise WebhookError("the body is shorter than its Content-Length", status=400)
        return b"".join(self._parts)


def body_timed_out() -> WebhookError:
    """The 408 for a client that stopped sending its body (socket timeout, ASGI deadline)."""
    return WebhookError("the client stopped sending its body", status=408)


def read_body(read: Callable[[int], bytes], length: int) -> bytes:
    """Exactly ``length`` bytes from ``read``, in bounded chunks; a short body is 400.

    Never asks for more than ``length`` (already checked against the limit by ``admit``), so a
    lying client cannot make us buffer past it. A socket timeout (a client that stops sending)
    is 408, not a thread stuck forever.
    """
    buffer = BodyBuffer(length)
    while buffer.wanted > 0:
        try:
            chunk = read(min(buffer.wanted, _CHUNK))
        except TimeoutError:
            raise body_timed_out() from None
        except OSError as exc:
            raise WebhookError(f"the body could not be read: {exc}", status=400) from exc
        if not chunk:
            break
        buffer.feed(chunk)
    return buffer.finish()
