"""The message pipeline under faults (issue 12), with real servers and real worker processes.

Each test runs ``python -m tests.pipeline.worker_proc`` processes against one store (SQLite
file, or a redis-server, nx-27017 or PostgreSQL server these tests start), a queue-mode
``WhatsAppBot`` served over real HTTP in this process, and a Graph API stand-in that the
workers' real ``WhatsAppSender`` posts to.
Every test is bounded by a count of messages, kills or timers, not by wall time; the figures
they measure (duplicates per kill, recovery time, timer delays) are printed with ``-s``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest
import requests

from chat_orchestrator.channels import WhatsAppBot
from chat_orchestrator.pipeline.events import Event
from chat_orchestrator.pipeline.section import split
from chat_orchestrator.state_managers.base import StateManager
from tests.pipeline.worker_proc import build_bot
from tests.servers import NxServer, PostgresServer, RedisServer
from tests.whatsapp.conftest import ThreadingWSGIServer, _Quiet, sign
from tests.whatsapp.graph_standin import GraphStandIn, _Server
from tests.whatsapp.payloads import text_batch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FAULT_STORES = ["sqlite", "redis", "mongo", "postgres"]


# -- the Graph stand-in, able to fail ------------------------------------------------------
@dataclass
class FlakyGraph(GraphStandIn):
    """The Graph stand-in with outages: ``"5xx"`` answers 503, ``"timeout"`` never answers,
    ``"refused"`` closes the listening socket (connections are refused). ``received`` holds only
    the messages answered 200: what WhatsApp delivered."""

    mode: str = "ok"
    failed: int = 0
    hang: float = 3.0
    _port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FlakyGraph:
        super().start()
        self._port = self.server.server_port
        return self

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "ok":
            with self._lock:  # one append order = one delivery order
                super()._handle(request)
            return
        request.rfile.read(int(request.headers.get("Content-Length") or 0))
        self.failed += 1
        if mode == "timeout":
            time.sleep(self.hang)  # longer than the sender's read timeout (2 s)
            request.close_connection = True
            return
        data = json.dumps({"error": {"message": "Service unavailable", "code": 2}}).encode()
        with contextlib.suppress(OSError):
            request.send_response(503)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)

    def refuse(self) -> None:
        self.mode = "refused"
        self.server.shutdown()
        self.server.server_close()

    def accept(self, mode: str = "ok") -> None:
        """Listen again on the same port (after ``refuse``), in ``mode`` from the first
        request on (set before listening: a request must not slip in between)."""
        self.mode = mode
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                standin._handle(self)

        self.server = _Server(("127.0.0.1", self._port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def transcripts(self) -> dict[str, list[str]]:
        """Each recipient's delivered texts, in delivery order."""
        out: dict[str, list[str]] = {}
        for item in list(self.received):
            body = item.body
            out.setdefault(body["to"].lstrip("+"), []).append(body["text"]["body"])
        return out


# -- the rig: store, webhook, workers --------------------------------------------------------
@dataclass
class Rig:
    kind: str
    store_url: str
    tmp: Path
    graph: FlakyGraph
    bot: WhatsAppBot
    url: str
    redis: RedisServer | None = None
    nx: NxServer | None = None
    pg: PostgresServer | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)
    marks: Path = field(init=False)

    def __post_init__(self) -> None:
        self.marks = self.tmp / "marks.log"

    @property
    def manager(self) -> StateManager:
        manager = self.bot.orchestrator.state_manager
        assert isinstance(manager, StateManager)
        return manager

    def spawn(self, *, threads: int = 2, step_sleep: float = 0.0, **extra: float) -> None:
        args = [sys.executable, "-m", "tests.pipeline.worker_proc", "--store", self.store_url]
        args += ["--graph", self.graph.base_url, "--threads", str(threads)]
        args += ["--step-sleep", str(step_sleep), "--marks", str(self.marks)]
        for name, value in extra.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [proc for proc in self.procs if proc.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(proc)

    def post(self, body: bytes, *, retry: bool = True) -> int:
        """POST like Meta: a 503 or a refused connection is retried (``retry``) until a 200."""
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
        while True:
            try:
                status = self.session.post(self.url, data=body, headers=headers, timeout=10)
                code = status.status_code
            except requests.RequestException:
                code = 0
            if code == 200 or not retry:
                return code
            time.sleep(0.2)

    def add(self, events: Sequence[Event]) -> None:
        self.manager.pipeline_store().add(events)

    def contexts(self, chats: Sequence[str]) -> dict[str, tuple[dict[str, Any], Any]]:
        out = {}
        for chat in chats:
            record = self.manager.load(chat)
            out[chat] = ({}, None) if record is None else split(chat, record.context)
        return out

    def wait_done(
        self,
        chats: Sequence[str],
        done: Callable[[dict[str, Any]], bool],
        *,
        delivered: int,
        timeout: float = 90.0,
        tick: Callable[[], None] | None = None,
    ) -> float:
        """Wait until every chat's context passes ``done``, its outbox is empty and the stand-in
        holds ``delivered`` messages; returns when (time.time()). Fails after ``timeout``: a
        safety net for a hang, the tests are bounded by counts."""
        deadline = time.monotonic() + timeout
        while True:
            if tick is not None:
                tick()
            if len(self.graph.received) >= delivered:
                views = self.contexts(chats)
                if all(done(ctx) and not sec.out for ctx, sec in views.values()):
                    return time.time()
            if time.monotonic() > deadline:
                views = self.contexts(chats)
                left = {c: ctx for c, (ctx, sec) in views.items() if not done(ctx) or sec.out}
                raise AssertionError(
                    f"not done after {timeout} s: {len(left)} chats, "
                    f"{len(self.graph.received)}/{delivered} delivered, e.g. "
                    f"{list(left.items())[:2]}; worker logs in {self.tmp}"
                )
            time.sleep(0.2)


def _restartable(server: PostgresServer) -> None:
    if server.external is not None:
        pytest.skip("an external PostgreSQL (named by the environment) is not ours to restart")


def _redis_url(server: RedisServer) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture(params=FAULT_STORES)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    kind: str = request.param
    redis_server = nx_server = pg_server = None
    if kind == "sqlite":
        store_url = f"sqlite:///{tmp_path / 'chats.db'}"
    elif kind == "redis":
        redis_server = RedisServer(tmp_path / "redis", appendonly=True).start()
        store_url = _redis_url(redis_server)
    elif kind == "postgres":
        # A server of its own (not the session's): the restart tests stop and start it, and
        # with synchronous_commit on, as a real one: an acknowledged add survives the crash.
        pg_server = PostgresServer(durable=True).init()
        store_url = pg_server.url
    else:
        # Its own nx-27017 on a SQLite file: a restart keeps the data (tests/servers.py's
        # session server keeps it in memory, so a restart there would lose it by design).
        nx_server = NxServer(tmp_path / "nx", persistent=True).start()
        store_url = f"{nx_server.uri}/faults"
    graph = FlakyGraph().start()
    bot = build_bot(store_url, graph.base_url)
    server = make_server("127.0.0.1", 0, bot, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/webhook"
    made = Rig(kind, store_url, tmp_path, graph, bot, url, redis_server, nx_server, pg_server)
    try:
        yield made
    finally:
        made.stop_all()
        server.shutdown()
        server.server_close()
        with contextlib.suppress(OSError):
            graph.stop()
        with contextlib.suppress(Exception):
            made.manager.close()
        if redis_server is not None:
            redis_server.stop()
        if nx_server is not None:
            nx_server.stop()
        if pg_server is not None:
            pg_server.destroy()


def chat_ids(count: int) -> list[str]:
    return [f"1555{n:07d}" for n in range(count)]


def messages_of(chats: Sequence[str], per_chat: int) -> list[tuple[str, str, str]]:
    """(wa_id, wamid, text) for ``per_chat`` messages of each chat, interleaved by round."""
    return [(chat, f"wamid.{chat}.{n}", f"{chat}-{n}") for n in range(per_chat) for chat in chats]


@dataclass
class Transcript:
    duplicates: int
    rewinds: int


def check_transcript(chat: str, got: list[str], expected: list[str]) -> Transcript:
    """``got`` is ``expected`` in order, except that a delivery may start again from an
    earlier reply (a re-send after a crash: every re-sent reply is one delivered before, and
    they repeat in order up to the first new one). No gaps, nothing new out of order."""
    index = {text: n for n, text in enumerate(expected)}
    last, high, rewinds = -1, -1, 0
    for text in got:
        assert text in index, f"chat {chat}: unexpected reply {text!r}"
        n = index[text]
        if n != last + 1:
            assert n <= high, f"chat {chat}: gap before {text!r} in {got}"
            rewinds += 1  # a re-send of replies already delivered
        last, high = n, max(high, n)
    assert high == len(expected) - 1, f"chat {chat}: missing replies, got {got}"
    return Transcript(len(got) - len(expected), rewinds)


def open_steps(marks: Path) -> dict[int, int]:
    """Per worker pid, how many steps have begun and not ended."""
    steps: dict[int, int] = {}
    if not marks.exists():
        return steps
    for line in marks.read_text().splitlines():
        pid, what = line.split(" ", 2)[:2]
        steps[int(pid)] = steps.get(int(pid), 0) + (1 if what == "begin" else -1)
    return steps


def kills_mid_step(marks: Path, killed: Sequence[int]) -> int:
    """How many killed pids had a step begun and not ended when they died."""
    steps = open_steps(marks)
    return sum(1 for pid in killed if steps.get(pid, 0) > 0)


def seen_is(expected: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda ctx: len(ctx.get("seen", [])) >= len(expected)


# -- 1. SIGKILL workers mid-step ---------------------------------------------------------------
KILLS = 20


def test_sigkill_workers_mid_step(rig: Rig) -> None:
    """500 messages over 50 chats POSTed over HTTP; 3 worker processes (2 threads each) on one
    store; 20 SIGKILLs mid-step, a new worker started after each. Every message changes its
    chat's state once, in order; replies are delivered in order, duplicates only re-sends."""
    chats = chat_ids(50)
    messages = messages_of(chats, 10)
    for _ in range(3):
        rig.spawn(threads=2, step_sleep=0.08)
    rng = random.Random(12)
    poster = threading.Thread(
        target=lambda: [rig.post(text_batch([m])) for m in messages], daemon=True
    )
    started = time.time()
    poster.start()
    killed: list[int] = []
    # Every 0.3 s, kill a worker whose step has begun and not ended (its marks say so).
    while len(killed) < KILLS:
        time.sleep(0.3)
        while not (busy := [p for p in rig.live() if open_steps(rig.marks).get(p.pid, 0) > 0]):
            time.sleep(0.01)
        victim = rng.choice(busy)
        killed.append(victim.pid)
        rig.kill(victim)
        rig.spawn(threads=2, step_sleep=0.08)
    poster.join()
    per_chat = {chat: [text for c, _, text in messages if c == chat] for chat in chats}
    finished = rig.wait_done(chats, seen_is(per_chat[chats[0]]), delivered=len(messages))
    time.sleep(0.5)  # a late re-send would show up here
    views = rig.contexts(chats)
    for chat in chats:
        assert views[chat][0]["seen"] == per_chat[chat]  # once each, in order
    transcripts = rig.graph.transcripts()
    results = {
        chat: check_transcript(chat, transcripts.get(chat, []), [f"re:{t}" for t in per_chat[chat]])
        for chat in chats
    }
    duplicates = sum(r.duplicates for r in results.values())
    rewinds = sum(r.rewinds for r in results.values())
    mid = kills_mid_step(rig.marks, killed)
    print(
        f"\n[faults:sigkill:{rig.kind}] {len(messages)} messages, {KILLS} kills "
        f"({mid} mid-step), {duplicates} duplicate deliveries in {rewinds} re-sends "
        f"({duplicates / KILLS:.2f} per kill), run {finished - started:.1f} s"
    )
    # A kill interrupts at most the 2 chats its threads held: at most one re-send each.
    assert rewinds <= 2 * KILLS
    assert mid == KILLS  # every kill landed mid-step


# -- 2. the Graph API down for 30 s ----------------------------------------------------------
OUTAGE = float(os.environ.get("FAULTS_OUTAGE", "30"))
#: The delivery loop is the same code on every store: the issue's 30 s outage runs on SQLite,
#: the other stores get a 9 s one (3 s of each failure) to keep the suite under 15 minutes.
#: FAULTS_OUTAGE_ALL=1 runs 30 s everywhere.
OUTAGE_OTHERS = OUTAGE if os.environ.get("FAULTS_OUTAGE_ALL") else min(OUTAGE, 9.0)


def test_graph_outage_then_every_reply_once_in_order(rig: Rig) -> None:
    """The stand-in answers 503, then refuses connections, then never answers (a third of
    ``OUTAGE`` each) while messages keep arriving; after it recovers every reply is delivered
    once, in order per chat, within a few seconds (max_send_backoff=2)."""
    outage = OUTAGE if rig.kind == "sqlite" else OUTAGE_OTHERS
    chats = chat_ids(20)
    messages = messages_of(chats, 6)  # 120: 20 before the outage, 100 during it
    for _ in range(2):
        rig.spawn(threads=3, max_send_backoff=2.0)
    for message in messages[:20]:
        rig.post(text_batch([message]))
    rig.wait_done(chats, lambda ctx: len(ctx.get("seen", [])) >= 1, delivered=20)
    during = messages[20:]
    phases = ["5xx", "refused", "timeout"]
    outage_started = time.time()
    for n, phase in enumerate(phases):
        if phase == "refused":
            rig.graph.refuse()
        else:
            if rig.graph.mode == "refused":
                rig.graph.accept(phase)
            rig.graph.mode = phase
        chunk = during[n * len(during) // 3 : (n + 1) * len(during) // 3]
        phase_end = outage_started + outage * (n + 1) / 3
        for k, message in enumerate(chunk):  # spread the arrivals over the phase
            rig.post(text_batch([message]))
            time.sleep(max(0.0, (phase_end - time.time()) / (len(chunk) - k + 1)))
        time.sleep(max(0.0, phase_end - time.time()))
    failed_during = rig.graph.failed
    delivered_during = len(rig.graph.received) - 20
    rig.graph.mode = "ok"
    recovered = time.time()
    finished = rig.wait_done(
        chats, seen_is(["x"] * 6), delivered=len(messages), timeout=outage + 60
    )
    time.sleep(0.5)
    transcripts = rig.graph.transcripts()
    for chat in chats:
        expected = [f"re:{text}" for c, _, text in messages if c == chat]
        assert transcripts[chat] == expected  # every reply, once, in order
    print(
        f"\n[faults:outage:{rig.kind}] outage {outage:.0f} s (5xx, refused, timeout), "
        f"{len(during)} messages during it, {failed_during} failed sends, "
        f"{delivered_during} delivered during, all {len(messages)} delivered "
        f"{finished - recovered:.2f} s after recovery, 0 duplicates"
    )
    assert delivered_during == 0
    assert finished - recovered < 15  # retries wait at most max_send_backoff (2 s)


# -- 3. the store's server restarted mid-run ----------------------------------------------------
@pytest.mark.parametrize("rig", ["redis", "mongo", "postgres"], indirect=True)
def test_store_server_restarted_mid_run(rig: Rig) -> None:
    """300 messages over 30 chats; the store's server is killed (Redis: SIGKILL, AOF with
    fsync always; nx-27017: SIGTERM, data in its SQLite file; PostgreSQL: ``pg_ctl stop -m
    immediate``, every backend killed at once, recovery from the WAL) a third of the way in
    and started again 3 s later. POSTs meanwhile get 503 and are redelivered (like Meta);
    workers wait. Once it is back: every message ran once, in order, and every reply was
    delivered."""
    chats = chat_ids(30)
    messages = messages_of(chats, 10)
    for _ in range(2):
        rig.spawn(threads=2, step_sleep=0.01)
    statuses: list[int] = []

    def post_all() -> None:
        for message in messages:
            body = text_batch([message])
            while (code := rig.post(body, retry=False)) != 200:
                statuses.append(code)
                time.sleep(0.2)
            # Paced over about 6 s, so the posting is still going on when the server goes
            # down at 2 s (a fast store, PostgreSQL, had stored all 300 by then).
            time.sleep(0.02)

    poster = threading.Thread(target=post_all, daemon=True)
    poster.start()
    time.sleep(2.0)
    if rig.redis is not None:
        assert rig.redis.proc is not None
        rig.redis.proc.kill()  # no shutdown save: only the AOF keeps what was acknowledged
        rig.redis.proc.wait()
        rig.redis.proc = None
        time.sleep(3.0)
        rig.redis.start()
    elif rig.pg is not None:
        _restartable(rig.pg)
        rig.pg.stop("immediate")  # no shutdown checkpoint: the WAL keeps what was committed
        time.sleep(3.0)
        rig.pg.start()
    else:
        assert rig.nx is not None
        rig.nx.stop()
        time.sleep(3.0)
        rig.nx.start()
    back = time.time()
    poster.join(120)
    per_chat = {chat: [text for c, _, text in messages if c == chat] for chat in chats}
    finished = rig.wait_done(chats, seen_is(per_chat[chats[0]]), delivered=len(messages))
    time.sleep(0.5)
    views = rig.contexts(chats)
    transcripts = rig.graph.transcripts()
    duplicates = 0
    for chat in chats:
        assert views[chat][0]["seen"] == per_chat[chat]
        result = check_transcript(chat, transcripts[chat], [f"re:{t}" for t in per_chat[chat]])
        duplicates += result.duplicates
    refused = sum(1 for code in statuses if code == 503)
    print(
        f"\n[faults:restart:{rig.kind}] {len(messages)} messages, {refused} POSTs answered 503 "
        f"and {len(statuses) - refused} refused/failed otherwise while down, all done "
        f"{finished - back:.1f} s after the restart, {duplicates} duplicate deliveries"
    )
    assert refused > 0  # the outage was seen by the webhook, and answered 503
    assert set(statuses) <= {503}  # never a 500 or a dropped connection from the bot


# -- 4. Meta redelivers every POST --------------------------------------------------------------
def test_meta_redelivers_every_post_concurrently(rig: Rig) -> None:
    """200 messages over 20 chats in 100 bodies, each body POSTed 2 or 3 times, shuffled, from
    8 threads at once: every message runs once; replies follow the turns' order."""
    chats = chat_ids(20)
    messages = messages_of(chats, 10)
    bodies = [text_batch(messages[n : n + 2]) for n in range(0, len(messages), 2)]
    rng = random.Random(4)
    posts = [body for body in bodies for _ in range(rng.choice([2, 3]))]
    rng.shuffle(posts)
    for _ in range(2):
        rig.spawn(threads=2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda body: rig.post(body, retry=False), posts))
    assert set(codes) == {200}
    per_chat = {chat: sorted(text for c, _, text in messages if c == chat) for chat in chats}
    rig.wait_done(chats, seen_is(per_chat[chats[0]]), delivered=len(messages))
    time.sleep(0.5)
    views = rig.contexts(chats)
    transcripts = rig.graph.transcripts()
    for chat in chats:
        seen = views[chat][0]["seen"]
        assert sorted(seen) == per_chat[chat]  # each once: no repeats, none missing
        assert transcripts[chat] == [f"re:{text}" for text in seen]
    print(f"\n[faults:redeliver:{rig.kind}] {len(posts)} POSTs of {len(bodies)} bodies: 0 reruns")


@pytest.mark.parametrize("rig", ["redis", "mongo", "postgres"], indirect=True)
def test_post_while_the_store_is_down_is_503_never_200(rig: Rig) -> None:
    """The store's real server stopped: the POST is answered 503; once it is back, Meta's
    redelivery of the same body is stored and runs once."""
    chat = chat_ids(1)[0]
    body = text_batch([(chat, "wamid.down.1", "while-down")])
    server: RedisServer | NxServer | PostgresServer | None = rig.redis or rig.nx or rig.pg
    assert server is not None
    if isinstance(server, PostgresServer):
        _restartable(server)
    server.stop()
    try:
        assert [rig.post(body, retry=False) for _ in range(3)] == [503, 503, 503]
    finally:
        server.start()
    rig.spawn(threads=1)
    if rig.pg is not None:
        # psycopg_pool reconnects with back-off (1, 2, 4 s ...) and our checkout fails fast
        # while its last attempt failed, so the first POSTs after the restart may still be
        # 503 (Meta retries them); never a 200 that stored nothing.
        back = time.monotonic()
        codes = []
        while (code := rig.post(body, retry=False)) != 200:
            codes.append(code)
            assert time.monotonic() - back < 30, codes
            time.sleep(0.2)
        assert set(codes) <= {503}
        print(f"\n[faults:down:postgres] first 200 {time.monotonic() - back:.1f} s after start")
    else:
        assert rig.post(body, retry=False) == 200
    assert rig.post(body, retry=False) == 200  # a redelivery: stored once
    rig.wait_done([chat], seen_is(["while-down"]), delivered=1)
    time.sleep(0.5)
    assert rig.contexts([chat])[chat][0]["seen"] == ["while-down"]
    assert rig.graph.transcripts()[chat] == ["re:while-down"]


# -- 5. 10,000 pending timers, workers killed -------------------------------------------------
TIMER_CHATS, TIMERS_PER_CHAT = 2_000, 5
#: Seconds over which each chat's timers fall due (the load: 10,000 timers in about this long).
TIMER_SPREAD = float(os.environ.get("FAULTS_TIMER_SPREAD", "10"))


def test_ten_thousand_timers_fire_once_across_worker_kills(rig: Rig) -> None:
    """2,000 chats each set 5 timers from a step (due 3 to 3 + TIMER_SPREAD s later); 3 workers,
    two of them SIGKILLed and replaced while the timers fire. Each timer fires exactly once
    (the fired list in each chat's context); the firing delay (due -> step start) is measured."""
    chats = chat_ids(TIMER_CHATS)
    text = f"timers:{TIMERS_PER_CHAT}:3:{TIMER_SPREAD:g}"
    store = rig.manager.pipeline_store()
    for chat in chats:
        store.add([Event(f"setup:{chat}", chat, text, channel="test")])
    for _ in range(3):
        rig.spawn(threads=2)
    started = time.time()
    kills = 0
    deadline = time.monotonic() + 110

    def kill_twice() -> None:
        nonlocal kills
        if kills < 2 and time.time() - started > 6 + 4 * kills:
            victim = rig.live()[0]
            rig.kill(victim)
            rig.spawn(threads=2)
            kills += 1

    def all_fired(ctx: dict[str, Any]) -> bool:
        return len(ctx.get("fired", [])) >= TIMERS_PER_CHAT

    while True:
        kill_twice()
        if kills == 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    finished = rig.wait_done(chats, all_fired, delivered=TIMER_CHATS, timeout=110)
    time.sleep(1.0)  # a timer firing twice would show up here
    delays: list[float] = []
    names = sorted(f"t{n}" for n in range(TIMERS_PER_CHAT))
    for chat, (ctx, section) in rig.contexts(chats).items():
        fired = ctx["fired"]
        assert sorted(name for name, _ in fired) == names, chat  # each once
        assert not section.timers
        delays += [delay for _, delay in fired]
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(
        f"\n[faults:timers:{rig.kind}] {len(delays)} timers over {TIMER_CHATS} chats, 2 worker "
        f"kills, spread {TIMER_SPREAD:g} s, firing delay p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max "
        f"{delays[-1] * 1000:.0f} ms, all fired {finished - started:.1f} s after start"
    )
    assert len(delays) == TIMER_CHATS * TIMERS_PER_CHAT


# -- the CLI: worker and parked ------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "chat-orchestrator"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )


@pytest.mark.parametrize("rig", ["sqlite"], indirect=True)
def test_cli_worker_runs_turns_and_parked_replay_and_drop(rig: Rig) -> None:
    """``chat-orchestrator worker --store URL tests.pipeline.worker_proc:bot`` (a subprocess)
    runs POSTed turns; an event parked by a failing step is listed by ``parked list``, run by
    the CLI worker after ``parked replay``, and another is gone after ``parked drop``."""
    from chat_orchestrator.pipeline.worker import Worker

    chat, other = chat_ids(2)
    env = {**os.environ, "FAULTS_STORE": rig.store_url, "FAULTS_GRAPH": rig.graph.base_url}
    # Park two events: a worker in this process whose step refuses "boom*", one try only.
    failing = build_bot(rig.store_url, rig.graph.base_url, boom=True)
    rig.post(text_batch([(chat, "wamid.b1", "boom-replay"), (other, "wamid.b2", "boom-drop")]))
    Worker(failing, max_attempts=1).drain()
    listed = _cli("parked", "list", "--store", rig.store_url, env=env)
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    by_text = {letter["body"]["i"]: letter["id"] for letter in letters}
    assert set(by_text) == {"boom-replay", "boom-drop"}
    assert all("step refuses" in letter["error"] for letter in letters)

    worker = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "chat-orchestrator"),
            *("worker", "--store", rig.store_url, "--threads", "2"),
            "tests.pipeline.worker_proc:bot",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(rig.tmp / "cli-worker.log").open("wb"),
    )
    rig.procs.append(worker)
    replay = _cli("parked", "replay", by_text["boom-replay"], "--store", rig.store_url, env=env)
    assert replay.returncode == 0, replay.stderr
    drop = _cli("parked", "drop", by_text["boom-drop"], "--store", rig.store_url, env=env)
    assert drop.returncode == 0, drop.stderr
    rig.post(text_batch([(chat, "wamid.c1", "after")]))
    rig.wait_done([chat], seen_is(["boom-replay", "after"]), delivered=2)
    assert rig.contexts([chat])[chat][0]["seen"] == ["boom-replay", "after"]
    assert rig.graph.transcripts()[chat] == ["re:boom-replay", "re:after"]
    left = _cli("parked", "list", "--store", rig.store_url, env=env)
    assert left.returncode == 0, left.stderr
    assert left.stdout == ""
    assert rig.contexts([other])[other][0].get("seen") is None  # dropped: never ran
