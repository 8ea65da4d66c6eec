"""Workers: take ready chats from the work index and run their turns and deliveries.

A worker is a loop: take a chat (``PipelineStore.take``), run one pass over it
(``_chat_op.chat_op``: every decision, written once), release it with the time it next needs
looking at. Run several in threads (``Worker.run(threads=N)``), as asyncio tasks
(``await Worker.run_async(tasks=N)``), in several processes, or on several machines: they
share only the store, and a chat is worked on by one of them at a time.

``chat-orchestrator worker --store URL module:bot`` runs one from the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

from chat_orchestrator._io import run_async, run_sync
from chat_orchestrator.errors import (
    ChatOrchestratorError,
    StateManagerError,
    StoreCapabilityError,
    describe_chat_id,
)
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline._chat_op import (
    Begin,
    Close,
    Commit,
    Mark,
    Outcome,
    Park,
    Release,
    RunStep,
    Send,
    chat_op,
)
from chat_orchestrator.pipeline.outbox import AsyncOutboxSender, OutboxSender, RateLimiter
from chat_orchestrator.pipeline.scope import open_scope
from chat_orchestrator.pipeline.store import PipelineStore, Taken
from chat_orchestrator.senders._views import AnySender, as_async, as_sync
from chat_orchestrator.state_managers.async_base import require_sync
from chat_orchestrator.state_managers.base import StateManager

__all__ = ["Worker", "WorkerSettings", "orchestrator_of", "pipeline_store_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker paces, retries and gives up. Times in seconds."""

    #: A worker holds a taken chat this long, renewed every third of it while it works (a
    #: long step too); a killed worker's chats are taken again when it ends.
    lease: float = 10.0
    #: Events read per pass, and actions (turns, sends) per pass before other chats go.
    batch: int = 20
    budget: int = 50
    #: A step that fails is tried this often in all (backoff doubling from ``backoff``),
    #: then parked as a dead letter; the chat goes on with its next event.
    max_attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 300.0
    #: A transient send failure is retried (doubling from ``send_backoff``, or the channel's
    #: ``retry_after``) up to ``max_send_tries`` tries, then kept as a dead letter.
    send_backoff: float = 0.5
    max_send_backoff: float = 60.0
    max_send_tries: int = 20
    #: Least time between two messages to one chat (Telegram asks about 1 s).
    per_chat_interval: float = 0.0
    #: Messages per second from this worker process (WhatsApp: 80 per number); None: no cap.
    rate: float | None = 80.0
    #: Wait after the store failed before looking at the chat again.
    retry: float = 1.0
    #: An idle worker looks for work this often.
    poll: float = 0.05

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name == "rate":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{item.name} must be a number, not {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{item.name} must be a finite number >= 0, not {value!r}")
            if item.name in {"lease", "batch", "budget", "max_attempts", "max_send_tries"} and (
                value <= 0
            ):
                raise ValueError(f"{item.name} must be > 0, not {value!r}")


def orchestrator_of(app: object) -> ChatOrchestrator:
    """The engine of a ChatOrchestrator, a Conversation, or a channel bot wrapping one."""
    if isinstance(app, ChatOrchestrator):
        return app
    inner = getattr(app, "orchestrator", None)
    if isinstance(inner, ChatOrchestrator):
        return inner
    raise TypeError(
        f"expected a ChatOrchestrator, a Conversation or a bot, not {type(app).__name__}"
    )


def pipeline_store_of(app: object) -> PipelineStore:
    """The pipeline store beside the app's state manager (StoreCapabilityError if none)."""
    manager = orchestrator_of(app).state_manager
    if not isinstance(manager, StateManager):
        raise StoreCapabilityError(
            f"{type(manager).__name__} is a user's async manager: it cannot hold the message "
            "pipeline; use memory:, sqlite:, redis:, redis+cluster:, mongodb: or postgresql:"
        )
    return manager.pipeline_store()


class Worker:
    """Runs the pipeline's turns and deliveries for ``app`` (orchestrator, flow or bot).

    ``sender`` is what delivers the outbox (default: the orchestrator's own sender, made
    single-try with its ``without_retries()`` when it has one: the outbox retries itself).
    ``settings`` (a :class:`WorkerSettings`) or its fields as keywords (which win) set how it
    retries and paces; a sender that declares ``pacing`` (per-chat interval, messages per
    second) sets the defaults of those two.
    """

    def __init__(
        self,
        app: object,
        *,
        store: PipelineStore | None = None,
        sender: AnySender | None = None,
        name: str | None = None,
        settings: WorkerSettings | None = None,
        **overrides: Any,
    ) -> None:
        self.orchestrator = orchestrator_of(app)
        self.store = store if store is not None else pipeline_store_of(app)
        self.manager = require_sync(self.orchestrator.state_manager)
        # Leased stores write conditionally in one atomic operation, without their lease: a
        # delivery's bookkeeping then needs no lease of its own (one round trip, not two).
        self._fast_mark = self.manager.atomic_compare_and_set
        chosen: AnySender = sender if sender is not None else self.orchestrator.sender
        single = getattr(chosen, "without_retries", None)
        self.sender: AnySender = single() if callable(single) else chosen
        pacing = getattr(chosen, "pacing", None)
        defaults = settings if settings is not None else WorkerSettings()
        if pacing is not None and settings is None:
            defaults = replace(
                defaults,
                per_chat_interval=float(getattr(pacing, "per_chat_interval", 0.0)),
                rate=getattr(pacing, "per_second", defaults.rate),
            )
        self.settings = replace(defaults, **overrides)
        self.limiter = RateLimiter(self.settings.rate)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.outcome = Outcome()
        self._count_lock = threading.Lock()
        self._held: dict[int, Taken] = {}
        self._renewer: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Worker(name={self.name!r}, store={self.store.name!r})"

    # -- the work lease, renewed while a pass runs (a step may outlast it) -----------------
    @contextmanager
    def _holding(self, taken: Taken) -> Iterator[None]:
        with self._count_lock:
            self._held[id(taken)] = taken
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="pipeline-lease-renewer", daemon=True
                )
                self._renewer.start()
        try:
            yield
        finally:
            with self._count_lock:
                self._held.pop(id(taken), None)

    def _renew_loop(self) -> None:
        period = self.settings.lease / 3
        while True:
            time.sleep(period)
            with self._count_lock:
                held = list(self._held.values())
            for taken in held:
                try:
                    renewed = self.store.renew(taken, self.settings.lease)
                    with self._count_lock:
                        still_held = id(taken) in self._held
                    if not renewed and still_held:  # not a pass that just ended
                        log.warning(
                            "worker %s: the lease of chat %s was taken over by another worker "
                            "(its writes are conditional: the late one fails, never wins)",
                            self.name,
                            describe_chat_id(taken.chat_id),
                        )
                except Exception as exc:  # the store is down: the next tick tries again
                    log.warning("worker %s: cannot renew a lease: %s", self.name, exc)

    def _owner(self) -> str:
        return f"{self.name}:{threading.get_ident()}"

    def _add(self, outcome: Outcome) -> None:
        with self._count_lock:
            self.outcome.turns += outcome.turns
            self.outcome.sent += outcome.sent
            self.outcome.parked += outcome.parked
            self.outcome.failed += outcome.failed

    # -- sync -------------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Work on one ready chat, if there is one; False when none was ready."""
        got = self.store.take_pending(self._owner(), self.settings.lease, self.settings.batch)
        if got is None:
            return False
        op = chat_op(self.orchestrator, self.settings, *got, self._fast_mark)
        with self._holding(got[0]):
            self._add(run_sync(op, self._execute))
        return True

    def drain(self, max_passes: int = 1_000_000) -> Outcome:
        """Work until no chat is ready now (timers due later are left); for tests and scripts."""
        before = replace_outcome(self.outcome)
        for _ in range(max_passes):
            if not self.run_once():
                break
        return diff_outcome(self.outcome, before)

    def run(self, stop: threading.Event | None = None, *, threads: int = 1) -> None:
        """Work until ``stop`` is set (forever without one), in ``threads`` threads."""
        stop = stop if stop is not None else threading.Event()
        if threads <= 1:
            self._loop(stop)
            return
        workers = [
            threading.Thread(target=self._loop, args=(stop,), name=f"worker-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception as exc:  # the store is down, or a bug: never stop the loop
                log.warning("worker %s: %s: %s", self.name, type(exc).__name__, exc)
                stop.wait(self.settings.retry)
                continue
            if not busy:
                self.store.wait(self._idle_sleep())

    def _idle_sleep(self) -> float:
        return self.settings.poll

    def _execute(self, command: object) -> object:
        if isinstance(command, RunStep):
            return self._run_step(command)
        if isinstance(command, Send):
            item = command.item
            delay = self.limiter.reserve()
            if delay:
                time.sleep(delay)
            return as_sync(self.sender).send_message(item.chat_id, item.text, item.options)
        try:
            return self._store_call(command)
        except ChatOrchestratorError:
            raise
        except Exception as exc:
            raise StateManagerError(f"pipeline store failed: {type(exc).__name__}: {exc}") from exc

    def _store_call(self, command: object) -> object:
        store = self.store
        if isinstance(command, Begin):
            return self.manager.begin_turn(command.chat_id)
        if isinstance(command, Commit):
            command.lease.commit(command.update)
            return getattr(command.lease, "committed", None)
        if isinstance(command, Mark):
            update = command.update
            return self.manager.compare_and_set(
                command.chat_id,
                update.state_id,
                update.context,
                expected_version=command.expected,
                encoded=update.context_json,
            )
        if isinstance(command, Close):
            command.lease.close()
        elif isinstance(command, Park):
            store.park(command.letter)
        elif isinstance(command, Release):
            store.finish_release(command.taken, command.keys, command.next_at)
        else:
            raise TypeError(f"unknown command {command!r}")
        return None

    def _run_step(self, command: RunStep) -> tuple[object, list[Any]]:
        outbox = OutboxSender()
        with open_scope(command.scope):
            result = self.orchestrator.run_step(
                command.step,
                command.state_id,
                command.chat_id,
                command.user_input,
                command.context,
                outbox,
                AsyncOutboxSender(outbox),
            )
        return result, outbox.sent

    # -- async ------------------------------------------------------------------------------
    async def run_once_async(self) -> bool:
        settings = self.settings
        got = await self.store.take_pending_async(
            self._owner_async(), settings.lease, settings.batch
        )
        if got is None:
            return False
        op = chat_op(self.orchestrator, settings, *got, self._fast_mark)
        with self._holding(got[0]):
            self._add(await run_async(op, self._execute_async))
        return True

    def _owner_async(self) -> str:
        task = asyncio.current_task()
        return f"{self.name}:{id(task):x}"

    async def drain_async(self, max_passes: int = 1_000_000) -> Outcome:
        before = replace_outcome(self.outcome)
        for _ in range(max_passes):
            if not await self.run_once_async():
                break
        return diff_outcome(self.outcome, before)

    async def run_async(self, stop: asyncio.Event | None = None, *, tasks: int = 1) -> None:
        """Work on the running loop until ``stop`` is set, in ``tasks`` concurrent tasks."""
        stop = stop if stop is not None else asyncio.Event()
        await asyncio.gather(*(self._loop_async(stop) for _ in range(max(1, tasks))))

    async def _loop_async(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.run_once_async()
            except Exception as exc:
                log.warning("worker %s: %s: %s", self.name, type(exc).__name__, exc)
                await _wait(stop, self.settings.retry)
                continue
            if not busy:
                await self.store.wait_async(self._idle_sleep())

    async def _execute_async(self, command: object) -> object:
        if isinstance(command, RunStep):
            return await self._run_step_async(command)
        if isinstance(command, Send):
            item = command.item
            delay = self.limiter.reserve()
            if delay:
                await asyncio.sleep(delay)
            return await as_async(self.sender).send_message(item.chat_id, item.text, item.options)
        try:
            return await self._store_call_async(command)
        except ChatOrchestratorError:
            raise
        except Exception as exc:
            raise StateManagerError(f"pipeline store failed: {type(exc).__name__}: {exc}") from exc

    async def _store_call_async(self, command: object) -> object:
        store = self.store
        if isinstance(command, Begin):
            return await self.orchestrator.state_manager.begin_turn_async(command.chat_id)
        if isinstance(command, Commit):
            await command.lease.commit(command.update)
            return getattr(command.lease, "committed", None)
        if isinstance(command, Mark):
            update = command.update
            return await self.orchestrator.state_manager.compare_and_set_async(  # type: ignore[union-attr]
                command.chat_id,
                update.state_id,
                update.context,
                expected_version=command.expected,
                encoded=update.context_json,
            )
        if isinstance(command, Close):
            await command.lease.close()
        elif isinstance(command, Park):
            await store.park_async(command.letter)
        elif isinstance(command, Release):
            await store.finish_release_async(command.taken, command.keys, command.next_at)
        else:
            raise TypeError(f"unknown command {command!r}")
        return None

    async def _run_step_async(self, command: RunStep) -> tuple[object, list[Any]]:
        outbox = OutboxSender()
        with open_scope(command.scope):
            result = await self.orchestrator.run_step_async(
                command.step,
                command.state_id,
                command.chat_id,
                command.user_input,
                command.context,
                outbox,
                AsyncOutboxSender(outbox),
            )
        return result, outbox.sent


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def replace_outcome(outcome: Outcome) -> Outcome:
    return Outcome(outcome.turns, outcome.sent, outcome.parked, outcome.failed)


def diff_outcome(after: Outcome, before: Outcome) -> Outcome:
    return Outcome(
        after.turns - before.turns,
        after.sent - before.sent,
        after.parked - before.parked,
        after.failed - before.failed,
    )
