"""PostgreSQL: opening, schema and migrations, prefixes, ids, pools, the async path, operators.

Against the real server the fixtures start (``tests/servers.py``: initdb + pg_ctl on a free
loopback port), or the one ``POSTGRES_URL`` / ``CHAT_PG_URL`` names.
"""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from chat_orchestrator import operators as ops
from chat_orchestrator.errors import (
    InvalidChatIdError,
    InvalidClaimKeyError,
    InvalidStateIdError,
    StateManagerError,
    StoreURLError,
    VersionConflictError,
)
from chat_orchestrator.state_managers import _postgres_sql as sql
from chat_orchestrator.state_managers.postgres import PostgresStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.stores import open_store
from chat_orchestrator.testing import RecordingSender
from tests.async_workers import async_counter_orchestrator
from tests.helpers import counter_orchestrator
from tests.servers import POSTGRES_PASSWORD, PostgresServer


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


@pytest.fixture
def manager(url: str, postgres_schema: str) -> Iterator[PostgresStateManager]:
    store = PostgresStateManager(url, schema=postgres_schema, lock_lease=2)
    yield store
    store.close()


def tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {row[0] for row in rows}


# -- opening ---------------------------------------------------------------------------------
def test_open_store_takes_postgresql_and_postgres_urls_with_options(
    url: str, postgres_schema: str
) -> None:
    for scheme in ("postgresql", "postgres"):
        target = url.replace("postgresql", scheme, 1)
        store = open_store(
            f"{target}?schema={postgres_schema}&table_prefix=bot_&lock_lease=3&lock_timeout=9"
            "&connect_timeout=4&statement_timeout=2&max_size=3&application_name=co-test"
        )
        assert isinstance(store, PostgresStateManager)
        assert store._lease_ms == 3000
        assert store._lock_timeout == 9
        store.set_state("c", "s", {"n": 1})
        assert store.get_state("c") == ("s", {"n": 1})
        store.close()
    assert {"bot_chats", "bot_claims", "bot_schema_version"} <= tables(url, postgres_schema)


def test_a_libpq_conninfo_string_opens_the_store(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(postgres_server.url)
    conninfo = " ".join(f"{key}={value}" for key, value in params.items())
    store = PostgresStateManager(conninfo, schema=postgres_schema)
    store.set_state("c", "s", {})
    assert store.load("c") is not None
    assert POSTGRES_PASSWORD not in repr(store)
    store.close()


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("schema=bad-name", "schema"),
        ("table_prefix=a;drop", "table_prefix"),
        ("lock_lease=-1", "lock_lease"),
        ("lock_lease=soon", "lock_lease"),
        ("connect_timeout=0", "connect_timeout"),
        ("max_size=0", "max_size"),
        ("no_such_libpq_option=1", "could not be parsed"),
    ],
)
def test_bad_url_options_are_refused_without_the_password(url: str, query: str, match: str) -> None:
    with pytest.raises(StateManagerError, match=match) as raised:
        open_store(f"{url}?{query}")
    assert POSTGRES_PASSWORD not in str(raised.value)
    assert POSTGRES_PASSWORD not in repr(raised.value.args)


def test_hostile_schema_and_prefix_names_are_refused() -> None:
    for schema in ['x"; DROP TABLE y; --', "a.b", "", "1a", "x" * 64]:
        with pytest.raises(ValueError, match="schema"):
            sql.Names(schema, "p_")
    for prefix in ['p"', "p-", "p.", "x" * 60]:
        with pytest.raises(ValueError, match="table_prefix"):
            sql.Names(None, prefix)


# -- schema: set up on first use, explicit, versioned, idempotent -------------------------------
def test_tables_are_created_on_first_use_and_setup_is_idempotent(
    url: str, postgres_schema: str
) -> None:
    store = PostgresStateManager(url, schema=postgres_schema)
    assert tables(url, postgres_schema) == set()  # nothing sent until the first operation
    assert store.load("c") is None
    assert tables(url, postgres_schema) == {
        "chat_chats",
        "chat_claims",
        "chat_schema_version",
        # Step 2: the message pipeline's tables come with the schema.
        "chat_pipe_inbox",
        "chat_pipe_work",
        "chat_pipe_dead",
    }
    store.set_state("c", "s", {"kept": True})
    assert store.setup() == len(sql.MIGRATIONS)
    assert store.setup() == len(sql.MIGRATIONS)
    assert store.get_state("c") == ("s", {"kept": True}), "setup must never drop data"
    with psycopg.connect(url) as conn:
        rows = conn.execute(f'SELECT version FROM "{postgres_schema}".chat_schema_version')
        assert rows.fetchall() == [(len(sql.MIGRATIONS),)]
    store.close()


def test_concurrent_setups_from_many_managers_agree(url: str, postgres_schema: str) -> None:
    stores = [PostgresStateManager(url, schema=postgres_schema) for _ in range(6)]

    async def main() -> list[int]:
        return list(await asyncio.gather(*(store.setup_async() for store in stores)))

    assert asyncio.run(main()) == [len(sql.MIGRATIONS)] * 6
    for store in stores:
        store.close()


def test_a_store_of_a_newer_version_is_refused_and_left_alone(
    url: str, postgres_schema: str
) -> None:
    store = PostgresStateManager(url, schema=postgres_schema)
    store.set_state("c", "s", {})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'UPDATE "{postgres_schema}".chat_schema_version SET version = 99')
    newer = PostgresStateManager(url, schema=postgres_schema)
    with pytest.raises(StateManagerError, match="schema version 99 is newer"):
        newer.load("c")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'UPDATE "{postgres_schema}".chat_schema_version SET version = 1')
    assert newer.get_state("c") == ("s", {})
    store.close()
    newer.close()


def test_an_older_store_is_migrated_forward_without_losing_rows(
    url: str, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStateManager(url, schema=postgres_schema)
    store.set_state("c", "s", {"n": 1})
    store.close()
    # A later version of the library adds a step: it runs once, and keeps every chat.
    step = ("ALTER TABLE {chats} ADD COLUMN IF NOT EXISTS note text",)
    monkeypatch.setattr(sql, "MIGRATIONS", (*sql.MIGRATIONS, step))
    later = PostgresStateManager(url, schema=postgres_schema)
    assert later.setup() == len(sql.MIGRATIONS)
    assert later.get_state("c") == ("s", {"n": 1})
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f'SELECT c.note, v.version FROM "{postgres_schema}".chat_schema_version AS v, '
            f'"{postgres_schema}".chat_chats AS c'
        ).fetchall()
    assert rows == [(None, len(sql.MIGRATIONS))]
    later.close()


def test_two_prefixes_or_two_schemas_share_a_database(url: str, postgres_schema: str) -> None:
    one = PostgresStateManager(url, schema=postgres_schema, table_prefix="one_")
    two = PostgresStateManager(url, schema=postgres_schema, table_prefix="two_")
    one.set_state("c", "a", {})
    two.set_state("c", "b", {})
    assert one.get_state("c") == ("a", {})
    assert two.get_state("c") == ("b", {})
    assert one.claim("k", 60) is True
    assert two.claim("k", 60) is True
    one.close()
    two.close()


def test_dropped_tables_are_a_clear_error_and_a_dropped_schema_is_set_up_again(
    manager: PostgresStateManager, url: str, postgres_schema: str
) -> None:
    manager.set_state("c", "s", {})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{postgres_schema}".chat_chats')
    for _ in range(2):
        with pytest.raises(StateManagerError, match="missing"):
            manager.load("c")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{postgres_schema}" CASCADE')
    assert manager.load("c") is None  # the next operation set the whole store up again


# -- ids ---------------------------------------------------------------------------------------
def test_nul_in_ids_is_refused_before_anything_is_sent(manager: PostgresStateManager) -> None:
    manager.set_state("a", "s", {"kept": 1})
    calls: list[Any] = [
        lambda: manager.set_state("a\x00", "s", {}),
        lambda: manager.load("\x00"),
        lambda: manager.begin_turn("a\x00b"),
        lambda: manager.save("a\x00", "s", {}, expected_version=0),
        lambda: manager.chat_info("a\x00"),
        lambda: manager.delete_state("a\x00"),
    ]
    for call in calls:
        with pytest.raises(InvalidChatIdError, match="NUL"):
            call()
    with pytest.raises(InvalidStateIdError, match="NUL"):
        manager.set_state("a", "s\x00", {})
    with pytest.raises(InvalidClaimKeyError, match="NUL"):
        manager.claim("k\x00", 60)
    assert manager.get_state("a") == ("s", {"kept": 1})
    # NUL inside a context is data, escaped in the JSON text, and round-trips.
    manager.set_state("a", "s", {"t": "a\x00b"})
    assert manager.get_state("a") == ("s", {"t": "a\x00b"})


# -- credentials -------------------------------------------------------------------------------
def test_credentials_never_reach_a_repr_a_log_line_or_an_error(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = PostgresStateManager(postgres_server.url, connect_timeout=2)
    assert POSTGRES_PASSWORD not in repr(good)
    good.close()
    wrong = postgres_server.url.replace(POSTGRES_PASSWORD, "Wr0ng-Secret-pw")
    for target in (
        wrong,
        wrong.replace("127.0.0.1", "127.0.0.1:1", 1).replace(f":{postgres_server.port}", "", 1),
    ):
        store = PostgresStateManager(target, connect_timeout=2)
        with pytest.raises(StateManagerError) as raised:
            store.load("c")
        store.close()
        text = f"{raised.value} {raised.value!r} {store!r}"
        assert "Wr0ng-Secret-pw" not in text
    for record in caplog.records:
        assert "Wr0ng-Secret-pw" not in record.getMessage()
        assert POSTGRES_PASSWORD not in record.getMessage()


# -- pools of the caller's --------------------------------------------------------------------
def test_a_callers_sync_pool_serves_both_paths_and_stays_open(
    url: str, postgres_schema: str
) -> None:
    pool: ConnectionPool[Any] = ConnectionPool(
        url, min_size=1, max_size=3, check=ConnectionPool.check_connection, open=True
    )
    store = PostgresStateManager(pool=pool, schema=postgres_schema)
    bot = counter_orchestrator(store, RecordingSender())
    bot.handle_message("c", "x")
    asyncio.run(async_counter_orchestrator(store).handle_message_async("c", "x"))
    assert store.get_state("c") == ("start", {"n": 2})
    store.close()
    with pool.connection() as conn:  # the caller's pool is the caller's to close
        conn.execute("SELECT 1")
    pool.close()


def test_a_callers_async_pool_runs_the_async_path(url: str, postgres_schema: str) -> None:
    async def main() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
        )
        await pool.open()
        store = PostgresStateManager(async_pool=pool, schema=postgres_schema)
        bot = async_counter_orchestrator(store)
        for _ in range(3):
            await bot.handle_message_async("c", "x")
        record = await store.load_async("c")
        assert record is not None
        assert record.context == {"n": 3}
        assert pool.get_stats()["requests_num"] >= 6, "the async path used the caller's pool"
        await store.close_async()
        store.close()
        await pool.close()

    asyncio.run(main())


def test_the_async_path_is_native_and_never_uses_threads(
    manager: PostgresStateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async path ran a blocking call in a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    bot = async_counter_orchestrator(manager)

    async def main() -> None:
        for _ in range(5):
            await bot.handle_message_async("c", "x")
        assert await manager.claim_async("k", 60) is True
        assert await manager.claim_async("k", 60) is False
        await manager.release_claim_async("k")
        assert await manager.claim_async("k", 60) is True
        await manager.close_async()

    asyncio.run(main())
    assert manager.get_state("c") == ("start", {"n": 5})


def test_no_connection_is_held_while_a_step_runs(manager: PostgresStateManager) -> None:
    manager.set_state("c", "s", {})
    turns = [manager.begin_turn(f"c{n}") for n in range(30)]  # 30 chats mid-step
    stats = manager._sync.pool.get_stats()
    assert stats.get("pool_size", 0) <= 10, "a turn kept its connection across the step"
    for turn in turns:
        turn.close()


# -- claims ------------------------------------------------------------------------------------
def test_expired_claims_are_reclaimable_and_swept(manager: PostgresStateManager) -> None:
    assert manager.claim("k", 0.05) is True
    assert manager.claim("k", 60) is False
    import time

    time.sleep(0.1)
    assert manager.claim("k", 60) is True, "an expired claim must be claimable again"
    for n in range(5):
        manager.claim(f"short{n}", 0.01)
    time.sleep(0.05)
    assert manager.sweep_claims() == 5
    assert manager.claim("k", 60) is False, "the sweep took a live claim"


# -- operators ---------------------------------------------------------------------------------
def test_conditional_delete_refuses_a_changed_record(manager: PostgresStateManager) -> None:
    manager.set_state("c", "s", {})
    record = manager.load("c")
    assert record is not None
    manager.set_state("c", "t", {})
    with pytest.raises(VersionConflictError):
        manager.delete_if("c", expected_version=record.version)
    assert manager.get_state("c") == ("t", {})
    manager.delete_if("c", expected_version=record.version + 1)
    assert manager.load("c") is None


def test_listing_streams_in_bounded_memory(
    manager: PostgresStateManager, url: str, postgres_schema: str
) -> None:
    manager.setup()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{postgres_schema}".chat_chats (id, state, context, version, updated)'
            " SELECT 'chat-' || n, 's', '{}', 1, 0 FROM generate_series(1, 50000) AS n"
        )
    manager.list_batch = 500
    tracemalloc.start()
    try:
        count = 0
        for _ in manager.iter_chats():
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    # 50,000 ChatInfo rows held at once would take several MB; a page of 500 far less.
    assert peak < 2_000_000, f"peak {peak} bytes: the listing is not streaming"
    assert sum(1 for _ in manager.iter_chats(state="nowhere")) == 0
    assert sum(1 for _ in manager.iter_chats(idle_for=3600)) == 50_000


def test_move_from_sqlite_to_postgres_and_back_byte_identical(
    manager: PostgresStateManager, tmp_path: Any
) -> None:
    source = SQLiteStateManager(tmp_path / "a.db")
    ids = ["plain", "../../etc/passwd", '{"$ne": null}', "é🙂", "a\x01b"]
    for number, chat_id in enumerate(ids):
        source.set_state(chat_id, f"s{number}", {"n": number, "t": "\u2028\x00", "f": 0.1})
    dump = tmp_path / "dump.jsonl"
    with dump.open("w", encoding="utf-8", newline="\n") as out:
        ops.export_chats(source, out)
    with dump.open(encoding="utf-8", newline="\n") as given:
        assert ops.import_chats(manager, given).created == len(ids)
    back = SQLiteStateManager(tmp_path / "b.db")
    with dump.open("w", encoding="utf-8", newline="\n") as out:
        ops.export_chats(manager, out)
    with dump.open(encoding="utf-8", newline="\n") as given:
        ops.import_chats(back, given)
    for chat_id in ids:
        before, after = ops.show_chat(source, chat_id), ops.show_chat(back, chat_id)
        assert before is not None
        assert after is not None
        assert before.context_json == after.context_json


def test_store_url_errors_are_ours() -> None:
    with pytest.raises(StoreURLError):
        open_store("postgresql://u:pw@127.0.0.1:1/db?lock_lease=abc")


def test_cli_store_init_creates_the_tables_idempotently(
    url: str, postgres_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chat_orchestrator.cli import main

    target = f"{url}?schema={postgres_schema}&table_prefix=cli_"
    for _ in range(2):
        assert main(["store", "init", "--store", target]) == 0
        out = capsys.readouterr().out
        assert f"schema version {len(sql.MIGRATIONS)}" in out
        assert POSTGRES_PASSWORD not in out
    assert {"cli_chats", "cli_claims", "cli_schema_version"} <= tables(url, postgres_schema)
    assert main(["store", "init", "--store", "memory:"]) == 0
    assert "nothing to set up" in capsys.readouterr().out
