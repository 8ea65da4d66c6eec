"""What is special to the SQLite pipeline store: its tables, sweep, query plans and races."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from chat_orchestrator.errors import InvalidChatIdError, PipelineError
from chat_orchestrator.pipeline import sqlite as pipe
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chats.db"


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


def test_the_tables_live_in_the_records_file_and_are_made_once(path: Path) -> None:
    first = SQLiteStateManager(path)
    first.pipeline_store().add([Event("a", "c1", "hi")])
    # A second manager (another process, say) runs the same idempotent schema on it.
    second = SQLiteStateManager(path)
    assert second.pipeline_store().add([Event("a", "c1", "hi")]) == [False]
    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master")}
    assert {"chats", "pipe_inbox", "pipe_work", "pipe_dead"} <= tables
    assert rows(path, "PRAGMA user_version") == [(1,)]  # older code still opens the file


def test_the_first_call_from_other_threads_gets_one_store(path: Path) -> None:
    manager = SQLiteStateManager(path)
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(manager.pipeline_store())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8
    assert all(store is got[0] for store in got)


def test_a_done_event_keeps_only_its_key_until_the_retention_ends(path: Path) -> None:
    store = SQLiteStateManager(path).pipeline_store()
    store.add([Event("a", "c1", "secret text")], retention=0.05)
    store.finish("c1", ["a"])
    assert rows(path, "SELECT key, body FROM pipe_inbox") == [("a", None)]
    assert store.add([Event("a", "c1", "again")], retention=0.05) == [False]
    time.sleep(0.1)
    # The retention is over: the key is forgotten, Meta's event is new again.
    assert store.add([Event("a", "c1", "later")], retention=60) == [True]
    assert [e.user_input for e in store.pending("c1")] == ["later"]


def test_an_add_sweeps_expired_done_keys_in_bounded_batches(path: Path) -> None:
    store = SQLiteStateManager(path).pipeline_store()
    count = pipe.SWEEP_BATCH + 20
    with sqlite3.connect(path) as db:  # done keys whose retention ended a while ago
        db.executemany(
            "INSERT INTO pipe_inbox (key, chat, body, until) VALUES (?, ?, NULL, 1)",
            [(f"k{n}", f"c{n}") for n in range(count)],
        )
    store.add([Event("new", "c", "x")])
    left = rows(path, "SELECT count(*) FROM pipe_inbox WHERE body IS NULL")[0][0]
    assert left == 20  # one batch per add, so an add never stalls on a big backlog
    store.add([Event("new2", "c", "x")])
    assert rows(path, "SELECT count(*) FROM pipe_inbox WHERE body IS NULL") == [(0,)]


def test_a_pending_event_is_never_forgotten_even_past_the_retention(path: Path) -> None:
    store = SQLiteStateManager(path).pipeline_store()
    store.add([Event("a", "c1", "x")], retention=0.01)
    time.sleep(0.05)
    store.add([Event("b", "c1", "y")])  # sweeps: the pending "a" stays
    assert store.add([Event("a", "c1", "x")]) == [False]  # and still deduplicates
    assert [e.key for e in store.pending("c1")] == ["a", "b"]


def test_arrival_order_survives_deleting_the_newest_row(path: Path) -> None:
    # AUTOINCREMENT: a seq is never reused, or an event could sort before older ones.
    store = SQLiteStateManager(path).pipeline_store()
    store.add([Event("old", "c1", "x")])
    store.add([Event("gone", "c2", "x")], retention=0.01)
    store.finish("c2", ["gone"])
    time.sleep(0.05)
    store.add([Event("new", "c1", "x")])  # sweeps "gone", the highest seq
    assert [e.key for e in store.pending("c1")] == ["old", "new"]


@pytest.mark.parametrize(
    "name",
    ["PENDING", "FINISH", "READY", "TAKE", "RENEW", "RELEASE", "NEXT_READY", "SWEEP", "FORGET"],
)
def test_every_hot_statement_is_an_index_read(path: Path, name: str) -> None:
    SQLiteStateManager(path).pipeline_store()
    statement = getattr(pipe, name)
    highest = max(int(n) for n in "123456789" if f"?{n}" in statement) if "?" in statement else 0
    with sqlite3.connect(path) as db:
        plan = db.execute(f"EXPLAIN QUERY PLAN {statement}", [1] * highest).fetchall()
    details = " | ".join(str(row[3]) for row in plan)
    assert "SCAN" not in details, details


def test_racing_workers_take_each_ready_chat_once(path: Path) -> None:
    setup = SQLiteStateManager(path).pipeline_store()
    chats = [f"c{n}" for n in range(60)]
    for chat in chats:
        setup.add([Event(f"k-{chat}", chat, "x")])
    taken: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        store = SQLiteStateManager(path).pipeline_store()  # own manager: as another process
        try:
            while (got := store.take(f"w{n}", 30)) is not None:
                with lock:
                    taken.append(got.chat_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(taken) == sorted(chats)


def test_a_late_release_after_the_row_was_remade_does_not_drop_news(path: Path) -> None:
    # Stamps come from one counter: a chat's row dropped and made again gets a new stamp,
    # so the release of a worker whose lease ended cannot wipe the new row's ready_at.
    store = SQLiteStateManager(path).pipeline_store()
    store.add([Event("a", "c1", "x")])
    slow = store.take("slow", 0.05)
    assert slow is not None
    time.sleep(0.1)
    fast = store.take("fast", 30)
    assert fast is not None
    assert fast.stamp == slow.stamp
    store.release(fast, None)  # the row goes
    store.add([Event("b", "c1", "y")])  # and comes back
    store.release(slow, None)
    again = store.take("w", 30)
    assert again is not None
    assert again.chat_id == "c1"


def test_bad_ids_are_refused_before_the_database(path: Path) -> None:
    store = SQLiteStateManager(path).pipeline_store()
    with pytest.raises(InvalidChatIdError):
        store.pending("")
    with pytest.raises(InvalidChatIdError):
        store.pending("x\ud800")
    with pytest.raises(InvalidChatIdError):
        store.finish("c1", ["k\ud800"])
    with pytest.raises(PipelineError):
        store.drop_dead("x\ud800")
