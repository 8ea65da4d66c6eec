"""Redis and MongoDB turns (lock + conditional write on) against raw driver loops.

Run by hand: ``uv run python bench/bench_shared.py`` (starts its own redis-server and
nx-27017 on free loopback ports; set MONGODB_URI to also measure a real MongoDB).
Targets (issue 4): Redis turns >= 0.85x a raw GET+SET loop, 2 round trips per turn;
MongoDB turns >= 0.85x a raw loop of two find_one_and_update calls.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import pymongo  # noqa: E402
import redis  # noqa: E402
from pymongo import ReturnDocument  # noqa: E402
from tests.servers import NxServer, RedisServer  # noqa: E402

from _timing import compare, report  # noqa: E402
from chat_orchestrator.orchestrator import ChatOrchestrator  # noqa: E402
from chat_orchestrator.senders.base import MessageSender  # noqa: E402
from chat_orchestrator.state_managers.base import StateManager  # noqa: E402
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager  # noqa: E402
from chat_orchestrator.state_managers.redis import RedisStateManager  # noqa: E402
from chat_orchestrator.testing import RecordingSender  # noqa: E402

CONTEXT: dict[str, Any] = {"name": "Bob", "age": 42, "step": 3, "tags": ["a", "b"], "ok": True}


def orchestrator_on(manager: StateManager) -> ChatOrchestrator:
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    manager.set_state("bench", "start", CONTEXT)
    return orchestrator


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def bench_redis(port: int, ops: int) -> float:
    client = redis.Redis(port=port)
    text = json.dumps({"state_id": "start", "context": CONTEXT})
    client.set("raw", text)

    def raw() -> None:
        value = client.get("raw")
        client.set("raw", value if value is not None else text)

    orchestrator = orchestrator_on(RedisStateManager(port=port))

    def turn() -> None:
        orchestrator.handle_message("bench", "hi")

    medians = compare({"raw redis-py GET+SET": raw, "RedisStateManager turn": turn}, ops)
    report("Redis turn vs raw GET+SET (2 round trips)", medians, "raw redis-py GET+SET")

    before = commandstats(client)
    for _ in range(100):
        orchestrator.handle_message("bench", "hi")
    after = commandstats(client)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    delta.pop("info", None)
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    inside = {k: v / 100 for k, v in sorted(delta.items()) if k not in {"evalsha", "eval"}}
    print(
        f"  per turn: {scripts / 100:.1f} round trips (EVALSHA), commands inside scripts: {inside}"
    )
    return medians["raw redis-py GET+SET"] / medians["RedisStateManager turn"]


def bench_mongo(uri: str, ops: int, label: str) -> float:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    raw_collection = client["bench_raw"]["states"]
    raw_collection.delete_many({})
    raw_collection.insert_one({"_id": "raw", "s": "start", "c": json.dumps(CONTEXT), "v": 1})

    def raw() -> None:
        raw_collection.find_one_and_update(
            {"_id": "raw"}, {"$set": {"lk": "t"}}, return_document=ReturnDocument.AFTER
        )
        raw_collection.find_one_and_update({"_id": "raw"}, {"$inc": {"v": 1}, "$unset": {"lk": ""}})

    manager = MongoDBStateManager(uri, database="bench_managed")
    manager._collection.delete_many({})
    orchestrator = orchestrator_on(manager)

    def turn() -> None:
        orchestrator.handle_message("bench", "hi")

    baseline = "raw pymongo 2x find_one_and_update"
    medians = compare({baseline: raw, "MongoDBStateManager turn": turn}, ops)
    report(
        f"MongoDB ({label}) turn vs two raw find_one_and_update",
        medians,
        "raw pymongo 2x find_one_and_update",
    )
    return medians["raw pymongo 2x find_one_and_update"] / medians["MongoDBStateManager turn"]


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        nx = NxServer(Path(tmp) / "nx").start()
        try:
            redis_ratio = bench_redis(redis_server.port, 300 if quick else 3_000)
            nx_ratio = bench_mongo(nx.uri, 50 if quick else 400, "nx-27017")
            real = os.environ.get("MONGODB_URI")
            real_ratio = bench_mongo(real, 300 if quick else 3_000, "MONGODB_URI") if real else None
        finally:
            redis_server.stop()
            nx.stop()
    print(f"\nRedis turn throughput: {redis_ratio:.2f}x the raw GET+SET loop (target >= 0.85x)")
    print(f"MongoDB (nx-27017) turn throughput: {nx_ratio:.2f}x the raw loop (target >= 0.85x)")
    if real_ratio is not None:
        print(f"MongoDB (MONGODB_URI) turn throughput: {real_ratio:.2f}x (target >= 0.85x)")


if __name__ == "__main__":
    main()
