"""The WhatsApp sender's decisions, without I/O: what to send, what an answer means, when to retry.

:class:`GraphAPI` turns a send into a :class:`GraphCall` (an ``http_core.HttpCall``: URL,
headers, JSON bytes, built and checked against Meta's limits before any HTTP). The drivers
(``WhatsAppSender``, ``AsyncWhatsAppSender``, on ``http_drivers``) only do the I/O and the
sleeping; the shared core decides what each outcome means.

Retries: errors whose ``code`` is retryable (throughput, rate limits, transient server errors)
are retried with bounded exponential backoff (4^n s for the pair rate limit 131056); request,
token and recipient errors (190, 100, 131008, 131009, 131026, 131047, 131050...) never are.
A connection that could not be opened is retried (nothing was sent). A timeout or a dropped
connection *after* the request went out raises SenderTimeoutError and is not retried: the Cloud
API has no idempotency key, so a retry could deliver the message twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from chat_orchestrator.errors import SenderError, WhatsAppAPIError
from chat_orchestrator.senders.http_core import (
    HttpCall,
    Retry,
    RetryPolicy,
    Timeout,
    brief,
    httpx,
    make_timeout,
)
from chat_orchestrator.senders.whatsapp_errors import api_error
from chat_orchestrator.senders.whatsapp_payloads import (
    build_message,
    build_read_receipt,
    build_template,
)

__all__ = [
    "GraphAPI",
    "GraphCall",
    "GraphFlavour",
    "Retry",
    "RetryPolicy",
    "Timeout",
    "httpx",
    "make_timeout",
]

T = TypeVar("T")

#: A Graph API call (kept under its old name: tests and benches build them).
GraphCall = HttpCall


class GraphFlavour:
    """What Graph API answers mean (``http_core.Flavour``)."""

    service = "the WhatsApp API"

    def result(self, reply: Any) -> Any:
        if reply is None:
            raise SenderError("the WhatsApp API answered 200 without JSON")
        if not isinstance(reply, dict):
            raise SenderError("the WhatsApp API answered 200 with a non-object body")
        return reply

    def error(self, status: int, body: Any) -> WhatsAppAPIError:
        return api_error(status, body)

    def delay(self, policy: RetryPolicy, attempt: int, error: SenderError) -> float | None:
        return policy.delay(attempt, getattr(error, "code", None))


_FLAVOUR = GraphFlavour()


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
                    f"mark-as-read of {message_id!r} was not confirmed: {brief(reply)}"
                )

        return self._call(build_read_receipt(message_id, typing=typing), confirmed)

    def _call(self, body: dict[str, Any], finish: Callable[[Any], T]) -> GraphCall[T]:
        return GraphCall(
            self.url, self._headers, body, finish, self.retry_policy, self.timeout, _FLAVOUR
        )


def _message_id(reply: dict[str, Any]) -> str:
    messages = reply.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    message_id = first.get("id") if isinstance(first, dict) else None
    if not isinstance(message_id, str):
        raise SenderError(f"the WhatsApp API answer has no message id: {brief(reply)}")
    return message_id
