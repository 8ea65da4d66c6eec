"""Redis on the async path: one event loop, 64 concurrent chats, against two baselines.

Run by hand: ``uv run python bench/bench_redis_async.py [TURNS]`` (starts its own redis-server
on a free loopback port). Three contenders, interleaved over rounds, medians reported:

* the sync single-thread turn loop (``handle_message`` over 64 chats, one after another);
* ``handle_message_async`` with 64 chats in flight on one loop (an ``async def`` step);
* a raw ``redis.asyncio`` loop doing the same two round trips per turn at the same
  concurrency: EVALSHA lease+load, EVALSHA conditional write (the manager's own scripts).

Targets (issue 10): async turns/s >= 3x the sync loop, and >= 0.8x the raw loop.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import redis.asyncio  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

from chat_orchestrator.orchestrator import ChatOrchestrator  # noqa: E402
from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender  # noqa: E402
from chat_orchestrator.state_managers._leased import new_token  # noqa: E402
from chat_orchestrator.state_managers._redis_clients import client_settings  # noqa: E402
from chat_orchestrator.state_managers._redis_scripts import ACQUIRE_AND_LOAD, SAVE  # noqa: E402
from chat_orchestrator.state_managers.redis import RedisStateManager  # noqa: E402
from chat_orchestrator.testing import RecordingSender  # noqa: E402

CONCURRENCY = 64
CONTEXT: dict[str, Any] = {"name": "Bob", "age": 42, "step": 3, "tags": ["a", "b"], "ok": True}
CONTEXT_JSON = '{"name":"Bob","age":42,"step":3,"tags":["a","b"],"ok":true}'
CHATS = [f"chat-{number}" for number in range(CONCURRENCY)]
#: CPU seconds per turn of this process, one entry per timed run (the machine may be shared:
#: wall time then includes waiting for a core, CPU time does not).
CPU: list[float] = []


def orchestrator_on(manager: RedisStateManager) -> ChatOrchestrator:
    orchestrator = ChatOrchestrator(manager, RecordingSender())

    @orchestrator.register_step("start")
    async def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: AsyncMessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "start", context

    @orchestrator.register_step("sync")
    def sync_start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        return "sync", context

    return orchestrator


def sync_loop(orchestrator: ChatOrchestrator, turns: int) -> float:
    """Seconds per turn of the sync single-thread loop over the same 64 chats."""
    started, cpu = time.perf_counter(), time.process_time()
    for index in range(turns):
        orchestrator.handle_message(f"sync-{index % CONCURRENCY}", "hi")
    CPU.append((time.process_time() - cpu) / turns)
    return (time.perf_counter() - started) / turns


async def concurrently(turn: Callable[[str], Awaitable[object]], turns: int) -> float:
    """Seconds per turn with one task per chat, all 64 in flight."""
    each = turns // CONCURRENCY

    async def chat(chat_id: str) -> None:
        for _ in range(each):
            await turn(chat_id)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(chat(chat_id) for chat_id in CHATS))
    CPU.append((time.process_time() - cpu) / (each * CONCURRENCY))
    return (time.perf_counter() - started) / (each * CONCURRENCY)


def raw_turn(client: Any, manager: RedisStateManager) -> Callable[[str], Awaitable[None]]:
    """The two round trips of a turn, written straight on redis.asyncio."""
    lease_ms = manager._lease_ms

    async def turn(chat_id: str) -> None:
        keys = manager.keys_for(chat_id)
        token = new_token()
        reply = await client.execute_command(
            "EVALSHA", ACQUIRE_AND_LOAD.sha, 2, *keys, token, lease_ms
        )
        version = int(reply[1] or 0)
        await client.execute_command(
            "EVALSHA", SAVE.sha, 2, *keys, token, version, "start", CONTEXT_JSON, 0, 1, token
        )

    return turn


async def main(turns: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis").start()
        try:
            await measure(server.port, turns, rounds)
        finally:
            server.stop()


async def measure(port: int, turns: int, rounds: int) -> None:
    manager = RedisStateManager("127.0.0.1", port)
    orchestrator = orchestrator_on(manager)
    for chat_id in CHATS:
        manager.set_state(chat_id, "start", CONTEXT)
        manager.set_state(f"sync-{chat_id.removeprefix('chat-')}", "sync", CONTEXT)
    # The same policy as the manager's clients (no retries, timeouts, no SETINFO), driven
    # through the ordinary execute_command.
    raw_client = redis.asyncio.Redis(host="127.0.0.1", port=port, **client_settings(5.0, True))
    raw = raw_turn(raw_client, RedisStateManager("127.0.0.1", port, key_prefix="raw:"))

    async def ours(chat_id: str) -> None:
        await orchestrator.handle_message_async(chat_id, "hi")

    async def blocking(turns: int) -> float:  # on the loop's own thread: nothing else runs
        return sync_loop(orchestrator, turns)

    contenders: dict[str, Callable[[int], Awaitable[float]]] = {
        "sync turn loop (one thread)": blocking,
        f"handle_message_async x{CONCURRENCY}": lambda n: concurrently(ours, n),
        f"raw redis.asyncio 2x EVALSHA x{CONCURRENCY}": lambda n: concurrently(raw, n),
    }
    for run in contenders.values():  # warm up: connections, scripts, caches
        await run(max(CONCURRENCY, turns // 10))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            # The sync loop runs fewer turns: it is several times slower per turn.
            samples[name].append(await run(turns // 4 if name.startswith("sync") else turns))
            cpu[name].append(CPU[-1])
    medians = {name: statistics.median(values) for name, values in samples.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    sync_name, ours_name, raw_name = contenders
    print(f"\nRedis turns, one event loop, {CONCURRENCY} chats in flight ({rounds} rounds)")
    for name, seconds in medians.items():
        print(
            f"  {name:<40} {seconds * 1e6:9.1f} us/turn  {1 / seconds:9.0f} turns/s"
            f"  ({cpu_medians[name] * 1e6:6.1f} us CPU/turn)"
        )
    vs_sync = medians[sync_name] / medians[ours_name]
    vs_raw = medians[raw_name] / medians[ours_name]
    print(f"  async vs sync loop: {vs_sync:5.2f}x turns/s (target >= 3)")
    print(f"  async vs raw redis.asyncio: {vs_raw:5.2f}x turns/s (target >= 0.8)")
    await manager.close_async()
    await raw_client.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6400, rounds=5))
