"""The message pipeline (issue 12): webhook acks, end-to-end throughput, timer delay.

Run by hand: ``uv run python bench/bench_pipeline.py [ack|throughput|timers|all] [--quick]``.
Starts its own redis-server on a free loopback port (and a Graph API stand-in for ``ack``).

* ``ack``: 8 clients POST signed one-message webhooks to the WSGI bot (threaded wsgiref) in
  direct mode and in queue mode (Redis; 4 worker threads draining behind it), with a step that
  sleeps 2 s and with a step that returns at once. Target: queue-mode p99 <= 50 ms with the
  2 s step (direct: above 2 s); with the instant step, queue median beside direct's.
* ``throughput``: the same turn (a counter step that sends one reply to a no-op sender) run
  (a) by 4 processes calling ``handle_message`` directly on one Redis, and (b) end to end by
  4 worker processes on the same Redis while a fifth process adds the events to the inbox.
  Target: (b) >= 0.7x (a).
* ``timers``: 10,000 timers set by steps (due over a few seconds), 4 worker processes; the
  delay from each timer's due time to the start of its step, p50 and p99.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import redis  # noqa: E402
import requests  # noqa: E402
from tests.servers import RedisServer  # noqa: E402
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, sign  # noqa: E402
from tests.whatsapp.payloads import text_batch  # noqa: E402

from chat_orchestrator.channels import WhatsAppBot, WhatsAppWebhook  # noqa: E402
from chat_orchestrator.orchestrator import ChatOrchestrator  # noqa: E402
from chat_orchestrator.pipeline.events import Event  # noqa: E402
from chat_orchestrator.pipeline.scope import current_event, schedule_timer  # noqa: E402
from chat_orchestrator.pipeline.worker import Worker  # noqa: E402
from chat_orchestrator.senders.base import MessageSender  # noqa: E402
from chat_orchestrator.state_managers.redis import RedisStateManager  # noqa: E402

CLIENTS = 8
PROCESSES = 4
#: Timers fall due over this many seconds after their turn (+2 s): 10,000 over 60 s is about
#: 170 firings a second on top of the turns that set them.
SPREAD = 60.0


class NullSender(MessageSender):
    """A sender that costs nothing: the benchmark measures the store and the engine."""

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        return None


def counter_bot(manager: RedisStateManager, sleep: float = 0.0) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, NullSender())

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        if sleep:
            time.sleep(sleep)
        sender.send_message(chat_id, f"got {text}")
        return "start", {"n": context.get("n", 0) + 1}

    return bot


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- ack ------------------------------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def post_load(url: str, per_client: int, tag: str) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        mine = []
        for n in range(per_client):
            body = text_batch([(f"1555{index:04d}{n % 20:03d}", f"wamid.{tag}.{index}.{n}", "hi")])
            started = time.perf_counter()
            response = session.post(
                url, data=body, headers={"X-Hub-Signature-256": sign(body)}, timeout=60
            )
            mine.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def bench_ack(port: int, quick: bool) -> None:
    print("\nack: 8 clients, signed one-message POSTs, WSGI (threaded wsgiref), Redis")
    print(f"  {'mode':<8} {'step':<8} {'posts':>6} {'median ms':>10} {'p99 ms':>9}")
    for sleep in (2.0, 0.0):
        for mode in ("direct", "queue"):
            manager = RedisStateManager(port=port, key_prefix=f"ack-{mode}-{sleep}-")
            bot = WhatsAppBot(
                counter_bot(manager, sleep), WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET), mode=mode
            )
            stop = threading.Event()
            if mode == "queue":
                worker = Worker(bot)
                threading.Thread(
                    target=worker.run, args=(stop,), kwargs={"threads": 4}, daemon=True
                ).start()
            server = make_server("127.0.0.1", 0, bot, _Server, handler_class=_Quiet)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_port}/webhook"
            per_client = (
                (2 if quick else 4) if (sleep and mode == "direct") else (25 if quick else 150)
            )
            latencies = post_load(url, per_client, f"{mode}{sleep}")
            server.shutdown()
            stop.set()
            print(
                f"  {mode:<8} {('2 s' if sleep else 'instant'):<8} {len(latencies):>6} "
                f"{statistics.median(latencies) * 1000:>10.1f} "
                f"{percentile(latencies, 99) * 1000:>9.1f}"
            )


# -- throughput -----------------------------------------------------------------------------
def direct_process(port: int, prefix: str, chats: list[str], per_chat: int, out: Any) -> None:
    bot = counter_bot(RedisStateManager(port=port, key_prefix=prefix))
    out.get()  # the start signal
    for n in range(per_chat):
        for chat in chats:
            bot.handle_message(chat, f"m{n}")


def worker_process(port: int, prefix: str, total: int, out: Any) -> None:
    manager = RedisStateManager(port=port, key_prefix=prefix)
    worker = Worker(counter_bot(manager), rate=None, poll=0.02)
    stop = threading.Event()
    out.get()
    client = redis.Redis(port=port)

    def report() -> None:
        # Each process adds its finished turns to one counter: the clock stops at ``total``.
        told = 0
        while not stop.is_set():
            turns = worker.outcome.turns
            if turns != told:
                client.incrby(f"{prefix}bench:turns", turns - told)
                told = turns
            if client.get(f"{prefix}bench:stop"):
                stop.set()
            time.sleep(0.01)

    threading.Thread(target=report, daemon=True).start()
    worker.run(stop, threads=2)


def producer_process(port: int, prefix: str, chats: list[str], per_chat: int, out: Any) -> None:
    store = RedisStateManager(port=port, key_prefix=prefix).pipeline_store()
    out.get()
    for n in range(per_chat):
        for chat in chats:
            store.add([Event(f"{chat}:{n}", chat, f"m{n}")])


def count_done(port: int, prefix: str, chats: list[str]) -> int:
    manager = RedisStateManager(port=port, key_prefix=prefix)
    total = 0
    for chat in chats:
        record = manager.load(chat)
        total += 0 if record is None else int(record.context.get("n", 0))
    return total


def run_processes(targets: list[tuple[Any, tuple[Any, ...]]], gate: Any) -> list[mp.Process]:
    procs = [mp.Process(target=fn, args=args) for fn, args in targets]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # imports and connections done before the clock starts
    for _ in procs:
        gate.put(1)
    return procs


def bench_throughput(port: int, quick: bool) -> None:
    chats = [f"chat{n}" for n in range(200)]
    per_chat = 5 if quick else 25
    total = len(chats) * per_chat
    print(f"\nthroughput: {total} turns over {len(chats)} chats, {PROCESSES} processes, Redis")
    ctx = mp.get_context("spawn")

    gate = ctx.Queue()
    shares = [chats[i::PROCESSES] for i in range(PROCESSES)]
    started = time.perf_counter()
    procs = run_processes(
        [(direct_process, (port, "d-", share, per_chat, gate)) for share in shares], gate
    )
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    direct = total / (time.perf_counter() - started)
    assert count_done(port, "d-", chats) == total

    gate = ctx.Queue()
    client = redis.Redis(port=port)
    procs = run_processes(
        [(worker_process, (port, "q-", total, gate)) for _ in range(PROCESSES)]
        + [(producer_process, (port, "q-", chats, per_chat, gate))],
        gate,
    )
    started = time.perf_counter()
    while int(client.get("q-bench:turns") or 0) < total:
        time.sleep(0.005)
    queued = total / (time.perf_counter() - started)
    client.set("q-bench:stop", 1)
    assert count_done(port, "q-", chats) == total
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    print(f"  direct handle_message, {PROCESSES} processes   {direct:9.0f} turns/s")
    print(f"  queue: producer + {PROCESSES} worker processes {queued:9.0f} turns/s")
    print(f"  ratio queue/direct: {queued / direct:.2f}x (target >= 0.7x)")


# -- timers ---------------------------------------------------------------------------------
def timer_bot(manager: RedisStateManager, spread: float) -> ChatOrchestrator:
    bot = ChatOrchestrator(manager, NullSender())

    @bot.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        event = current_event()
        if event is not None and event.is_timer:
            delay = time.time() - float(event.data["due"])
            return "start", {**context, "delay": delay, "fired": context.get("fired", 0) + 1}
        digest = sum(map(ord, chat_id))
        schedule_timer("t", after=2.0 + spread * (digest % 1000) / 1000)
        return "start", context

    return bot


def timer_worker(port: int, total: int, out: Any) -> None:
    worker = Worker(timer_bot(RedisStateManager(port=port, key_prefix="t-"), SPREAD), poll=0.02)
    stop = threading.Event()
    out.get()
    client = redis.Redis(port=port)

    def watch() -> None:
        while not stop.is_set():
            if client.get("t-bench:done"):
                stop.set()
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    worker.run(stop, threads=2)


def bench_timers(port: int, quick: bool) -> None:
    count = 2_000 if quick else 10_000
    manager = RedisStateManager(port=port, key_prefix="t-")
    store = manager.pipeline_store()
    print(
        f"\ntimers: {count} timers over {count} chats, due 2 to {2 + SPREAD:.0f} s after "
        "their turn, "
        f"{PROCESSES} worker processes, Redis"
    )
    for n in range(count):
        store.add([Event(f"t{n}", f"tchat{n}", "set")])
    ctx = mp.get_context("spawn")
    gate = ctx.Queue()
    procs = run_processes([(timer_worker, (port, count, gate)) for _ in range(PROCESSES)], gate)
    deadline = time.time() + SPREAD + 120
    delays: list[float] = []
    while time.time() < deadline:
        delays = []
        fired = 0
        for n in range(count):
            record = manager.load(f"tchat{n}")
            if record is not None and "delay" in record.context:
                delays.append(float(record.context["delay"]))
                fired += int(record.context["fired"])
        if len(delays) == count:
            break
        time.sleep(1.0)
    redis.Redis(port=port).set("t-bench:done", 1)
    for proc in procs:
        proc.join(10)
    print(f"  fired {len(delays)} of {count} (each once: {fired == count})")
    print(
        f"  delay due -> step start: p50 {percentile(delays, 50) * 1000:.0f} ms, "
        f"p99 {percentile(delays, 99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
    )


def main() -> None:
    quick = "--quick" in sys.argv
    parts = [arg for arg in sys.argv[1:] if not arg.startswith("--")] or ["all"]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            if parts[0] in ("ack", "all"):
                bench_ack(server.port, quick)
            if parts[0] in ("throughput", "all"):
                bench_throughput(server.port, quick)
            if parts[0] in ("timers", "all"):
                bench_timers(server.port, quick)
        finally:
            server.stop()
    print(f"\n(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
