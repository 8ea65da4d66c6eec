"""WhatsApp Cloud API sender: text, reply buttons, lists, templates, read receipts.

Retries: errors whose ``code`` is retryable (throughput, rate limits, transient server errors)
are retried with bounded exponential backoff (4^n s for the pair rate limit 131056); request,
token and recipient errors (190, 100, 131008, 131009, 131026, 131047, 131050...) never are.
A connection that could not be opened is retried (nothing was sent). A timeout or a dropped
connection *after* the request went out raises SenderTimeoutError and is not retried: the Cloud
API has no idempotency key, so a retry could deliver the message twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chat_orchestrator.errors import (
    MissingDependencyError,
    SenderError,
    SenderTimeoutError,
    WhatsAppAPIError,
)
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.whatsapp_errors import PAIR_RATE_LIMIT, api_error
from chat_orchestrator.senders.whatsapp_payloads import (
    build_message,
    build_read_receipt,
    build_template,
)

try:
    import requests
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("requests", "whatsapp") from exc

__all__ = ["WhatsAppSender"]

log = logging.getLogger(__name__)


class WhatsAppSender(MessageSender):
    """Sends through ``POST {base_url}/{api_version}/{phone_number_id}/messages``.

    ``send_message(chat_id, text, options)`` options: ``buttons`` (up to 3 ``{"id", "title"}``
    or plain titles), ``list`` (``{"button": label, "sections": [{"title", "rows": [{"id",
    "title", "description"}]}]}``), ``header``/``footer`` (with buttons or a list),
    ``preview_url`` (bool), ``reply_to`` (a wamid to quote), ``callback_data`` (echoed in status
    webhooks). Every send returns the WhatsApp message id.
    """

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        api_version: str = "v25.0",
        base_url: str = "https://graph.facebook.com",
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5.0, 20.0),
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not access_token or not phone_number_id:
            raise ValueError("access_token and phone_number_id are required")
        self._token = access_token
        self.phone_number_id = str(phone_number_id)
        self.url = f"{base_url.rstrip('/')}/{api_version}/{self.phone_number_id}/messages"
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep

    def __repr__(self) -> str:  # the token never appears
        return f"WhatsAppSender(phone_number_id={self.phone_number_id!r}, url={self.url!r})"

    # -- sending ----------------------------------------------------------------------------
    def send_message(self, chat_id: str, text: str, options: dict[str, Any] | None = None) -> str:
        return self._message_id(self._post(build_message(chat_id, text, options)))

    def send_template(
        self,
        chat_id: str,
        name: str,
        language: str = "en_US",
        components: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Send an approved template (the only kind allowed outside the 24 h window)."""
        return self._message_id(self._post(build_template(chat_id, name, language, components)))

    def mark_as_read(self, message_id: str, *, typing: bool = False) -> None:
        """Mark an inbound message (and the ones before it) read; optionally show typing."""
        reply = self._post(build_read_receipt(message_id, typing=typing))
        if reply.get("success") is not True:
            raise SenderError(f"mark-as-read of {message_id!r} was not confirmed: {reply!r}")

    # -- HTTP -------------------------------------------------------------------------------
    def _message_id(self, reply: dict[str, Any]) -> str:
        try:
            message_id = reply["messages"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise SenderError(f"the WhatsApp API answer has no message id: {reply!r}") from None
        if not isinstance(message_id, str):
            raise SenderError(f"the WhatsApp API answer has no message id: {reply!r}")
        return message_id

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}"}
        attempt = 0
        while True:
            try:
                response = self._session.post(
                    self.url, json=body, headers=headers, timeout=self._timeout
                )
            except requests.ConnectionError as exc:
                if _not_sent(exc) and attempt < self._max_retries:
                    self._wait(attempt, None, "could not connect")
                    attempt += 1
                    continue
                if _not_sent(exc):
                    raise SenderError(f"cannot reach the WhatsApp API at {self.url}") from None
                raise SenderTimeoutError(
                    f"the connection to {self.url} failed after the request was sent: the "
                    "message may or may not have been delivered (not retried)"
                ) from None
            except requests.Timeout:
                raise SenderTimeoutError(
                    f"no answer from {self.url} within {self._timeout} s: the message may or "
                    "may not have been delivered (not retried)"
                ) from None
            if response.status_code == 200:
                try:
                    reply = response.json()
                except ValueError:
                    raise SenderError("the WhatsApp API answered 200 without JSON") from None
                if not isinstance(reply, dict):
                    raise SenderError("the WhatsApp API answered 200 with a non-object body")
                return reply
            error = self._error(response)
            if attempt >= self._max_retries or not error.retryable:
                raise error
            self._wait(attempt, error.code, f"error {error.code} (HTTP {error.http_status})")
            attempt += 1

    @staticmethod
    def _error(response: requests.Response) -> WhatsAppAPIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        return api_error(response.status_code, body)

    def _wait(self, attempt: int, code: int | None, why: str) -> None:
        # Meta prescribes 4^n seconds for the pair rate limit; elsewhere plain doubling.
        pair = code == PAIR_RATE_LIMIT
        delay = min(float(4**attempt) if pair else self._backoff * 2**attempt, self._max_backoff)
        log.warning("WhatsApp send: %s; retry %d in %.2f s", why, attempt + 1, delay)
        self._sleep(delay)


def _not_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection was never opened, so the request cannot have been delivered."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)
    return type(inner).__name__ in {"NewConnectionError", "NameResolutionError"}
