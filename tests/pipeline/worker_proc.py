"""A worker process for the fault tests: ``python -m tests.pipeline.worker_proc --store URL ...``.

The bot's one step keeps, in the chat's context, the list of inputs it has seen (``seen``) and
the timers it has fired (``fired``: name and the delay from due time to step start), and sends
``re:<input>`` through a real ``WhatsAppSender`` to the Graph stand-in. The step sleeps
``--step-sleep`` seconds so that a SIGKILL lands mid-step; it appends ``begin``/``end`` lines to
``--marks`` (flushed at once) so the test can tell where each kill landed.

``chat-orchestrator worker tests.pipeline.worker_proc:bot`` builds the same bot from the
``FAULTS_*`` environment variables (see :func:`_bot_from_env`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.pipeline.scope import current_event, schedule_timer
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.state_managers.base import StateManager

__all__ = ["PHONE_NUMBER_ID", "TOKEN", "build_bot", "main", "make_manager"]

TOKEN = "test-token-SECRET-123"  # the Graph stand-in's token
PHONE_NUMBER_ID = "200000000000002"
APP_SECRET = "test_app_secret"
VERIFY_TOKEN = "verify-me-SECRET"


def make_manager(url: str, lock_lease: float = 2.0) -> StateManager:
    """A state manager for ``url`` (sqlite:///path, redis://..., mongodb://.../db,
    postgresql://...) with a short
    turn lease, so a killed worker's chat is free again within seconds (URLs cannot set it for
    every store)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

        return SQLiteStateManager(parts.path[1:], lock_lease=lock_lease)
    if parts.scheme == "redis":
        from chat_orchestrator.state_managers.redis import RedisStateManager

        return RedisStateManager(url=url, lock_lease=lock_lease)
    if parts.scheme == "mongodb":
        from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

        database = parts.path.lstrip("/")
        plain = f"{parts.scheme}://{parts.netloc}"
        return MongoDBStateManager(plain, database=database, lock_lease=lock_lease)
    if parts.scheme in ("postgresql", "postgres"):
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        return PostgresStateManager(url, lock_lease=lock_lease)
    raise ValueError(f"unsupported store URL {url!r}")


def build_bot(
    store_url: str,
    graph_url: str,
    *,
    step_sleep: float = 0.0,
    lock_lease: float = 2.0,
    marks: Path | None = None,
    boom: bool = False,
) -> WhatsAppBot:
    """The queue-mode bot the webhook (test process) and the workers (these processes) share.

    ``boom``: inputs starting with "boom" make the step raise (to park them)."""
    sender = WhatsAppSender(
        TOKEN, PHONE_NUMBER_ID, base_url=graph_url, max_retries=0, timeout=(1.0, 2.0)
    )
    orchestrator = ChatOrchestrator(make_manager(store_url, lock_lease), sender)
    marks_file = None if marks is None else marks.open("a", buffering=1)
    marks_lock = threading.Lock()

    def mark(line: str) -> None:
        if marks_file is not None:
            with marks_lock:
                marks_file.write(f"{os.getpid()} {line}\n")

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        began = time.time()
        event = current_event()
        new = dict(context)
        if event is not None and event.is_timer:
            fired = list(new.get("fired", []))
            fired.append([event.data["timer"], began - float(event.data["due"])])
            new["fired"] = fired
            return "start", new
        assert text is not None
        if boom and text.startswith("boom"):
            raise RuntimeError(f"step refuses {text!r}")  # parked: the CLI test replays it
        mark(f"begin {chat_id} {text}")
        time.sleep(step_sleep)
        if text.startswith("timers:"):
            # "timers:<count>:<first delay>:<spread>": set <count> timers due over <spread> s.
            _, count, first, spread = text.split(":")
            for n in range(int(count)):
                delay = float(first) + float(spread) * n / max(1, int(count) - 1)
                schedule_timer(f"t{n}", after=delay)
        new["seen"] = [*new.get("seen", []), text]
        sender.send_message(chat_id, f"re:{text}")
        mark(f"end {chat_id} {text}")
        return "start", new

    return WhatsAppBot(orchestrator, WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET), mode="queue")


def _bot_from_env() -> WhatsAppBot:
    return build_bot(
        os.environ["FAULTS_STORE"],
        os.environ["FAULTS_GRAPH"],
        step_sleep=float(os.environ.get("FAULTS_STEP_SLEEP", "0")),
    )


def __getattr__(name: str) -> Any:
    # ``bot`` for ``chat-orchestrator worker tests.pipeline.worker_proc:bot``, built on first use
    # so that importing this module (the test process does) needs no environment.
    if name == "bot":
        return _bot_from_env()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline.worker_proc")
    parser.add_argument("--store", required=True)
    parser.add_argument("--graph", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--lock-lease", type=float, default=2.0)
    parser.add_argument("--max-send-backoff", type=float, default=2.0)
    parser.add_argument("--marks", type=Path)
    args = parser.parse_args(argv)
    bot = build_bot(
        args.store,
        args.graph,
        step_sleep=args.step_sleep,
        lock_lease=args.lock_lease,
        marks=args.marks,
    )
    worker = Worker(
        bot,
        lease=args.lease,
        poll=0.02,
        retry=0.2,
        backoff=0.2,
        send_backoff=0.2,
        max_send_backoff=args.max_send_backoff,
        max_send_tries=1000,
        rate=None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    worker.run(stop, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
