"""The WhatsApp sender's decisions, without I/O: what to send, what an answer means, when to retry.

:class:`GraphAPI` turns a send into a :class:`GraphCall` (URL, headers, JSON bytes, built and
checked against Meta's limits before any HTTP). A driver performs the request and feeds the call
what happened: :meth:`GraphCall.answered` with the status and body, or :meth:`GraphCall.failed`
with the transport exception. The call returns the result, a :class:`Retry` (sleep that long,
then send the same bytes again), or raises our error. ``WhatsAppSender`` (sync) and
``AsyncWhatsAppSender`` (async) are the two drivers; they only do the I/O and the sleeping.

Retries: errors whose ``code`` is retryable (throughput, rate limits, transient server errors)
are retried with bounded exponential backoff (4^n s for the pair rate limit 131056); request,
token and recipient errors (190, 100, 131008, 131009, 131026, 131047, 131050...) never are.
A connection that could not be opened is retried (nothing was sent). A timeout or a dropped
connection *after* the request went out raises SenderTimeoutError and is not retried: the Cloud
API has no idempotency key, so a retry could deliver the message twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chat_orchestrator.errors import (
    InvalidMessageError,
    MissingDependencyError,
    SenderError,
    SenderTimeoutError,
)
from chat_orchestrator.senders.whatsapp_errors import PAIR_RATE_LIMIT, api_error
from chat_orchestrator.senders.whatsapp_payloads import (
    build_message,
    build_read_receipt,
    build_template,
)

# The one guard for the extra: both drivers take httpx from here (``import httpx as httpx`` marks
# the re-export for mypy), so a missing httpx is always our MissingDependencyError.
try:
    import httpx as httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("httpx", "whatsapp") from exc

__all__ = ["GraphAPI", "GraphCall", "Retry", "RetryPolicy", "Timeout", "make_timeout"]

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
        wait = float(4**attempt) if code == PAIR_RATE_LIMIT else self.backoff * 2**attempt
        return min(wait, self.max_backoff)


class GraphCall(Generic[T]):
    """One API call: the request to send, and the reading of each attempt's outcome."""

    __slots__ = ("_attempt", "_finish", "_policy", "content", "headers", "timeout", "url")

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        finish: Callable[[dict[str, Any]], T],
        policy: RetryPolicy,
        timeout: httpx.Timeout,
    ) -> None:
        self.url = url
        self.headers = headers
        try:  # encoded once: every retry resends exactly these bytes
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:  # template components are the caller's data
            raise InvalidMessageError(f"the message is not plain JSON: {exc}") from exc
        self.content = text.encode()
        self.timeout = timeout
        self._finish = finish
        self._policy = policy
        self._attempt = 0

    def answered(self, status: int, content: bytes) -> T | Retry:
        """The server answered: the result, a Retry, or a WhatsAppAPIError/SenderError."""
        if status == 200:
            reply = _parse(content)
            if reply is None:
                raise SenderError("the WhatsApp API answered 200 without JSON")
            if not isinstance(reply, dict):
                raise SenderError("the WhatsApp API answered 200 with a non-object body")
            return self._finish(reply)
        error = api_error(status, _parse(content))
        if error.retryable:
            retry = self._retry(error.code, f"error {error.code} (HTTP {status})")
            if retry is not None:
                return retry
        raise error

    def failed(self, exc: httpx.RequestError) -> Retry:
        """The transport failed: a Retry when nothing can have been sent, else our error."""
        if isinstance(exc, _NOT_SENT):
            retry = self._retry(None, f"could not connect ({type(exc).__name__})")
            if retry is not None:
                return retry
            raise SenderError(f"cannot reach the WhatsApp API at {self.url}") from exc
        if isinstance(exc, _NEVER_SENDABLE):
            raise SenderError(f"the request to {self.url} cannot be sent: {exc}") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise SenderTimeoutError(
                f"no answer from {self.url} within {self.timeout.read} s: the message may or "
                "may not have been delivered (not retried)"
            ) from exc
        raise SenderTimeoutError(
            f"the connection to {self.url} failed after the request was sent "
            f"({type(exc).__name__}): the message may or may not have been delivered "
            "(not retried)"
        ) from exc

    def _retry(self, code: int | None, why: str) -> Retry | None:
        delay = self._policy.delay(self._attempt, code)
        if delay is None:
            return None
        self._attempt += 1
        log.warning("WhatsApp send: %s; retry %d in %.2f s", why, self._attempt, delay)
        return Retry(delay)


class GraphAPI:
    """Everything both senders share: the endpoint, the credentials, the limits, the policy."""

    __slots__ = ("_headers", "phone_number_id", "retry_policy", "timeout", "url")

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        api_version: str,
        base_url: str,
        timeout: Timeout,
        retry_policy: RetryPolicy,
    ) -> None:
        if not access_token or not phone_number_id:
            raise ValueError("access_token and phone_number_id are required")
        self.phone_number_id = str(phone_number_id)
        self.url = f"{base_url.rstrip('/')}/{api_version}/{self.phone_number_id}/messages"
        try:
            scheme = httpx.URL(self.url).scheme
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url {base_url!r} is not a valid URL") from exc
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url {base_url!r} must be an http:// or https:// URL")
        # Only the headers mapping holds the token; no repr or message prints it.
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Content-Type": "application/json",
        }
        self.timeout = make_timeout(timeout)
        self.retry_policy = retry_policy

    def __repr__(self) -> str:
        return f"GraphAPI(phone_number_id={self.phone_number_id!r}, url={self.url!r})"

    def message(self, chat_id: str, text: str, options: Mapping[str, Any] | None) -> GraphCall[str]:
        return self._call(build_message(chat_id, text, options), _message_id)

    def template(
        self,
        chat_id: str,
        name: str,
        language: str,
        components: Sequence[Mapping[str, Any]] | None,
    ) -> GraphCall[str]:
        return self._call(build_template(chat_id, name, language, components), _message_id)

    def read_receipt(self, message_id: str, *, typing: bool) -> GraphCall[None]:
        def confirmed(reply: dict[str, Any]) -> None:
            if reply.get("success") is not True:
                raise SenderError(
                    f"mark-as-read of {message_id!r} was not confirmed: {_brief(reply)}"
                )

        return self._call(build_read_receipt(message_id, typing=typing), confirmed)

    def _call(self, body: dict[str, Any], finish: Callable[[dict[str, Any]], T]) -> GraphCall[T]:
        return GraphCall(self.url, self._headers, body, finish, self.retry_policy, self.timeout)


def _parse(content: bytes) -> Any:
    """The answer's JSON, or None. RecursionError too: a body nested 100,000 deep (a broken
    proxy, a hostile base_url) must be our error, not the interpreter's."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def _brief(reply: object, limit: int = 300) -> str:
    # An answer may be megabytes; an error message (and its log line) quotes only its start.
    text = repr(reply)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _message_id(reply: dict[str, Any]) -> str:
    messages = reply.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    message_id = first.get("id") if isinstance(first, dict) else None
    if not isinstance(message_id, str):
        raise SenderError(f"the WhatsApp API answer has no message id: {_brief(reply)}")
    return message_id
