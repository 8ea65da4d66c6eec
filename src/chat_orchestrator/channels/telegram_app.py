"""A WSGI application (and ``bot.asgi``) that serves a bot on Telegram through a webhook.

* Every POST must carry ``X-Telegram-Bot-Api-Secret-Token`` equal to the ``secret_token`` given
  to ``setWebhook`` (compared in constant time): missing is 401, wrong is 403. Only POST is
  served (405 otherwise); bodies over ``max_body_bytes`` are 413; admission, body reading,
  claims, turns, the WSGI and ASGI glue and the drivers are the WhatsApp bot's too
  (``webhook_http``, ``whatsapp_asgi.WebhookASGI``, ``_bot.WebhookBot``).
* At most once: each update is claimed as ``tg:<bot id>:<update_id>`` in the state manager's
  claims for ``retention`` seconds (7 days) before its turn; Telegram redelivers on any
  non-2xx answer, so a duplicate is answered 200 and not run again.
* A failing step is logged, kept in ``failures`` and answered 200 (a redelivery would fail the
  same way); a failure that is not the step's (the chat stayed locked, the store is gone) gives
  the claim back and answers 503, so Telegram's redelivery runs it.
* What an update becomes is ``telegram_updates.parse_update``; updates that run no turn
  (edits, blocked/unblocked, unsupported types) are kept in ``recorded`` and passed to
  ``on_event``; malformed ones in ``failures``. Every button press is answered
  (``answerCallbackQuery``) through ``sender``, so the user's spinner stops.
* The update's handling is one sans-I/O operation (``_update_op``) that yields commands
  (claim, release, resolve a mapped button id, run the turn, answer the callback, report):
  WSGI drives it blocking, ASGI on the event loop, and ``TelegramPoller`` for ``getUpdates``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chat_orchestrator._io import Op, run_async, run_sync
from chat_orchestrator.channels._bot import (
    SEVEN_DAYS,
    TurnFailure,
    WebhookBot,
    _Turn,
    call_blocking,
    resolve_orchestrator,
)
from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.telegram_updates import GroupMode, Parsed, parse_update
from chat_orchestrator.channels.webhook_http import HttpReply
from chat_orchestrator.errors import WebhookError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.senders._views import is_async_sender

__all__ = ["TelegramBot"]

log = logging.getLogger(__name__)
#: setWebhook's rule for secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -.
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_RETRY_REPLY = (503, "update store unavailable, retry later")
#: A Telegram update is small (a message is at most 4,096 characters plus metadata).
DEFAULT_MAX_BODY = 1_000_000


# Telegram's own commands (the shared ones are in ``_bot``).
@dataclass(frozen=True, slots=True)
class _Resolve:
    token: str


@dataclass(frozen=True, slots=True)
class _Answer:
    callback_query_id: str


class TelegramBot(WebhookBot):
    """``TelegramBot(orchestrator, secret_token=...)`` is a WSGI app; ``bot.asgi`` its twin.

    ``sender`` answers callback queries (default: the orchestrator's sender, when it is a
    Telegram one); ``bot_id`` names the bot in dedup keys (default: the sender's).
    ``group_mode`` ``"chat"`` (a group is one conversation) or ``"user"`` (one per member);
    ``topics``: a forum topic is its own conversation. ``on_event`` gets every recorded event
    (edited, blocked, unblocked, member, unsupported); it may be ``async def``.

    ``mode="queue"`` stores each update's event in the message pipeline's inbox instead of
    running its turn (workers run it, and deliver the replies paced at the sender's
    ``pacing``: about 1 message per second per chat, 30 per second per bot); a button press
    is still answered at once, so the user's spinner stops. ``mode="direct"`` (the default)
    runs the turn inside the request.
    """

    _channel, _unit, _redeliverer = "Telegram", "update", "Telegram"
    _auth_header = "x-telegram-bot-api-secret-token"
    _log = log

    def __init__(
        self,
        orchestrator: ChatOrchestrator | Any,
        *,
        secret_token: str | None,
        sender: Any = None,
        bot_id: str | None = None,
        retention: float = SEVEN_DAYS,
        group_mode: GroupMode = "chat",
        topics: bool = True,
        on_event: Callable[[ChannelEvent], object] | None = None,
        callback_ids: Any = None,
        keep_failures: int = 1000,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        mode: str = "direct",
    ) -> None:
        engine = resolve_orchestrator(orchestrator)
        if secret_token is not None and not (
            isinstance(secret_token, str) and _SECRET.fullmatch(secret_token)
        ):
            raise ValueError("secret_token must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        # None only for polling (TelegramPoller): a webhook without a secret refuses everything.
        self._secret = secret_token.encode() if secret_token is not None else None
        self.sender: Any = sender if sender is not None else engine.sender
        found_id = bot_id if bot_id is not None else getattr(self.sender, "bot_id", None)
        if not isinstance(found_id, str) or not found_id.isascii() or not found_id.isdigit():
            raise ValueError("bot_id (the digits before the token's colon) is required")
        self.bot_id = found_id
        if group_mode not in ("chat", "user"):
            raise ValueError("group_mode must be 'chat' or 'user'")
        self.group_mode: GroupMode = group_mode
        self.topics = topics
        self.on_event = on_event
        self.callback_ids = (
            callback_ids if callback_ids is not None else getattr(self.sender, "callback_ids", None)
        )
        self._max_body = max_body_bytes
        self.recorded: deque[ChannelEvent] = deque(maxlen=keep_failures)
        super().__init__(engine, retention=retention, keep_failures=keep_failures, mode=mode)

    def __repr__(self) -> str:  # the secret never appears
        return f"TelegramBot(bot_id={self.bot_id!r}, group_mode={self.group_mode!r})"

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    # -- the update as a sans-I/O operation ---------------------------------------------------
    def handle_update(self, update: object) -> tuple[int, str]:
        """Run one decoded update (the poller's entry); (HTTP status, text) as the webhook."""
        try:
            parsed = self._parse(update)
        except WebhookError as exc:
            return exc.status, str(exc)
        return run_sync(self._update_op(parsed), self._execute)

    async def handle_update_async(self, update: object) -> tuple[int, str]:
        try:
            parsed = self._parse(update)
        except WebhookError as exc:
            return exc.status, str(exc)
        return await run_async(self._update_op(parsed), self._execute_async)

    def _parse(self, update: object) -> Parsed:
        return parse_update(
            update, bot_id=self.bot_id, group_mode=self.group_mode, topics=self.topics
        )

    def _request_op(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Op[HttpReply]:
        try:  # the query is not Telegram's: setWebhook's URL is the bot's, fixed
            if method != "POST":
                raise WebhookError("Telegram posts updates; only POST is served", status=405)
            self._check_secret(headers.get("x-telegram-bot-api-secret-token") or "")
            try:
                update = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise WebhookError("the body is not JSON", status=400) from None
            except RecursionError:
                raise WebhookError("the body is nested too deeply", status=400) from None
            parsed = self._parse(update)
        except WebhookError as exc:
            return self._refused(exc)
        return HttpReply(*(yield from self._update_op(parsed)))

    def _check_secret(self, received: str) -> None:
        if self._secret is None:
            raise WebhookError("this bot has no secret_token: it serves no webhook", status=403)
        if not received:
            raise WebhookError("X-Telegram-Bot-Api-Secret-Token is missing", status=401)
        # Compared as bytes: compare_digest refuses a str holding non-ASCII (a 500).
        if not hmac.compare_digest(received.encode("latin-1", "replace"), self._secret):
            raise WebhookError("X-Telegram-Bot-Api-Secret-Token does not match", status=403)

    def _update_op(self, parsed: Parsed) -> Op[tuple[int, str]]:
        key = f"tg:{self.bot_id}:{parsed.update_id}"
        chat = parsed.event.chat_id if parsed.event is not None else ""
        claimed = yield from self._claim_op(key, str(parsed.update_id), chat)
        if claimed == "retry":
            return _RETRY_REPLY
        if claimed == "refused":
            return 200, "OK"
        if claimed == "duplicate":
            return 200, "duplicate"
        event, why = parsed.event, parsed.skipped
        if event is not None and parsed.mapped_data is not None:
            event, why = yield from self._resolve_op(event, parsed.mapped_data)
        try:
            if why is not None:
                self._fail(parsed, why)
                if event is not None and not parsed.run:
                    yield from self._report_op(event)
            elif event is not None and parsed.run:
                if not (yield from self._run_op(event, key)):
                    return _RETRY_REPLY
            elif event is not None:
                yield from self._report_op(event)
        finally:
            if parsed.callback_query_id is not None:
                try:
                    yield _Answer(parsed.callback_query_id)
                except Exception as exc:  # the spinner times out by itself; the turn ran
                    log.warning(
                        "answerCallbackQuery failed for update %d: %s", parsed.update_id, exc
                    )
        return 200, "OK"

    def _resolve_op(
        self, event: ChannelEvent, token: str
    ) -> Op[tuple[ChannelEvent | None, str | None]]:
        try:
            option_id = yield _Resolve(token)
        except Exception as exc:
            return None, f"button data {token!r} could not be resolved: {exc}"
        if not isinstance(option_id, str):
            return None, f"button data {token!r} is unknown (an old keyboard?): not run"
        return ChannelEvent(
            event.channel, event.chat_id, event.key, option_id, event.kind, event.data
        ), None

    def _run_op(self, event: ChannelEvent, key: str) -> Op[bool]:
        """The turn (direct mode) or the inbox (queue mode); False (503): claim given back."""
        if self._inbox is None:
            return (yield from self._turn_op(_Turn(event.chat_id, event.user_input), key, key))
        if (yield from self._store_op([Event.from_channel(event)])) is None:
            yield from self._release_op(key, key)
            return False
        self._count(1)
        return True

    def _report_op(self, event: ChannelEvent) -> Op[None]:
        log.info("Telegram update %s recorded as %s", event.key, event.kind)
        self.recorded.append(event)
        if self.on_event is not None:
            yield from self._callback_op(self.on_event, event, "on_event", event.key)

    def _fail(self, parsed: Parsed, why: str) -> None:
        log.warning("Telegram update %d skipped: %s", parsed.update_id, why)
        chat = parsed.event.chat_id if parsed.event is not None else ""
        self.failures.append(TurnFailure(str(parsed.update_id), chat, why))

    # -- Telegram's own commands, blocking and on the event loop ---------------------------
    def _execute_more(self, command: object) -> object:
        if type(command) is _Resolve:
            return self.callback_ids.recall(command.token) if self.callback_ids else None
        if type(command) is _Answer:  # an async sender on the sync path runs to completion
            return call_blocking(self.sender.answer_callback_query, command.callback_query_id)
        return super()._execute_more(command)

    async def _execute_more_async(self, command: object) -> object:
        if type(command) is _Resolve:
            if not self.callback_ids:
                return None
            return await asyncio.to_thread(self.callback_ids.recall, command.token)
        if type(command) is _Answer:
            answer = self.sender.answer_callback_query
            if is_async_sender(self.sender):
                return await answer(command.callback_query_id)
            return await asyncio.to_thread(answer, command.callback_query_id)
        return await super()._execute_more_async(command)
