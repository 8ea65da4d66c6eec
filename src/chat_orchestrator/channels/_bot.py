"""What every webhook bot shares (WhatsAppBot, TelegramBot), written once.

A bot's request is one sans-I/O operation (``chat_orchestrator._io``) that yields the commands
below. ``WebhookBot`` holds what both messengers do alike: the constructor's checks (the
orchestrator, the claims' retention, ``mode``), the WSGI glue and ``respond``/``respond_async``,
the steps of an event (claim its key, run its turn or store it in the pipeline's inbox, give the
claim back when the failure is not the step's, call the user's callback) and the two drivers
that carry the commands out: blocking (WSGI, the poller) and on the event loop (ASGI). A
subclass keeps only what its messenger dictates: how a request is verified and parsed, the key
that names an event, the names in its logs, and its own commands (``_execute_more``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from chat_orchestrator._io import Op, run_async, run_sync
from chat_orchestrator.channels.webhook_http import HttpReply, admit, read_body, reply_for_error
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
from chat_orchestrator.state_managers.async_base import require_sync
from chat_orchestrator.state_managers.base import validate_claim_ttl

__all__ = [
    "RETRY_LATER",
    "SEVEN_DAYS",
    "Claimed",
    "StartResponse",
    "TurnFailure",
    "WebhookBot",
    "call_blocking",
    "resolve_orchestrator",
]

#: Both messengers redeliver for about this long, so claims are kept as long by default.
SEVEN_DAYS = 7 * 24 * 3600.0
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
#: Not the step's fault: the event must run again when the messenger redelivers it.
RETRY_LATER = (LockTimeoutError, StateManagerUnavailableError)
#: What claiming an event's key gave: run it, a duplicate, a key the store refused (skipped,
#: kept in ``failures``), or the store is unreachable (answer 503 so the messenger retries).
Claimed = Literal["run", "duplicate", "refused", "retry"]


@dataclass(frozen=True, slots=True)
class TurnFailure:
    message_id: str
    chat_id: str
    error: str


# -- the commands (a failing command is thrown back into the operation) -----------------------
@dataclass(frozen=True, slots=True)
class _Claim:
    key: str


@dataclass(frozen=True, slots=True)
class _Release:
    key: str


@dataclass(frozen=True, slots=True)
class _Turn:
    chat_id: str
    user_input: str | None
    #: The messenger's own form of the event, for ``_turn_scope`` (WhatsApp's InboundMessage).
    inbound: object = None


@dataclass(frozen=True, slots=True)
class _Enqueue:
    events: list[Event]


@dataclass(frozen=True, slots=True)
class _Report:
    """Call the user's callback (``on_status``, ``on_event``): plain or ``async def``."""

    callback: Callable[[Any], object]
    item: object


def resolve_orchestrator(orchestrator: ChatOrchestrator | Any) -> ChatOrchestrator:
    """A ChatOrchestrator, or the one inside anything that has one (a Conversation)."""
    if isinstance(orchestrator, ChatOrchestrator):
        return orchestrator
    found: ChatOrchestrator = orchestrator.orchestrator
    return found


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


def call_blocking(function: Callable[[Any], object], argument: object) -> object:
    """``function(argument)`` on a sync path; an awaitable it returns (an ``async def``
    callback or sender) is run to completion here, on a loop of its own."""
    result = function(argument)
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


def _wsgi_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class WebhookBot:
    """The shared part of a webhook bot: a WSGI app, ``asgi`` its ASGI twin (one class).

    A subclass names its messenger for the logs (``_channel``, ``_unit``, ``_redeliverer``),
    the header that authenticates a POST (``_auth_header``) and its logger; it checks its
    own arguments before calling ``__init__`` (which opens the inbox in queue mode), and
    writes ``_request_op`` and ``max_body_bytes``.
    """

    _channel: ClassVar[str]  # "WhatsApp"
    _unit: ClassVar[str]  # "message": what one event is called
    _redeliverer: ClassVar[str]  # "Meta": who redelivers on a non-2xx answer
    _auth_header: ClassVar[str]  # lower case, as ``respond`` takes headers
    _log: ClassVar[logging.Logger]

    def __init__(
        self,
        orchestrator: ChatOrchestrator | Any,
        *,
        retention: float,
        keep_failures: int,
        mode: str,
    ) -> None:
        self.orchestrator = resolve_orchestrator(orchestrator)
        # Checked here: a bad retention would otherwise refuse every claim, every event.
        self.retention = validate_claim_ttl(retention)
        self.failures: deque[TurnFailure] = deque(maxlen=keep_failures)
        self._lock = threading.Lock()
        self.turns = 0
        self._asgi: WebhookASGI | None = None
        if mode not in ("direct", "queue"):
            raise ValueError(f"mode must be 'direct' or 'queue', not {mode!r}")
        self.mode = mode
        # The inbox, found (and refused, for a store that cannot hold it) when the bot is built,
        # last: nothing is opened for a bot whose arguments are refused.
        self._inbox: PipelineStore | None = pipeline_store_of(self) if mode == "queue" else None

    @property
    def max_body_bytes(self) -> int:
        raise NotImplementedError

    @property
    def asgi(self) -> WebhookASGI:
        """This bot as an ASGI app (FastAPI/Starlette ``app.mount(path, bot.asgi)``, uvicorn)."""
        if self._asgi is None:
            self._asgi = WebhookASGI(self)
        return self._asgi

    # -- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Thin WSGI glue: every decision is in _request_op and webhook_http, shared with ASGI.
        headers = {
            "content-length": environ.get("CONTENT_LENGTH", ""),
            "transfer-encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
            self._auth_header: environ.get(_wsgi_name(self._auth_header), ""),
        }
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            length = admit(method, headers, self.max_body_bytes)
            body = read_body(environ["wsgi.input"].read, length) if length else b""
        except WebhookError as exc:
            reply = self._refused(exc)
        else:
            reply = self.respond(method, str(environ.get("QUERY_STRING", "")), headers, body)
        start_response(f"{reply.status} {reply.reason}", reply.headers())
        return [reply.body]

    def respond(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        """Answer one admitted request (see ``webhook_http.admit``); headers in lower case."""
        return run_sync(self._request_op(method, query, headers, body), self._execute)

    async def respond_async(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        """``respond`` on the running event loop (the ASGI app's answer)."""
        return await run_async(self._request_op(method, query, headers, body), self._execute_async)

    def _request_op(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Op[HttpReply]:
        raise NotImplementedError

    def _refused(self, exc: WebhookError) -> HttpReply:
        self._log.warning("%s webhook request refused (%d): %s", self._channel, exc.status, exc)
        return reply_for_error(exc)

    # -- the steps of one event, as sans-I/O operations ---------------------------------------
    def _claim_op(self, key: str, event_id: str, chat_id: str = "") -> Op[Claimed]:
        try:
            return "run" if (yield _Claim(key)) else "duplicate"
        except StateManagerError as exc:
            self._log.error(
                "cannot record %s ids (%s); asking %s to retry", self._unit, exc, self._redeliverer
            )
            return "retry"
        except (ChatOrchestratorError, ValueError) as exc:
            # The store refuses the key itself (a custom manager's rule): retrying cannot help.
            self._log.warning(
                "skipped %s %s %s: its claim key was refused (%s)",
                self._channel,
                self._unit,
                event_id,
                exc,
            )
            self.failures.append(TurnFailure(event_id, chat_id, f"claim key refused: {exc}"))
            return "refused"

    def _turn_op(self, turn: _Turn, key: str, event_id: str) -> Op[bool]:
        """Run one turn; False when the request must stop and answer 503 (claim given back)."""
        try:
            yield turn
        except RETRY_LATER as exc:
            # Not the step's fault: give the claim back so the redelivery runs the event.
            self._log.warning(
                "turn for %s %s %s deferred (%s); asking %s to retry",
                self._channel,
                self._unit,
                event_id,
                exc,
                self._redeliverer,
            )
            yield from self._release_op(key, event_id)
            return False
        except Exception as exc:
            # The step's own failure: a redelivery would fail the same way, so it is answered.
            self._log.exception("turn failed for %s %s %s", self._channel, self._unit, event_id)
            self.failures.append(
                TurnFailure(event_id, turn.chat_id, f"{type(exc).__name__}: {exc}")
            )
            return True
        self._count(1)
        return True

    def _release_op(self, key: str, event_id: str) -> Op[None]:
        try:
            yield _Release(key)
        except StateManagerError as exc:  # the claim expires by itself after ``retention``
            self._log.error("could not give back the claim of %s: %s", event_id, exc)

    def _store_op(self, events: list[Event]) -> Op[list[bool] | None]:
        """Queue mode: store one chat's events in the inbox; None when the store cannot."""
        try:
            added: list[bool] = yield _Enqueue(events)
        except Exception as exc:  # the store is down: the messenger must redeliver, never lose it
            self._log.error(
                "cannot store %s %ss %s (%s); asking %s to retry",
                self._channel,
                self._unit,
                ", ".join(event.key for event in events),
                exc,
                self._redeliverer,
            )
            return None
        return added

    def _callback_op(
        self, callback: Callable[[Any], object], item: object, name: str, about: str
    ) -> Op[None]:
        """Call a user's callback; its failure is logged, never the request's."""
        try:
            yield _Report(callback, item)
        except Exception:
            self._log.exception("%s failed for %s", name, about)

    def _count(self, turns: int) -> None:
        with self._lock:  # WSGI servers run requests on several threads
            self.turns += turns

    def _turn_scope(self, turn: _Turn) -> contextlib.AbstractContextManager[object]:
        """What surrounds a turn in both drivers (WhatsApp: what ``inbound_message()`` shows)."""
        return contextlib.nullcontext()

    # -- the two drivers: the only place sync and async differ ------------------------------
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
            with self._turn_scope(command):
                return self.orchestrator.handle_message(command.chat_id, command.user_input)
        if type(command) is _Report:
            call_blocking(command.callback, command.item)
            return None
        return self._execute_more(command)

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
            # Entered in this task's context: async steps see it, and sync steps too (to_thread
            # copies the context into the worker thread).
            with self._turn_scope(command):
                return await self.orchestrator.handle_message_async(
                    command.chat_id, command.user_input
                )
        if type(command) is _Report:
            result = command.callback(command.item)
            if inspect.isawaitable(result):
                await result
            return None
        return await self._execute_more_async(command)

    def _execute_more(self, command: object) -> object:
        """A subclass's own commands, blocking."""
        raise TypeError(f"{type(self).__name__} has no command {command!r}")

    async def _execute_more_async(self, command: object) -> object:
        """A subclass's own commands, on the event loop."""
        raise TypeError(f"{type(self).__name__} has no command {command!r}")
