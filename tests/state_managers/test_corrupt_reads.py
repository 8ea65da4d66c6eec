"""Issue 8: a stored record that breaks the context rules is CorruptStateError, left as it is.

Each backend gets the bad record planted the way a foreign writer (an old version, a person,
another tool) would leave it, through the real store: files on disk, a real redis-server hash,
a real document in nx-27017.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from chat_orchestrator._jsonctx import MAX_CONTEXT_DEPTH
from chat_orchestrator.errors import CorruptStateError
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import DictSeedManager, counter_orchestrator

CHAT = "corrupt chat"


def deep_json(levels: int) -> str:
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


#: Context texts no write could have produced.
BAD_CONTEXT_TEXTS = {
    "nan": '{"x":NaN}',
    "infinity": '{"x":[-Infinity]}',
    "too deep": deep_json(MAX_CONTEXT_DEPTH + 1),
    "depth 2000": deep_json(2000),
    "lone surrogate": '{"x":"\\ud800"}',
    "not an object": "[1]",
}


def planter(manager: StateManager) -> tuple[Callable[[str | None], None], Callable[[], Any]]:
    """(plant(context_text or None for "missing"), raw()) for the manager's real store."""
    if isinstance(manager, InMemoryStateManager):

        def plant_memory(text: str | None) -> None:
            manager._records[CHAT] = ("s", "" if text is None else text, 1, 0.0)

        return plant_memory, lambda: manager._records.get(CHAT)
    if isinstance(manager, FileStateManager):
        path = manager.path_for(CHAT)

        def plant_file(text: str | None) -> None:
            context = "" if text is None else f',"context":{text}'
            path.write_text(
                f'{{"format":1,"chat_id":"{CHAT}","state_id":"s","version":1{context}}}'
            )

        return plant_file, path.read_bytes
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
    from chat_orchestrator.state_managers.redis import RedisStateManager

    if isinstance(manager, RedisStateManager):
        client = manager._client
        record_key, _ = manager.keys_for(CHAT)

        def plant_redis(text: str | None) -> None:
            fields = {"v": 1, "s": "s"} | ({} if text is None else {"c": text})
            client.hset(record_key, mapping=fields)  # type: ignore[arg-type]

        return plant_redis, lambda: client.hgetall(record_key)
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

    if isinstance(manager, SQLiteStateManager):
        import sqlite3

        def plant_sqlite(text: str | None) -> None:
            with sqlite3.connect(manager.path) as db:
                db.execute(
                    "INSERT INTO chats (id, state, context, version, updated) VALUES (?,?,?,1,0)",
                    (CHAT, "s", text),
                )

        def raw_sqlite() -> Any:
            with sqlite3.connect(manager.path) as db:
                return db.execute("SELECT * FROM chats WHERE id = ?", (CHAT,)).fetchall()

        return plant_sqlite, raw_sqlite
    from chat_orchestrator.state_managers.postgres import PostgresStateManager

    if isinstance(manager, PostgresStateManager):
        table = manager._names.table("chats")
        manager.setup()

        def plant_postgres(text: str | None) -> None:
            manager._sync.pool.wait()
            with manager._sync.connection() as conn:
                conn.execute(
                    f"INSERT INTO {table} (id, state, context, version, updated) "
                    "VALUES (%s, 's', %s, 1, 0)",
                    (CHAT, text),
                )

        def raw_postgres() -> Any:
            with manager._sync.connection() as conn:
                return conn.execute(
                    f"SELECT id, state, context, version, updated, lease_token FROM {table} "
                    "WHERE id = %s",
                    (CHAT,),
                ).fetchall()

        return plant_postgres, raw_postgres
    assert isinstance(manager, MongoDBStateManager)
    collection = manager._collection

    def plant_mongo(text: str | None) -> None:
        doc: dict[str, Any] = {"_id": CHAT, "s": "s", "v": 1, "lu": 0}
        if text is not None:
            doc["c"] = text
        collection.insert_one(doc)

    return plant_mongo, lambda: collection.find_one({"_id": CHAT}, {"lk": 0, "lu": 0})


@pytest.mark.parametrize("name", [*sorted(BAD_CONTEXT_TEXTS), "missing context"])
def test_undecodable_records_are_corrupt_and_left_alone(manager: StateManager, name: str) -> None:
    if isinstance(manager, DictSeedManager):
        pytest.skip("a seed-only manager stores dicts, not text")
    plant, raw = planter(manager)
    plant(BAD_CONTEXT_TEXTS.get(name))
    before = raw()
    started = time.monotonic()
    for read in (manager.load, manager.get_state, lambda c: manager.begin_turn(c).close()) * 2:
        with pytest.raises(CorruptStateError) as raised:
            read(CHAT)
        assert repr(CHAT) in str(raised.value), "the error must name the chat"
    orchestrator = counter_orchestrator(manager, RecordingSender())
    with pytest.raises(CorruptStateError):
        orchestrator.handle_message(CHAT, "hi")
    # A failed read must not leave the chat leased: the second turn would wait for the lease.
    assert time.monotonic() - started < 2.0, "a failed read left the chat leased"
    assert raw() == before, "the corrupt record was changed"
