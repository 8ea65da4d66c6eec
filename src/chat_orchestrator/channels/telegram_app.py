"""A WSGI application (and ``bot.asgi``) that serves a bot on Telegram through a webhook.

* Every POST must carry ``X-Telegram-Bot-Api-Secret-Token`` equal to the ``secret_token`` given
  to ``setWebhook`` (compared in constant time): missing is 401, wrong is 403. Only POST is
  served (405 otherwise); bodies over ``max_body_bytes`` are 413; admission, body reading and
  the ASGI glue are the WhatsApp app's (``webhook_http``, ``whatsapp_asgi.WebhookASGI``).
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
import inspect
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chat_orchestrator._io import Op, run_async, run_sync
from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.telegram_updates import GroupMode, Parsed, parse_update
from chat_orchestrator.channels.webhook_http import HttpReply, admit, read_body, reply_for_error
from chat_orchestrator.channels.whatsapp_app import (
    SEVEN_DAYS,
    TurnFailure,
    _Claim,
    _Enqueue,
    _Release,
)
from chat_orchestrator.channels.whatsapp_asgi import WebhookASGI
from chat_orchestrator.errors import (
    ChatOrchestratorError,
    LockTimeoutError,
    StateManagerError,
    StateManagerUnavailableError,
    WebhookError,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.store import PipelineStore
from chat_orchestrator.pipeline.worker import pipeline_store_of
from chat_orchestrator.senders._views import is_async_sender
from chat_orchestrator.state_managers.async_base import require_sync
from chat_orchestrator.state_managers.base import validate_claim_ttl

__all__ = ["TelegramBot"]

log = logging.getLogger(__name__)
#: setWebhook's rule for secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -.
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_RETRY_LATER = (LockTimeoutError, StateManagerUnavailableError)
_RETRY_REPLY = (503, "update store unavailable, retry later")
#: A Telegram update is small (a message is at most 4,096 characters plus metadata).
DEFAULT_MAX_BODY = 1_000_000
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True, slots=True)
class _Turn:
    event: ChannelEvent


@dataclass(frozen=True, slots=True)
class _Resolve:
    token: str


@dataclass(frozen=True, slots=True)
class _Answer:
    callback_query_id: str


@dataclass(frozen=True, slots=True)
class _Report:
    event: ChannelEvent


class TelegramBot:
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
        self.orchestrator: ChatOrchestrator = (
            orchestrator
            if isinstance(orchestrator, ChatOrchestrator)
            else orchestrator.orchestrator
        )
        if secret_token is not None and not (
            isinstance(secret_token, str) and _SECRET.fullmatch(secret_token)
        ):
            raise ValueError("secret_token must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        # None only for polling (TelegramPoller): a webhook without a secret refuses everything.
        self._secret = secret_token.encode() if secret_token is not None else None
        self.sender: Any = sender if sender is not None else self.orchestrator.sender
        found_id = bot_id if bot_id is not None else getattr(self.sender, "bot_id", None)
        if not isinstance(found_id, str) or not found_id.isascii() or not found_id.isdigit():
            raise ValueError("bot_id (the digits before the token's colon) is required")
        self.bot_id = found_id
        if group_mode not in ("chat", "user"):
            raise ValueError("group_mode must be 'chat' or 'user'")
        self.group_mode: GroupMode = group_mode
        self.topics = topics
        self.retention = validate_claim_ttl(retention)
        self.on_event = on_event
        self.callback_ids = (
            callback_ids if callback_ids is not None else getattr(self.sender, "callback_ids", None)
        )
        self._max_body = max_body_bytes
        self.failures: deque[TurnFailure] = deque(maxlen=keep_failures)
        self.recorded: deque[ChannelEvent] = deque(maxlen=keep_failures)
        self._lock = threading.Lock()
        self.turns = 0
        self._asgi: WebhookASGI | None = None
        if mode not in ("direct", "queue"):
            raise ValueError(f"mode must be 'direct' or 'queue', not {mode!r}")
        self.mode = mode
        self._inbox: PipelineStore | None = pipeline_store_of(self) if mode == "queue" else None

    def __repr__(self) -> str:  # the secret never appears
        return f"TelegramBot(bot_id={self.bot_id!r}, group_mode={self.group_mode!r})"

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    @property
    def asgi(self) -> WebhookASGI:
        """This bot as an ASGI app (uvicorn, ``app.mount(path, bot.asgi)``)."""
        if self._asgi is None:
            self._asgi = WebhookASGI(self)
        return self._asgi

    # -- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            "content-length": environ.get("CONTENT_LENGTH", ""),
            "transfer-encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
            "x-telegram-bot-api-secret-token": environ.get(
                "HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN", ""
            ),
        }
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            length = admit(method, headers, self._max_body)
            body = read_body(environ["wsgi.input"].read, length) if length else b""
        except WebhookError as exc:
            reply = self._refused(exc)
        else:
            reply = self.respond(method, "", headers, body)
        start_response(f"{reply.status} {reply.reason}", reply.headers())
        return [reply.body]

    def respond(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        """Answer one admitted request; headers in lower case."""
        return run_sync(self._request_op(method, headers, body), self._execute)

    async def respond_async(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        return await run_async(self._request_op(method, headers, body), self._execute_async)

    @staticmethod
    def _refused(exc: WebhookError) -> HttpReply:
        log.warning("Telegram webhook request refused (%d): %s", exc.status, exc)
        return reply_for_error(exc)

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

    def _request_op(self, method: str, headers: Mapping[str, str], body: bytes) -> Op[HttpReply]:
        try:
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
        try:
            claimed = bool((yield _Claim(key)))
        except StateManagerError as exc:
            log.error("cannot record update ids (%s); asking Telegram to retry", exc)
            return _RETRY_REPLY
        except (ChatOrchestratorError, ValueError) as exc:
            self._fail(parsed, f"claim key refused: {exc}")
            return 200, "OK"
        if not claimed:
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
                run = self._turn_op if self._inbox is None else self._enqueue_op
                if not (yield from run(event, key)):
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

    def _turn_op(self, event: ChannelEvent, key: str) -> Op[bool]:
        try:
            yield _Turn(event)
        except _RETRY_LATER as exc:
            log.warning("turn for Telegram update %s deferred (%s); asking to retry", key, exc)
            try:
                yield _Release(key)
            except StateManagerError as release_failed:
                log.error("could not give back the claim of %s: %s", key, release_failed)
            return False
        except Exception as exc:
            log.exception("turn failed for Telegram update %s", key)
            self.failures.append(TurnFailure(key, event.chat_id, f"{type(exc).__name__}: {exc}"))
            return True
        with self._lock:
            self.turns += 1
        return True

    def _enqueue_op(self, event: ChannelEvent, key: str) -> Op[bool]:
        """Queue mode: store the event for the workers; False (503) if the store cannot."""
        try:
            yield _Enqueue([Event.from_channel(event)])
        except Exception as exc:  # the store is down: Telegram must redeliver, never lose it
            log.error("cannot store Telegram update %s (%s); asking to retry", key, exc)
            try:
                yield _Release(key)
            except StateManagerError as release_failed:
                log.error("could not give back the claim of %s: %s", key, release_failed)
            return False
        with self._lock:
            self.turns += 1
        return True

    def _report_op(self, event: ChannelEvent) -> Op[None]:
        log.info("Telegram update %s recorded as %s", event.key, event.kind)
        self.recorded.append(event)
        if self.on_event is not None:
            try:
                yield _Report(event)
            except Exception:
                log.exception("on_event failed for %s", event.key)

    def _fail(self, parsed: Parsed, why: str) -> None:
        log.warning("Telegram update %d skipped: %s", parsed.update_id, why)
        chat = parsed.event.chat_id if parsed.event is not None else ""
        self.failures.append(TurnFailure(str(parsed.update_id), chat, why))

    # -- the two drivers ------------------------------------------------------------------
    def _execute(self, command: object) -> object:
        if type(command) is _Enqueue:
            assert self._inbox is not None
            return self._inbox.add(command.events, self.retention)
        if type(command) is _Claim:
            return require_sync(self.orchestrator.state_manager).claim(command.key, self.retention)
        if type(command) is _Release:
            require_sync(self.orchestrator.state_manager).release_claim(command.key)
            return None
        if type(command) is _Turn:
            event = command.event
            return self.orchestrator.handle_message(event.chat_id, event.user_input)
        if type(command) is _Resolve:
            return self.callback_ids.recall(command.token) if self.callback_ids else None
        if type(command) is _Answer:
            return _call_sync(self.sender.answer_callback_query, command.callback_query_id)
        assert type(command) is _Report
        assert self.on_event is not None
        result = self.on_event(command.event)
        if inspect.isawaitable(result):
            asyncio.run(_awaited(result))
        return None

    async def _execute_async(self, command: object) -> object:
        manager = self.orchestrator.state_manager
        if type(command) is _Enqueue:
            assert self._inbox is not None
            return await self._inbox.add_async(command.events, self.retention)
        if type(command) is _Claim:
            return await manager.claim_async(command.key, self.retention)
        if type(command) is _Release:
            await manager.release_claim_async(command.key)
            return None
        if type(command) is _Turn:
            event = command.event
            return await self.orchestrator.handle_message_async(event.chat_id, event.user_input)
        if type(command) is _Resolve:
            if not self.callback_ids:
                return None
            return await asyncio.to_thread(self.callback_ids.recall, command.token)
        if type(command) is _Answer:
            answer = self.sender.answer_callback_query
            if is_async_sender(self.sender):
                return await answer(command.callback_query_id)
            return await asyncio.to_thread(answer, command.callback_query_id)
        assert type(command) is _Report
        assert self.on_event is not None
        result = self.on_event(command.event)
        if inspect.isawaitable(result):
            await result
        return None


async def _awaited(awaitable: Any) -> object:
    return await awaitable


def _call_sync(function: Callable[[str], Any], argument: str) -> object:
    result = function(argument)
    if inspect.isawaitable(result):  # an async sender on the sync path
        return asyncio.run(_awaited(result))
    return result
