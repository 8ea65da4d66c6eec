"""The Telegram sender's decisions, without I/O: the Bot API's calls, answers and errors.

:class:`BotAPI` turns each method into an ``http_core.HttpCall`` (``POST
{base_url}/bot<token>/<method>`` with a JSON body); ``TelegramSender`` and
``AsyncTelegramSender`` drive it. Classification (``TelegramFlavour``) of the documented
error body ``{"ok": false, "error_code", "description", "parameters": {"retry_after",
"migrate_to_chat_id"}}``: 429 is transient and waits ``parameters.retry_after``; 400, 401,
403 (blocked), 404 and 409 are permanent; 5xx and answers that are not Bot API JSON with a 5xx
status are transient. Retries honour ``retry_after`` (up to ``max_backoff``: a longer wait is
handed to the caller in the error, for the delivery loop to schedule).

The token is part of every URL. It is kept only in the call's URL: reprs and messages show
``bot<token>``, and the ``httpx`` logger (which logs every request URL at INFO) gets a filter
that replaces each registered token before a record is formatted.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from chat_orchestrator.errors import SenderError, TelegramAPIError
from chat_orchestrator.senders.http_core import (
    HttpCall,
    RetryPolicy,
    Timeout,
    brief,
    httpx,
    make_timeout,
)
from chat_orchestrator.senders.telegram_payloads import (
    CallbackIds,
    build_chat_action,
    build_message,
)

__all__ = ["BotAPI", "TelegramFlavour", "redact_token"]

T = TypeVar("T")

_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,200}")
_PERMANENT = frozenset({400, 401, 403, 404, 409})
_MAX_TEXT = 1_000
_TOKENS: set[str] = set()
_TOKENS_LOCK = threading.Lock()


def redact_token(text: str) -> str:
    """``text`` with every registered bot token replaced by ``<token>``."""
    for token in tuple(_TOKENS):
        if token in text:
            text = text.replace(token, "<token>")
    return text


class _RedactTokens(logging.Filter):
    """On the ``httpx`` logger: its INFO line quotes the request URL, which holds the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _TOKENS:
            message = record.getMessage()
            redacted = redact_token(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_FILTER = _RedactTokens()


def _register(token: str) -> None:
    with _TOKENS_LOCK:
        _TOKENS.add(token)
        logger = logging.getLogger("httpx")
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class TelegramFlavour:
    """What Bot API answers mean (``http_core.Flavour``)."""

    service = "the Telegram Bot API"

    def result(self, reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise SenderError("the Telegram Bot API answered 200 without a JSON object")
        if reply.get("ok") is not True:
            raise self.error(200, reply)
        return reply.get("result")

    def error(self, status: int, body: Any) -> TelegramAPIError:
        if not isinstance(body, dict) or body.get("ok") is not False:
            transient = status == 429 or status >= 500
            return TelegramAPIError(
                f"the Telegram Bot API answered HTTP {status} without a Bot API error body",
                http_status=status,
                error_code=None,
                permanent=not transient,
            )
        code = body.get("error_code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else status
        description = str(body.get("description") or "no description")[:_MAX_TEXT]
        parameters = body.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        wait = parameters.get("retry_after")
        retry_after = (
            float(wait)
            if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait < 1e6
            else None
        )
        migrate = parameters.get("migrate_to_chat_id")
        permanent = code in _PERMANENT or (400 <= code < 500 and code != 429)
        return TelegramAPIError(
            f"Telegram Bot API error {code}: {redact_token(description)}",
            http_status=status,
            error_code=code,
            description=description,
            retry_after=retry_after,
            migrate_to_chat_id=migrate if isinstance(migrate, int) else None,
            permanent=permanent,
        )

    def delay(self, policy: RetryPolicy, attempt: int, error: SenderError) -> float | None:
        if attempt >= policy.max_retries:
            return None
        if error.retry_after is not None:
            # Telegram names the wait; a longer one than we may sleep goes to the caller.
            return error.retry_after if error.retry_after <= policy.max_backoff else None
        return policy.delay(attempt)


_FLAVOUR = TelegramFlavour()
_HEADERS = {"Content-Type": "application/json"}


class BotAPI:
    """Everything both Telegram senders share: the endpoint, the token, the policy."""

    __slots__ = ("_base", "bot_id", "callback_ids", "retry_policy", "shown_base", "timeout")

    def __init__(
        self,
        token: str,
        *,
        base_url: str,
        timeout: Timeout,
        retry_policy: RetryPolicy,
        callback_ids: CallbackIds | None,
    ) -> None:
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            # The token itself is never quoted, not even a wrong one.
            raise ValueError("token must be a Bot API token from @BotFather (<bot id>:<secret>)")
        try:
            scheme = httpx.URL(base_url).scheme
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url {base_url!r} is not a valid URL") from exc
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url {base_url!r} must be an http:// or https:// URL")
        _register(token)
        root = base_url.rstrip("/")
        self._base = f"{root}/bot{token}/"
        self.shown_base = f"{root}/bot<token>/"
        self.bot_id = token.partition(":")[0]
        self.timeout = make_timeout(timeout)
        self.retry_policy = retry_policy
        self.callback_ids = callback_ids

    def __repr__(self) -> str:
        return f"BotAPI(bot_id={self.bot_id!r}, url={self.shown_base!r})"

    def call(
        self,
        method: str,
        body: Mapping[str, Any],
        finish: Callable[[Any], T],
        timeout: httpx.Timeout | None = None,
    ) -> HttpCall[T]:
        return HttpCall(
            self._base + method,
            _HEADERS,
            body,
            finish,
            self.retry_policy,
            timeout or self.timeout,
            _FLAVOUR,
            shown_url=self.shown_base + method,
        )

    def message(self, chat_id: str, text: str, options: Mapping[str, Any] | None) -> HttpCall[str]:
        method, body = build_message(chat_id, text, options, self.callback_ids)
        return self.call(method, body, _message_id)

    def chat_action(self, chat_id: str, action: str) -> HttpCall[bool]:
        return self.call("sendChatAction", build_chat_action(chat_id, action), _true)

    def answer_callback(self, callback_query_id: str, text: str | None) -> HttpCall[bool]:
        body: dict[str, Any] = {"callback_query_id": callback_query_id}
        if text:
            body["text"] = text[:200]  # the Bot API's limit for the notification
        return self.call("answerCallbackQuery", body, _true)

    def get_updates(
        self, offset: int | None, timeout: int, allowed_updates: Sequence[str] | None, limit: int
    ) -> HttpCall[list[Any]]:
        body: dict[str, Any] = {"timeout": timeout, "limit": limit}
        if offset is not None:
            body["offset"] = offset
        if allowed_updates is not None:
            body["allowed_updates"] = list(allowed_updates)
        # The server holds the request up to ``timeout`` seconds: read a little longer.
        wait = httpx.Timeout(timeout + self.timeout.read if self.timeout.read else None)
        return self.call("getUpdates", body, _updates, wait)

    def set_webhook(
        self,
        url: str,
        secret_token: str | None,
        allowed_updates: Sequence[str] | None,
        drop_pending_updates: bool,
    ) -> HttpCall[bool]:
        body: dict[str, Any] = {"url": url, "drop_pending_updates": drop_pending_updates}
        if secret_token is not None:
            body["secret_token"] = secret_token
        if allowed_updates is not None:
            body["allowed_updates"] = list(allowed_updates)
        return self.call("setWebhook", body, _true)

    def delete_webhook(self, drop_pending_updates: bool) -> HttpCall[bool]:
        return self.call("deleteWebhook", {"drop_pending_updates": drop_pending_updates}, _true)

    def get_me(self) -> HttpCall[dict[str, Any]]:
        return self.call("getMe", {}, _object)


def _message_id(result: Any) -> str:
    message_id = result.get("message_id") if isinstance(result, dict) else None
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise SenderError(f"the Telegram Bot API answer has no message_id: {brief(result)}")
    return str(message_id)


def _true(result: Any) -> bool:
    if result is not True:
        raise SenderError(f"the Telegram Bot API did not confirm: {brief(result)}")
    return True


def _updates(result: Any) -> list[Any]:
    if not isinstance(result, list):
        raise SenderError(f"getUpdates answered no list: {brief(result)}")
    return result


def _object(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise SenderError(f"the Telegram Bot API answered no object: {brief(result)}")
    return result
