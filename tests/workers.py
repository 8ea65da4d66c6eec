"""A worker process for the multi-process tests: ``python -m tests.workers KIND URI N CHATS``.

Prints ``ready``, waits for a line on stdin (so all workers start together), then sends N
counter messages spread over CHATS chats.
"""

from __future__ import annotations

import sys

from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator


def make_manager(kind: str, address: str) -> StateManager:
    if kind == "redis":
        from chat_orchestrator.state_managers.redis import RedisStateManager

        return RedisStateManager(url=address, lock_timeout=120)
    if kind == "postgres":
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        url, _, schema = address.rpartition("#")
        return PostgresStateManager(url, schema=schema, lock_timeout=120)
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

    uri, _, database = address.rpartition("#")
    return MongoDBStateManager(uri, database=database, lock_timeout=120)


def main() -> None:
    kind, address, count, chats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    orchestrator = counter_orchestrator(make_manager(kind, address), RecordingSender())
    print("ready", flush=True)
    sys.stdin.readline()
    for index in range(count):
        orchestrator.handle_message(f"chat-{index % chats}", "tick")


if __name__ == "__main__":
    main()
