"""open_store(url): every built-in scheme, options, bad URLs, a user's own scheme, and
credentials that never reach a repr, a log line or an error (chained causes included)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from chat_orchestrator.errors import (
    StateManagerError,
    StateManagerUnavailableError,
    StoreURLError,
)
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.stores import open_store, redact_url, register_store
from chat_orchestrator.testing import RecordingSender
from tests.helpers import counter_orchestrator, run_python
from tests.servers import NxServer, RedisServer, create_cluster
from tests.test_readme import readme_block

SECRET = "s3cr3t-Pw"


def turns_work(store: StateManager) -> None:
    orchestrator = counter_orchestrator(store, RecordingSender())
    orchestrator.handle_message("c", None)
    orchestrator.handle_message("c", None)
    assert store.get_state("c") == ("start", {"n": 2})


def test_memory_file_and_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory:"), InMemoryStateManager)
    assert isinstance(open_store("memory://"), InMemoryStateManager)
    files = open_store(f"file://{tmp_path}/states?fsync=false")
    assert isinstance(files, FileStateManager)
    assert files.state_dir == tmp_path / "states"
    assert files._fsync is False
    turns_work(files)
    spaced = open_store(f"file://{tmp_path}/with%20space")
    assert isinstance(spaced, FileStateManager)
    assert spaced.state_dir == tmp_path / "with space"
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db?synchronous=normal&lock_lease=2")
    assert isinstance(absolute, SQLiteStateManager)
    assert (absolute.path, absolute.synchronous) == (tmp_path / "abs.db", "NORMAL")
    turns_work(absolute)
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/chats.db")  # three slashes: relative, as SQLAlchemy
    assert isinstance(relative, SQLiteStateManager)
    assert relative.path == Path("rel/chats.db")
    assert (tmp_path / "rel" / "chats.db").exists()


def test_redis_and_mongodb_urls_open_working_stores(redis_url: str, nx_server: NxServer) -> None:
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
    from chat_orchestrator.state_managers.redis import RedisStateManager

    redis_store = open_store(redis_url)
    assert isinstance(redis_store, RedisStateManager)
    turns_work(redis_store)
    mongo_store = open_store(f"{nx_server.uri.rstrip('/')}/from_url_db")
    assert isinstance(mongo_store, MongoDBStateManager)
    assert mongo_store._collection.full_name == "from_url_db.chat_states"
    turns_work(mongo_store)


@pytest.mark.slow
def test_redis_cluster_url(tmp_path: Path) -> None:
    nodes = [RedisServer(tmp_path / f"n{i}", cluster=True).start() for i in range(3)]
    try:
        create_cluster(nodes)
        turns_work(open_store(f"redis+cluster://127.0.0.1:{nodes[1].port}"))
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("chats.db", "no scheme"),
        ("", "no scheme"),
        ("cassandra://db/chats", "unknown scheme 'cassandra'"),
        ("memory:extra", "nothing after"),
        ("file://host/dir", "a host is not allowed"),
        ("file:relative/dir", "absolute directory"),
        ("file:///d?fsync=maybe", "expected true or false"),
        ("sqlite:///:memory:", "use memory:"),
        ("sqlite://", "use memory:"),
        ("sqlite:///x.db?journal=off", "unknown option 'journal'"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous must be one of"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
    ],
)
def test_bad_urls_get_a_clear_error(url: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(StoreURLError, match=reason) as raised:
        open_store(url)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, StateManagerError)
    assert not (tmp_path / "x.db").exists()


def test_a_bad_redis_url_is_refused_by_the_redis_backend() -> None:
    with pytest.raises(StateManagerError, match="Port could not be cast"):
        open_store("redis://localhost:notaport/0")


def test_a_non_str_url_is_refused() -> None:
    with pytest.raises(StoreURLError, match="must be a str"):
        open_store(Path("chats.db"))  # type: ignore[arg-type]


def test_users_register_their_own_scheme() -> None:
    made: list[str] = []

    def opener(url: str) -> StateManager:
        made.append(url)
        return InMemoryStateManager()

    register_store("Test-Mine", opener)
    try:
        assert isinstance(open_store("test-mine://anything"), InMemoryStateManager)
        assert made == ["test-mine://anything"]
        with pytest.raises(ValueError, match="already registered"):
            register_store("test-mine", opener)

        def broken(url: str) -> StateManager:
            raise RuntimeError("driver exploded")

        register_store("test-mine", broken, replace=True)
        with pytest.raises(StoreURLError, match="RuntimeError: driver exploded"):
            open_store(f"test-mine://u:{SECRET}@h")
        with pytest.raises(ValueError, match="not a URL scheme"):
            register_store("no spaces", opener)
    finally:
        from chat_orchestrator import stores

        stores._OPENERS.pop("test-mine", None)


def test_redact_url_hides_passwords_and_secret_query_values() -> None:
    assert redact_url("redis://:pw@h:1/0?password=x&db=1") == "redis://:***@h:1/0?password=***&db=1"
    assert redact_url("mongodb://u:p%40ss@h1:1,h2:2/db") == "mongodb://u:***@h1:1,h2:2/db"
    assert redact_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"
    assert redact_url("redis://user@h") == "redis://user@h"
    assert SECRET not in redact_url(f"redis://u:{SECRET}@[::1/0")


@pytest.fixture
def secret_urls(redis_server: RedisServer, nx_server: NxServer, tmp_path: Path) -> list[str]:
    mongo_host = nx_server.uri.split("//", 1)[1].rstrip("/")
    return [
        f"memory://u:{SECRET}@",
        f"file://u:{SECRET}@localhost{tmp_path}/f",
        f"sqlite://u:{SECRET}@/{tmp_path}/s.db",
        f"sqlite:///{tmp_path}/s.db?password={SECRET}",
        f"redis://user:{SECRET}@127.0.0.1:{redis_server.port}/0",  # the server has no auth
        f"redis://127.0.0.1:{redis_server.port}/0?password={SECRET}",
        f"rediss://user:{SECRET}@127.0.0.1:1/0",  # nothing listens there
        f"redis://user:{SECRET}@127.0.0.1:notaport/0",
        f"redis+cluster://user:{SECRET}@127.0.0.1:1",
        f"mongodb://user:{SECRET}@{mongo_host}/secretdb?serverSelectionTimeoutMS=2000",
        f"mongodb+srv://user:{SECRET}@cluster0.example.invalid/db",
        f"postgresql://user:{SECRET}@db/chats",
    ]


def open_and_turn(url: str, seen: list[str]) -> str:
    """Open the store and run a turn; returns how far it got (every text goes to ``seen``)."""
    try:
        store = open_store(url)
    except StateManagerError as exc:
        seen.append("".join(traceback.format_exception(exc)))  # chained causes too
        return "refused"
    seen.append(repr(store))
    try:
        counter_orchestrator(store, RecordingSender()).handle_message("c", None)
    except StateManagerError as exc:
        seen.append("".join(traceback.format_exception(exc)))
        return type(exc).__name__
    return "ok"


def test_credentials_never_reach_reprs_logs_or_errors(
    secret_urls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    outcomes = [open_and_turn(url, seen) for url in secret_urls]
    seen.extend(record.getMessage() for record in caplog.records)
    leaks = [text for text in seen if SECRET in text]
    assert leaks == []
    # The URLs reached their drivers: Redis and MongoDB opened and then failed to
    # authenticate or connect, and each failure was one of ours.
    assert outcomes.count("refused") <= len(secret_urls) - 3
    assert StateManagerUnavailableError.__name__ in outcomes


def test_a_redis_password_in_the_query_stays_out_of_the_repr(redis_url: str) -> None:
    assert SECRET not in repr(open_store(f"{redis_url}?password={SECRET}"))


def test_readme_sqlite_example_runs(tmp_path: Path) -> None:
    result = run_python(readme_block("<!-- sqlite-example -->"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "('ask_name', {'tries': 1})\n"
    assert (tmp_path / "chats.db").exists()
