"""``chat-orchestrator chats list`` over 1,000,000 SQLite chats and 100,000 Redis chats.

Run by hand: ``uv run python bench/bench_chats_list.py`` (``--quick``: 10x fewer chats;
``$BENCH_DIR`` or the system temp dir holds the database). One run: the data is written with
raw bulk inserts (not turns), then the command lists it to /dev/null, once to time it and once
under ``tracemalloc`` for its peak Python memory. The same peak at a tenth of the chats shows
the listing streams (constant memory). Redis runs on a redis-server the bench starts itself.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo: tests.servers

from tests.servers import RedisServer

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.cli import main
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

CONTEXT = encode_context({"name": "Ada", "age": 36, "answers": list(range(20))})
STATES = ("ask_name", "ask_age", "confirm", "done")
FILTERS = ("--state", "confirm", "--idle-for", "1h")


def fill_sqlite(path: Path, count: int) -> None:
    SQLiteStateManager(path).close()  # the schema, as the store makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    now = int(time.time() * 1000)
    rows = ((f"chat-{n}", STATES[n % 4], CONTEXT, 1 + n % 7, now - n * 1000) for n in range(count))
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO chats (id, state, context, version, updated) VALUES (?, ?, ?, ?, ?)", rows
    )
    db.execute("COMMIT")
    db.close()


def fill_redis(url: str, count: int) -> None:
    import redis

    from chat_orchestrator.state_managers.redis import RedisStateManager

    keys = RedisStateManager(url=url)  # only for its key layout
    client = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        record_key, _ = keys.keys_for(f"chat-{n}")
        fields = ("v", 1 + n % 7, "s", STATES[n % 4], "c", CONTEXT, "w", "bench", "t", now - n)
        pipe.execute_command("HSET", record_key, *fields)  # type: ignore[no-untyped-call]
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    client.close()
    keys.close()


def run_list(url: str, *extra: str) -> None:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = main(["chats", "list", "--store", url, *extra])
    assert code == 0


def measure(what: str, count: int, url: str, *extra: str) -> None:
    start = time.perf_counter()
    run_list(url, *extra)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    run_list(url, *extra)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  {what:<44} {count:>9,} chats  {seconds:7.2f} s  {count / seconds:9,.0f} chats/s"
        f"  peak traced {peak / 1024:8.1f} KiB  (process max RSS so far {rss:6.1f} MiB)"
    )


def main_bench(quick: bool) -> None:
    sqlite_count, redis_count = (100_000, 10_000) if quick else (1_000_000, 100_000)
    base = Path(os.environ.get("BENCH_DIR") or tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=base) as directory:
        work = Path(directory)
        print("chats list (output to /dev/null); one run")
        for count in (sqlite_count // 10, sqlite_count):
            path = work / f"chats-{count}.db"
            start = time.perf_counter()
            fill_sqlite(path, count)
            print(
                f"  (filled {count:,} SQLite chats in {time.perf_counter() - start:.1f} s, "
                f"{path.stat().st_size / count:.0f} bytes/chat)"
            )
            url = f"sqlite:///{path}"
            measure("SQLite", count, url)
            measure("SQLite --state confirm --idle-for 1h", count, url, *FILTERS)
        server = RedisServer(work / "redis").start()
        try:
            url = f"redis://127.0.0.1:{server.port}/0"
            for count in (redis_count // 10, redis_count):
                import redis

                redis.Redis.from_url(url).flushall()
                fill_redis(url, count)
                measure("Redis (SCAN MATCH, pipelined HMGET)", count, url)
        finally:
            server.stop()


if __name__ == "__main__":
    main_bench("--quick" in sys.argv[1:])
