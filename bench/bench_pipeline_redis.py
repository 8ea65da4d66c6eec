"""The Redis pipeline store's operations against raw driver calls of the same shape.

Run by hand: ``uv run python bench/bench_pipeline_redis.py`` (starts its own redis-server on
a free loopback port). With 10,000 timers pending and 200 chats leased with news (the
shape the issue names), it times:

* ``take`` (one script: ZRANGEBYSCORE LIMIT, HGET, HSET, ZADD) against a raw
  ``ZRANGEBYSCORE ... LIMIT 0 1`` round trip: take must stay one round trip whatever the
  index holds;
* an idle ``take`` (nothing due) against the same raw read;
* ``add`` of one event (append script + schedule script: two round trips) against a raw
  ``SET NX PX`` + ``RPUSH`` + ``ZADD`` pipeline-free sequence (three round trips);
* one event's whole cycle (add, take, pending, finish, release: six round trips) against six
  raw round trips.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import redis  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

from _timing import compare, report  # noqa: E402
from chat_orchestrator.pipeline.events import Event  # noqa: E402
from chat_orchestrator.state_managers.redis import RedisStateManager  # noqa: E402

TIMERS = 10_000
LEASED = 200


def main(ops: int = 2000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            run(server.port, ops)
        finally:
            server.stop()


def run(port: int, ops: int) -> None:
    client = redis.Redis(port=port)
    store = RedisStateManager(port=port).pipeline_store()
    now = time.time()
    for n in range(TIMERS):
        store.schedule(f"timer-{n}", now + 3600 + n)
    for n in range(LEASED):
        store.add([Event(f"first-{n}", f"busy-{n}", "x")])
        assert store.take("busy-worker", 3600) is not None
        store.add([Event(f"news-{n}", f"busy-{n}", "x")])
    counter = itertools.count()

    def raw_read() -> None:
        client.zrangebyscore("raw:r", "-inf", int(time.time() * 1000), start=0, num=1)

    def idle_take() -> None:
        assert store.take("w", 30) is None

    report(
        f"idle take, {TIMERS} timers and {LEASED} leased chats with news",
        compare({"raw ZRANGEBYSCORE LIMIT 0 1": raw_read, "store.take (none due)": idle_take}, ops),
        "raw ZRANGEBYSCORE LIMIT 0 1",
    )

    def due_take() -> None:
        n = next(counter)
        store.schedule(f"due-{n}", 0)
        taken = store.take("w", 30)
        assert taken is not None
        store.release(taken, None)

    def raw_three() -> None:
        n = next(counter)
        client.zadd("raw:r", {f"due-{n}": 0})
        client.zrangebyscore("raw:r", "-inf", int(time.time() * 1000), start=0, num=1)
        client.zrem("raw:r", f"due-{n}")

    report(
        "schedule + take + release of a due chat (3 round trips each)",
        compare(
            {"raw ZADD, ZRANGEBYSCORE, ZREM": raw_three, "store schedule/take/release": due_take},
            ops,
        ),
        "raw ZADD, ZRANGEBYSCORE, ZREM",
    )

    def add() -> None:
        n = next(counter)
        store.add([Event(f"k{n}", f"chat-{n % 500}", "hello")])

    def raw_add() -> None:
        n = next(counter)
        client.set(f"raw:seen:{n}", 1, nx=True, px=604_800_000)
        client.rpush(f"raw:q:{n % 500}", "hello")
        client.zadd("raw:r", {f"chat-{n % 500}": 0})

    report(
        "add one event (store: 2 round trips; raw: 3)",
        compare({"raw SET NX PX, RPUSH, ZADD": raw_add, "store.add": add}, ops),
        "raw SET NX PX, RPUSH, ZADD",
    )

    def cycle() -> None:
        n = next(counter)
        chat = f"cycle-{n}"
        store.add([Event(f"c{n}", chat, "hello")])
        taken = store.take("w", 30)
        assert taken is not None
        events = store.pending(taken.chat_id)
        store.finish(taken.chat_id, [e.key for e in events])
        store.release(taken, None)

    def raw_cycle() -> None:
        n = next(counter)
        client.set(f"raw:seen:{n}", 1, nx=True, px=604_800_000)
        client.rpush(f"raw:q:{n}", "hello")
        client.zadd("raw:r", {f"cycle-{n}": 0})
        client.zrangebyscore("raw:r", "-inf", int(time.time() * 1000), start=0, num=1)
        client.lpop(f"raw:q:{n}")
        client.zrem("raw:r", f"cycle-{n}")

    report(
        "one event's whole cycle (6 round trips each)",
        compare({"raw 6 commands": raw_cycle, "store add/take/pending/finish/release": cycle}, ops),
        "raw 6 commands",
    )
    client.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
