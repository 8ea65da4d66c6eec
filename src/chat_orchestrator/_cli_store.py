"""``chat-orchestrator store init --store URL``: create (or migrate) a store's schema.

Idempotent: run it from a deploy script before the workers start, as often as you like.
Stores without a schema of their own (memory, files, Redis, MongoDB, SQLite, which sets
itself up when opened) only report that they are ready.
"""

from __future__ import annotations

import argparse
from typing import Any

from chat_orchestrator._cli_chats import open_cli_store, store_argument

__all__ = ["add_store_command"]


def add_store_command(commands: Any) -> None:
    store = commands.add_parser("store", help="set up a store")
    actions = store.add_subparsers(dest="store_command", required=True)
    init = actions.add_parser(
        "init", help="create or migrate the store's tables (idempotent), e.g. PostgreSQL's"
    )
    store_argument(init)
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    store = open_cli_store(args.store)
    assert store is not None  # required=True raised otherwise
    try:
        setup = getattr(store, "setup", None)
        if callable(setup):
            version = setup()
            print(f"store ready: {store!r}, schema version {version}")
        else:
            print(f"store ready: {store!r} (nothing to set up)")
    finally:
        store.close()
    return 0
