"""Operator tools (``chat_orchestrator.operators``) on every built-in store, real servers."""

from __future__ import annotations

import io
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator import operators as ops
from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import (
    ChatImportError,
    StoreCapabilityError,
    UnknownStateError,
    VersionConflictError,
)
from chat_orchestrator.state_managers.base import StateManager, StateUpdate
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import DictSeedManager, counter_orchestrator
from tests.servers import NxServer, PostgresServer, RedisServer, create_cluster

KINDS = ["memory", "file", "sqlite", "redis", "mongo", "postgres"]
HOSTILE = ["plain", "a\x00b", "{tag}:s:x", "*?[]\\", "../../etc/passwd", '{"$ne": null}', "é🙂"]
#: A context whose JSON text must survive every store byte for byte.
TRICKY: dict[str, Any] = {
    "f": 0.1,
    "big": 1e300,
    "neg0": -0.0,
    "int": 2**70,
    "text": "é\u2028\u2029\x00\r\n\t\"'\\🙂",
    "$where": {"a.b": [1, None, True, {"": []}]},
}
_unique = itertools.count()


def _hostile(store: StateManager) -> list[str]:
    """HOSTILE, with a control character for NUL in a store that refuses NUL (PostgreSQL)."""
    return [i if store.stores_nul else i.replace("\x00", "\x01") for i in HOSTILE]


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateManager:
    if kind == "memory":
        return InMemoryStateManager()
    if kind == "file":
        return FileStateManager(tmp_path / f"states{next(_unique)}")
    if kind == "sqlite":
        return SQLiteStateManager(tmp_path / f"chats{next(_unique)}.db", lock_lease=5)
    if kind == "redis":
        from chat_orchestrator.state_managers.redis import RedisStateManager

        return RedisStateManager(url=request.getfixturevalue("redis_url"), lock_lease=5)
    if kind == "postgres":
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        server: PostgresServer = request.getfixturevalue("postgres_server")
        schema = request.getfixturevalue("postgres_schema")
        return PostgresStateManager(
            server.url, schema=schema, table_prefix=f"p{next(_unique)}_", lock_lease=5
        )
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager

    nx: NxServer = request.getfixturevalue("nx_server")
    database = f"ops_{os.getpid()}_{next(_unique)}"
    return MongoDBStateManager(nx.uri, database=database, lock_lease=5)


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateManager]:
    manager = _open(request.param, tmp_path, request)
    yield manager
    manager.close()


def _put(store: StateManager, chat_id: str, state_id: str, context: dict[str, Any]) -> int:
    record = store.load(chat_id)
    expected = 0 if record is None else record.version
    return store.save(chat_id, state_id, context, expected_version=expected)


def test_iter_chats_lists_every_chat_with_state_version_and_time(store: StateManager) -> None:
    before = time.time() - 1
    ids = _hostile(store)
    for number, chat_id in enumerate(ids):
        _put(store, chat_id, "even" if number % 2 == 0 else "odd", {"n": number})
    _put(store, "plain", "even", {"n": 99})  # version 2
    listed = {info.chat_id: info for info in store.iter_chats()}
    assert set(listed) == set(ids)
    assert listed["plain"].version == 2
    assert listed[ids[1]].state_id == "odd"
    for info in listed.values():
        assert info.updated_at is not None
        assert before <= info.updated_at <= time.time() + 1
    evens = {info.chat_id for info in ops.list_chats(store, state="even")}
    assert evens == {chat_id for n, chat_id in enumerate(ids) if n % 2 == 0}
    assert list(store.iter_chats(state="nowhere")) == []


def test_idle_filter_picks_chats_without_recent_writes(store: StateManager) -> None:
    _put(store, "old", "s", {})
    time.sleep(0.3)
    written = time.time()
    time.sleep(0.3)
    _put(store, "new", "s", {})
    idle = {info.chat_id for info in store.iter_chats(idle_for=time.time() - written)}
    assert idle == {"old"}
    assert {info.chat_id for info in store.iter_chats(idle_for=0)} == {"old", "new"}
    assert list(store.iter_chats(idle_for=3600)) == []
    with pytest.raises(ValueError, match="idle_for"):
        store.iter_chats(idle_for=-1)


def test_listing_streams_past_one_page(store: StateManager) -> None:
    if isinstance(store, SQLiteStateManager):
        store.list_page_size = 7
    for attribute in ("list_batch",):
        if hasattr(store, attribute):
            setattr(store, attribute, 7)
    ids = {f"chat-{n}" for n in range(50)}
    for chat_id in ids:
        store.set_state(chat_id, "s", {})
    iterator = store.iter_chats()
    first = next(iterator)  # lazily: a generator, not a list built up front
    assert first.chat_id in ids
    rest = list(iterator)
    assert {first.chat_id} | {info.chat_id for info in rest} == ids
    assert all(info.updated_at is not None for info in rest)  # the seed write stamps it too


def test_seed_only_manager_cannot_list_chats() -> None:
    seed = DictSeedManager()
    seed.set_state("a", "s", {})
    with pytest.raises(StoreCapabilityError, match="cannot list chats"):
        list(ops.list_chats(seed))
    with pytest.raises(StoreCapabilityError, match="cannot list chats"):
        ops.export_chats(seed, io.StringIO())
    # What needs no listing still works on it, conditionally.
    snapshot = ops.show_chat(seed, "a")
    assert snapshot is not None
    assert snapshot.updated_at is None
    assert ops.set_chat_state(seed, "a", "t") > 0
    assert ops.reset_chat(seed, "a")
    assert seed.data == {}


def test_show_set_and_reset_one_chat(store: StateManager) -> None:
    orchestrator = counter_orchestrator(store, RecordingSender())
    _put(store, "c", "start", TRICKY)
    before = ops.show_chat(store, "c")
    assert before is not None
    assert before.context_json == encode_context(TRICKY)
    assert ops.show_chat(store, "missing") is None
    with pytest.raises(UnknownStateError, match="no state 'nowhere'"):
        ops.set_chat_state(store, "c", "nowhere", flow=orchestrator)
    with pytest.raises(VersionConflictError):
        ops.set_chat_state(store, "c", "start", expected_version=before.version + 5)
    after_refusals = ops.show_chat(store, "c")
    assert after_refusals is not None
    assert (after_refusals.version, after_refusals.context_json) == (
        before.version,
        before.context_json,
    )
    version = ops.set_chat_state(store, "c", "start", flow=orchestrator)
    moved = ops.show_chat(store, "c")
    assert moved is not None
    assert (moved.version, moved.state_id) == (version, "start")
    assert moved.context_json == before.context_json  # the context is kept byte for byte
    with pytest.raises(VersionConflictError):
        ops.reset_chat(store, "c", expected_version=before.version)
    assert store.load("c") is not None
    assert ops.reset_chat(store, "c", expected_version=version)
    assert store.load("c") is None
    assert not ops.reset_chat(store, "c")


@pytest.mark.parametrize("change", ["set", "reset"])
def test_an_operator_change_never_overwrites_a_live_turn(store: StateManager, change: str) -> None:
    _put(store, "c", "start", {"n": 1})
    turn = store.begin_turn("c")  # a live turn: holds the chat, read version 1
    outcome: list[BaseException | int | bool] = []

    def operator() -> None:
        try:
            if change == "set":
                outcome.append(ops.set_chat_state(store, "c", "elsewhere"))
            else:
                outcome.append(ops.reset_chat(store, "c"))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=operator)
    worker.start()
    time.sleep(0.3)
    assert not outcome, "the operator must wait for the live turn"
    turn.commit(StateUpdate("start", {"n": 2}, '{"n":2}'))
    turn.close()
    worker.join(30)
    assert isinstance(outcome[0], VersionConflictError)
    record = store.load("c")
    assert record is not None
    assert (record.state_id, record.context) == ("start", {"n": 2})


def test_a_turn_that_read_before_an_operator_change_cannot_overwrite_it(
    store: StateManager,
) -> None:
    _put(store, "c", "start", {"n": 1})
    version = ops.set_chat_state(store, "c", "elsewhere")
    # A worker whose expired lease lets it write late: the version check refuses it.
    with pytest.raises(VersionConflictError):
        store.compare_and_set("c", "start", {"n": 2}, expected_version=version - 1)
    record = store.load("c")
    assert record is not None
    assert record.state_id == "elsewhere"


def test_export_then_import_restores_exactly(store: StateManager, tmp_path: Path) -> None:
    ids = _hostile(store)
    for number, chat_id in enumerate(ids):
        _put(store, chat_id, f"s{number}", {**TRICKY, "n": number})
    backup = tmp_path / "backup.jsonl"
    with backup.open("w", encoding="utf-8", newline="\n") as out:
        assert ops.export_chats(store, out) == len(ids)
    saved = {chat_id: ops.show_chat(store, chat_id) for chat_id in ids}
    for chat_id in ids[:3]:
        ops.reset_chat(store, chat_id)
    with backup.open(encoding="utf-8", newline="\n") as source:
        report = ops.import_chats(store, source)
    assert (report.created, report.unchanged, report.updated) == (3, len(ids) - 3, 0)
    for chat_id, snapshot in saved.items():
        now = ops.show_chat(store, chat_id)
        assert snapshot is not None
        assert now is not None
        assert (now.state_id, now.context_json) == (snapshot.state_id, snapshot.context_json)


def test_import_refuses_to_overwrite_newer_records_unless_forced(
    store: StateManager, tmp_path: Path
) -> None:
    _put(store, "c", "start", {"n": 1})
    backup = io.StringIO()
    ops.export_chats(store, backup)
    time.sleep(0.05)
    counter_orchestrator(store, RecordingSender()).handle_message("c", None)  # newer: n=2
    backup.seek(0)
    report = ops.import_chats(store, backup)
    assert report.skipped_newer == ["c"]
    assert store.get_state("c") == ("start", {"n": 2})
    backup.seek(0)
    forced = ops.import_chats(store, backup, force=True)
    assert forced.updated == 1
    assert store.get_state("c") == ("start", {"n": 1})


def test_a_bad_export_line_fails_the_import_before_anything_is_written(
    store: StateManager, tmp_path: Path
) -> None:
    good = '{"chat_id":"a","state_id":"s","version":1,"updated_at":null,"context":{}}\n'
    for bad, reason in [
        ("not json", "line 2"),
        ('{"chat_id":"b"}', "missing"),
        ('{"chat_id":7,"state_id":"s","version":1,"updated_at":null,"context":{}}', "str"),
        ('{"chat_id":"b","state_id":"s","version":1,"updated_at":null,"context":[]}', "object"),
        ('{"chat_id":"b","state_id":"s","version":1,"updated_at":null,"context":{"x":NaN}}', "NaN"),
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(good + bad + "\n", encoding="utf-8")
        with path.open(encoding="utf-8") as source, pytest.raises(ChatImportError, match=reason):
            ops.import_chats(store, source)
        assert store.load("a") is None


# -- moving between stores ------------------------------------------------------------------
def _move(source: StateManager, target: StateManager) -> list[str]:
    buffer = io.StringIO()
    ops.export_chats(source, buffer)
    buffer.seek(0)
    report = ops.import_chats(target, buffer)
    assert report.conflicts == []
    assert report.skipped_newer == []
    return sorted(buffer.getvalue().splitlines())


def _context_texts(store: StateManager) -> dict[str, tuple[str, str]]:
    found = {}
    for info in store.iter_chats():
        snapshot = ops.show_chat(store, info.chat_id)
        assert snapshot is not None
        found[info.chat_id] = (snapshot.state_id, snapshot.context_json)
    return found


def test_move_file_sqlite_redis_mongo_and_back_byte_identical(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    chain = [_open(kind, tmp_path, request) for kind in ("file", "sqlite", "redis", "mongo")]
    first = chain[0]
    for number, chat_id in enumerate(HOSTILE):
        _put(first, chat_id, f"s{number}", {**TRICKY, "n": number})
    original = _context_texts(first)
    for source, target in itertools.pairwise([*chain, first]):
        _move(source, target)
        assert _context_texts(target) == original
    # The raw stored text, not only what load() decodes: SQLite's column is the very text.
    sqlite = chain[1]
    assert isinstance(sqlite, SQLiteStateManager)
    raw = sqlite._connection().db.execute("SELECT id, context FROM chats").fetchall()
    assert dict(raw) == {chat_id: text for chat_id, (_, text) in original.items()}
    for store in chain:
        store.close()


# -- Redis specifics ---------------------------------------------------------------------------
def test_redis_lists_old_records_without_a_timestamp_and_only_its_own_prefix(
    redis_url: str,
) -> None:
    import redis

    from chat_orchestrator.state_managers.redis import RedisStateManager

    store = RedisStateManager(url=redis_url, key_prefix="p*[x]:")
    nested = RedisStateManager(url=redis_url, key_prefix="p*[x]:m:")
    other = RedisStateManager(url=redis_url, key_prefix="pX:")
    store.set_state("new", "s", {})
    nested.set_state("nested", "s", {})
    other.set_state("other", "s", {})
    # A record written before ``t`` existed (an older chat-orchestrator): listable, idle.
    record_key, _ = store.keys_for("legacy")
    raw = redis.Redis.from_url(redis_url)
    raw.hset(record_key, mapping={"v": 3, "s": "old", "c": "{}", "w": "x"})
    raw.set("p*[x]:{0123456789abcdef}:s:forged", "not a chat")  # fits the pattern, not a hash
    raw.hset(b"p*[x]:{0123456789abcdef}:s:\xff", mapping={"v": 1, "s": "x"})  # not UTF-8
    raw.hset("p*[x]:{0123456789abcdef}:s:", mapping={"v": 1, "s": "x"})  # a tag of nothing
    listed = {info.chat_id: info for info in store.iter_chats()}
    assert set(listed) == {"new", "legacy"}
    assert listed["legacy"].updated_at is None
    assert listed["legacy"].version == 3
    assert [info.chat_id for info in store.iter_chats(idle_for=3600)] == ["legacy"]
    assert {info.chat_id for info in nested.iter_chats()} == {"nested"}
    # Of unknown age, so an import does not overwrite it unless forced.
    line = '{"chat_id":"legacy","state_id":"s","version":1,"updated_at":1.0,"context":{"a":1}}\n'
    assert ops.import_chats(store, io.StringIO(line)).skipped_newer == ["legacy"]
    assert store.get_state("legacy") == ("old", {})
    assert ops.import_chats(store, io.StringIO(line), force=True).updated == 1
    assert store.get_state("legacy") == ("s", {"a": 1})
    raw.close()


@pytest.mark.slow
def test_redis_cluster_listing_scans_every_master(tmp_path: Path) -> None:
    from chat_orchestrator.stores import open_store

    nodes = [RedisServer(tmp_path / f"n{i}", cluster=True).start() for i in range(3)]
    try:
        create_cluster(nodes)
        store = open_store(f"redis+cluster://127.0.0.1:{nodes[0].port}")
        ids = {f"chat-{n}" for n in range(60)} | set(HOSTILE)
        for chat_id in ids:
            store.set_state(chat_id, "s", {"id": chat_id})
        assert {info.chat_id for info in store.iter_chats()} == ids
        other = open_store(f"sqlite:///{tmp_path}/copy.db")
        _move(store, other)
        assert _context_texts(other) == _context_texts(store)
        store.close()
    finally:
        for node in nodes:
            node.stop()


def test_chat_info_matches_the_listing(store: StateManager) -> None:
    _put(store, "c", "s", {"a": 1})
    info = store.chat_info("c")
    assert info is not None
    assert [info] == list(store.iter_chats())
    assert store.chat_info("none") is None


def test_readme_operators_example_runs(tmp_path: Path) -> None:
    from tests.helpers import run_python
    from tests.test_readme import readme_block

    result = run_python(readme_block("<!-- operators-example -->"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("['u1'] 1 created, 0 updated, 0 unchanged, 0 skipped")
