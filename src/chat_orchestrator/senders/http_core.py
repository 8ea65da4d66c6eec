"""What every HTTP sender decides without I/O: one call's bytes, what an answer means, retries.

A provider's API (``whatsapp_core.GraphAPI``, ``telegram_core.BotAPI``) turns a send into an
:class:`HttpCall` (URL, headers, JSON bytes, built and checked against the provider's limits
before any HTTP). A driver (``http_drivers``) performs the request and feeds the call what
happened: :meth:`HttpCall.answered` with the status and body, or :meth:`HttpCall.failed` with
the transport exception. The call returns the result, a :class:`Retry` (sleep that long, then
send the same bytes again), or raises a SenderError whose ``permanent`` and ``retry_after``
say what a delivery loop should do. What differs between providers (the error bodies, their
classification, how success is wrapped) is a small :class:`Flavour`.

A connection that could not be opened is retried (nothing was sent). A timeout or a dropped
connection *after* the request went out raises SenderTimeoutError and is not retried: neither
WhatsApp nor Telegram has an idempotency key, so a retry could deliver the message twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from chat_orchestrator.errors import (
    InvalidMessageError,
    MissingDependencyError,
    SenderError,
    SenderTimeoutError,
)

# The one guard for the extra: every driver takes httpx from here (``import httpx as httpx``
# marks the re-export for mypy), so a missing httpx is always our MissingDependencyError.
try:
    import httpx as httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("httpx", "whatsapp") from exc

__all__ = [
    "Flavour",
    "HttpCall",
    "Retry",
    "RetryPolicy",
    "Timeout",
    "brief",
    "make_timeout",
    "parse_json",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds for every phase, ``(connect, read)`` as requests spelled it, or an ``httpx.Timeout``.
Timeout = float | tuple[float, float] | httpx.Timeout

# Failures before a single byte of the request left: the message cannot have been delivered.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Failures that a retry only repeats (a malformed request, an unsupported scheme).
_NEVER_SENDABLE = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)


def make_timeout(timeout: Timeout) -> httpx.Timeout:
    """An ``httpx.Timeout``; a ``(connect, read)`` pair bounds write and pool waits like read."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, tuple):
        connect, read = timeout
        return httpx.Timeout(read, connect=connect)
    return httpx.Timeout(timeout)


@dataclass(frozen=True, slots=True)
class Retry:
    """The driver should sleep ``delay`` seconds, then send the same request again."""

    delay: float


#: WhatsApp's pair rate limit: Meta prescribes waiting 4^n seconds.
_PAIR_RATE_LIMIT = 131056


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait before resending; retryability itself is the error's."""

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("max_retries, backoff and max_backoff must not be negative")

    def delay(self, attempt: int, code: int | None = None) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (0-based), or None: give up."""
        if attempt >= self.max_retries:
            return None
        # Meta prescribes 4^n seconds for the pair rate limit; elsewhere plain doubling.
        wait = float(4**attempt) if code == _PAIR_RATE_LIMIT else self.backoff * 2**attempt
        return min(wait, self.max_backoff)


class Flavour(Protocol):
    """What one provider's answers mean; everything else about a call is shared."""

    #: "the WhatsApp API", "the Telegram Bot API": how messages name the far end.
    service: str

    def result(self, reply: Any) -> Any:
        """The payload of a 200 answer (``reply`` is its JSON, or None); SenderError if bad."""
        ...

    def error(self, status: int, body: Any) -> SenderError:
        """The classified error for a non-200 answer (``body``: its JSON, or None)."""
        ...

    def delay(self, policy: RetryPolicy, attempt: int, error: SenderError) -> float | None:
        """Seconds before resending after a transient ``error``, or None: give up."""
        ...


class HttpCall(Generic[T]):
    """One API call: the request to send, and the reading of each attempt's outcome.

    ``url`` is what the driver requests; ``shown_url`` is what messages print (Telegram's URL
    holds the bot token, so its calls show a redacted one).
    """

    __slots__ = (
        "_attempt",
        "_finish",
        "_flavour",
        "_policy",
        "content",
        "headers",
        "shown_url",
        "timeout",
        "url",
    )

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        finish: Callable[[Any], T],
        policy: RetryPolicy,
        timeout: httpx.Timeout,
        flavour: Flavour,
        shown_url: str | None = None,
    ) -> None:
        self.url = url
        self.shown_url = url if shown_url is None else shown_url
        self.headers = headers
        try:  # encoded once: every retry resends exactly these bytes
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:  # template components are the caller's data
            raise InvalidMessageError(f"the message is not plain JSON: {exc}") from exc
        self.content = text.encode()
        self.timeout = timeout
        self._finish = finish
        self._policy = policy
        self._flavour = flavour
        self._attempt = 0

    def __repr__(self) -> str:  # never the real URL: it may hold a token
        return f"HttpCall({self.shown_url!r})"

    def answered(self, status: int, content: bytes) -> T | Retry:
        """The server answered: the result, a Retry, or a SenderError (classified)."""
        if status == 200:
            return self._finish(self._flavour.result(parse_json(content)))
        error = self._flavour.error(status, parse_json(content))
        if not error.permanent:
            delay = self._flavour.delay(self._policy, self._attempt, error)
            if delay is not None:
                return self._retry(delay, f"{error} (HTTP {status})")
        raise error

    def failed(self, exc: httpx.RequestError) -> Retry:
        """The transport failed: a Retry when nothing can have been sent, else our error."""
        where = self.shown_url
        if isinstance(exc, _NOT_SENT):
            delay = self._policy.delay(self._attempt)
            if delay is not None:
                return self._retry(delay, f"could not connect ({type(exc).__name__})")
            raise SenderError(f"cannot reach {self._flavour.service} at {where}") from exc
        if isinstance(exc, _NEVER_SENDABLE):
            raise SenderError(
                f"the request to {where} cannot be sent ({type(exc).__name__})", permanent=True
            ) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise SenderTimeoutError(
                f"no answer from {where} within {self.timeout.read} s: the message may or "
                "may not have been delivered (not retried)"
            ) from exc
        raise SenderTimeoutError(
            f"the connection to {where} failed after the request was sent "
            f"({type(exc).__name__}): the message may or may not have been delivered "
            "(not retried)"
        ) from exc

    def _retry(self, delay: float, why: str) -> Retry:
        self._attempt += 1
        log.warning(
            "%s: %s; retry %d in %.2f s", self._flavour.service, why[:300], self._attempt, delay
        )
        return Retry(delay)


def parse_json(content: bytes) -> Any:
    """The answer's JSON, or None. RecursionError too: a body nested 100,000 deep (a broken
    proxy, a hostile base_url) must be our error, not the interpreter's."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def brief(reply: object, limit: int = 300) -> str:
    """The start of an answer's repr: an answer may be megabytes, and it goes into messages."""
    text = repr(reply)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
