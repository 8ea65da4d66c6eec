"""``chat-orchestrator worker TARGET`` and ``chat-orchestrator parked list|replay|drop``.

The worker runs the message pipeline's turns and deliveries for a bot served with
``mode="queue"``; ``parked`` shows and handles the dead letters (events that kept failing,
messages that could not be sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from typing import Any

from chat_orchestrator._cli_chats import UsageError, open_cli_store, store_argument
from chat_orchestrator.pipeline.operators import drop_letter, replay_letter
from chat_orchestrator.pipeline.worker import Worker, orchestrator_of
from chat_orchestrator.state_managers.async_base import require_sync

__all__ = ["add_pipeline_commands"]


def add_pipeline_commands(commands: Any) -> None:
    worker = commands.add_parser(
        "worker", help="run the message pipeline's turns and deliveries (mode='queue' bots)"
    )
    worker.add_argument("target", help="module:bot or file.py:bot (a bot, flow or orchestrator)")
    store_argument(worker)
    worker.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    worker.add_argument(
        "--tasks",
        type=int,
        default=0,
        help="run as asyncio tasks on one event loop instead of threads",
    )
    worker.set_defaults(handler=_worker)

    parked = commands.add_parser("parked", help="list, replay or drop the pipeline's dead letters")
    actions = parked.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one JSON line per dead letter, oldest first")
    listing.add_argument("--chat", metavar="CHAT_ID", help="only this chat's")
    store_argument(listing)
    listing.set_defaults(handler=_list)
    replay = actions.add_parser(
        "replay", help="put an event back in the inbox, or a message in the outbox"
    )
    replay.add_argument("letter_id")
    store_argument(replay)
    replay.set_defaults(handler=_replay)
    drop = actions.add_parser("drop", help="forget a dead letter")
    drop.add_argument("letter_id")
    store_argument(drop)
    drop.set_defaults(handler=_drop)


def _target(args: argparse.Namespace) -> Any:
    from chat_orchestrator.cli import TargetError, load_target

    target = load_target(args.target)
    try:
        orchestrator = orchestrator_of(target)
    except TypeError as exc:
        raise TargetError(f"{args.target}: {exc}") from None
    store = open_cli_store(args.store, required=False)
    if store is not None:
        orchestrator.state_manager = store  # the store given on the command line wins
    return target


def _worker(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.tasks < 0:
        raise UsageError("--threads must be >= 1 and --tasks >= 0")
    worker = Worker(_target(args))
    print(f"chat-orchestrator: {worker!r} running; Ctrl-C or SIGTERM stops it", file=sys.stderr)
    if args.tasks:
        return asyncio.run(_run_tasks(worker, args.tasks))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        worker.run(stop, threads=args.threads)
    except KeyboardInterrupt:
        stop.set()
    return 0


async def _run_tasks(worker: Worker, tasks: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run_async(stop, tasks=tasks)
    return 0


def _store(args: argparse.Namespace) -> Any:
    manager = open_cli_store(args.store)
    assert manager is not None
    return require_sync(manager)


def _list(args: argparse.Namespace) -> int:
    store = _store(args).pipeline_store()
    for letter in store.dead_letters(limit=1_000_000, chat_id=args.chat):
        line = {
            "id": letter.id,
            "chat_id": letter.chat_id,
            "kind": letter.kind,
            "error": letter.error,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.at)),
            "body": json.loads(letter.body),
        }
        print(json.dumps(line, ensure_ascii=False))
    return 0


def _replay(args: argparse.Namespace) -> int:
    key = replay_letter(_store(args), args.letter_id)
    print(f"replayed {args.letter_id} as {key}")
    return 0


def _drop(args: argparse.Namespace) -> int:
    drop_letter(_store(args).pipeline_store(), args.letter_id)
    print(f"dropped {args.letter_id}")
    return 0
