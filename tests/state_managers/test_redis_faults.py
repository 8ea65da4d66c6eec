"""Redis driver faults against a real redis-server: lost replies, silent servers, secrets, keys.

A lost reply is made by a loopback proxy that forwards every command to the real server but
throws one reply away: the command has run on the server, the client times out and sends it
again. Every operation must come out of that as if the reply had arrived.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from chat_orchestrator._jsonctx import encode_context
from chat_orchestrator.errors import StateManagerError, StateManagerUnavailableError
from chat_orchestrator.state_managers import redis as redis_module
from chat_orchestrator.state_managers.base import StateRecord
from chat_orchestrator.state_managers.redis import RedisStateManager
from tests.servers import RedisServer, free_port

TIMEOUT = 0.5  # socket_timeout of every manager here: small, so a lost reply costs little


class ReplyDroppingProxy:
    """127.0.0.1 proxy to a real server; ``drop_one()`` loses the next reply, ``black_hole``
    loses them all (a server that accepts and never answers)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._drops = 0
        self.black_hole = False
        self.dropped = 0
        self.connections = 0
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_one(self) -> None:
        with self._lock:
            self._drops += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self._lose():
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _lose(self) -> bool:
        with self._lock:
            if self.black_hole or self._drops:
                self._drops = max(0, self._drops - 1)
                self.dropped += 1
                return True
            return False

    def close(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            sock.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[ReplyDroppingProxy]:
    server_proxy = ReplyDroppingProxy(redis_server.port)
    yield server_proxy
    server_proxy.close()


@pytest.fixture
def proxied(proxy: ReplyDroppingProxy) -> Iterator[RedisStateManager]:
    manager = RedisStateManager(
        "127.0.0.1", proxy.port, socket_timeout=TIMEOUT, lock_lease=30, lock_timeout=3
    )
    # Warm up: load every script on the server (EVALSHA must run, not answer NOSCRIPT) and
    # let the manager see a working server.
    manager.claim("warm-up", 60)
    manager.save("warm-up", "s", {}, expected_version=0)
    manager.set_state("warm-up", "s", {})
    manager.compare_and_set("warm-up", "s", {}, expected_version=2)
    yield manager
    manager.close()


def assert_one_reply_lost(proxy: ReplyDroppingProxy, connections_before: int) -> None:
    assert proxy.dropped == 1
    assert proxy.connections == connections_before + 1  # the command was sent again


# -- item 1: every operation survives a lost reply ---------------------------------------------
def test_claim_survives_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy, redis_url: str
) -> None:
    before = proxy.connections
    proxy.drop_one()
    assert proxied.claim("wamid.1", 60) is True  # not a "duplicate" of itself
    assert_one_reply_lost(proxy, before)
    other = RedisStateManager.from_url(redis_url)
    assert other.claim("wamid.1", 60) is False  # and it is really claimed


def test_lease_survives_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis
) -> None:
    before = proxy.connections
    proxy.drop_one()  # the reply of the lease script: the lease is taken, the client never hears
    turn = proxied.begin_turn("c")  # the repeat sees its own lease: no wait, no LockTimeoutError
    assert_one_reply_lost(proxy, before)
    assert turn.record is None
    turn.commit("s", {"n": 1}, encode_context({"n": 1}))
    assert proxied.load("c") == StateRecord("s", {"n": 1}, 1)
    assert direct.exists(proxied.keys_for("c")[1]) == 0  # the lease is gone with the write


def test_save_survives_a_lost_lease_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis
) -> None:
    proxy.drop_one()
    assert proxied.save("c", "s", {"n": 1}, expected_version=0) == 1
    assert proxy.dropped == 1
    assert direct.exists(proxied.keys_for("c")[1]) == 0


def test_conditional_write_survives_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy
) -> None:
    assert proxied.compare_and_set("c", "a", {"n": 1}, expected_version=0) == 1
    before = proxy.connections
    proxy.drop_one()  # the write happened; the repeat must recognise it, not call it a conflict
    assert proxied.compare_and_set("c", "b", {"n": 2}, expected_version=1) == 2
    assert_one_reply_lost(proxy, before)
    assert proxied.load("c") == StateRecord("b", {"n": 2}, 2)


def test_turn_commit_survives_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis
) -> None:
    proxied.set_state("c", "a", {})
    turn = proxied.begin_turn("c")
    proxy.drop_one()
    turn.commit("b", {"x": 1}, encode_context({"x": 1}))
    assert proxy.dropped == 1
    assert proxied.load("c") == StateRecord("b", {"x": 1}, 2)
    assert direct.exists(proxied.keys_for("c")[1]) == 0


def test_unconditional_write_bumps_the_version_once_after_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy
) -> None:
    proxied.set_state("c", "a", {})
    proxy.drop_one()
    proxied.set_state("c", "b", {})
    assert proxy.dropped == 1
    assert proxied.load("c") == StateRecord("b", {}, 2)


def test_release_survives_a_lost_reply(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy, direct: redis.Redis
) -> None:
    turn = proxied.begin_turn("c")
    proxy.drop_one()
    turn.close()  # the unlock ran; its repeat finds nothing to unlock and must not fail
    assert proxy.dropped == 1
    assert direct.exists(proxied.keys_for("c")[1]) == 0
    assert proxied.claim("k", 60) is True
    proxy.drop_one()
    proxied.release_claim("k")
    assert proxy.dropped == 2
    assert proxied.claim("k", 60) is True


# -- item 2: a silent server fails within about socket_timeout; a refused port at once ---------
@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel completes them from the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize("operation", ["load", "claim", "turn", "save"])
def test_a_silent_server_fails_within_about_socket_timeout(
    silent_port: int, operation: str
) -> None:
    manager = RedisStateManager("127.0.0.1", silent_port, socket_timeout=TIMEOUT)
    calls: dict[str, Callable[[], object]] = {
        "load": lambda: manager.load("c"),
        "claim": lambda: manager.claim("k", 60),
        "turn": lambda: manager.begin_turn("c"),
        "save": lambda: manager.save("c", "s", {}, expected_version=0),
    }
    started = time.monotonic()
    with pytest.raises(StateManagerUnavailableError, match="TimeoutError"):
        calls[operation]()
    assert time.monotonic() - started < 3 * TIMEOUT


def test_a_server_that_goes_silent_costs_at_most_one_retry(
    proxied: RedisStateManager, proxy: ReplyDroppingProxy
) -> None:
    proxy.black_hole = True
    before = proxy.connections
    started = time.monotonic()
    with pytest.raises(StateManagerUnavailableError):
        proxied.load("c")  # it was answering: one retry (on a new connection), two timeouts
    assert time.monotonic() - started < 3 * TIMEOUT
    assert proxy.connections == before + 1
    started = time.monotonic()
    with pytest.raises(StateManagerUnavailableError):
        proxied.load("c")  # known silent now: one attempt, one timeout
    assert time.monotonic() - started < 3 * TIMEOUT
    assert proxy.connections == before + 2
    proxy.black_hole = False
    assert proxied.load("c") is None  # and it recovers


def test_a_refused_port_fails_fast() -> None:
    manager = RedisStateManager("127.0.0.1", free_port(), socket_timeout=5)
    started = time.monotonic()
    with pytest.raises(StateManagerUnavailableError, match="ConnectionError"):
        manager.load("c")
    assert time.monotonic() - started < 1


# -- item 3: the address is built from parsed parts; secrets never shown ------------------------
SECRETS = ("hunter2", "hu@nter2", "hu%40nter2", "nter2")


def url_shapes(port: int, tmp_path: Path) -> list[tuple[str, str]]:
    return [
        (f"redis://127.0.0.1:{port}/0?password=hunter2", f"127.0.0.1:{port}/0"),
        (f"redis://user:hu@nter2@127.0.0.1:{port}/0", f"127.0.0.1:{port}/0"),
        (f"redis://user:hu%40nter2@127.0.0.1:{port}/4", f"127.0.0.1:{port}/4"),
        (f"redis://:hunter2@127.0.0.1:{port}", f"127.0.0.1:{port}/0"),
        (f"rediss://user:hunter2@127.0.0.1:{port}/1", f"127.0.0.1:{port}/1"),
        (f"unix://:hunter2@{tmp_path}/no.sock?db=3", f"unix:{tmp_path}/no.sock?db=3"),
    ]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_reprs_and_errors_never_show_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for url, address in url_shapes(free_port(), tmp_path):
        for manager in (RedisStateManager(url=url), RedisStateManager.from_url(url)):
            assert repr(manager) == f"RedisStateManager(address={address!r}, key_prefix='chat:')"
            for call in (partial(manager.load, "c"), partial(manager.claim, "k", 1)):
                with pytest.raises(StateManagerUnavailableError) as caught:
                    call()
                assert address in str(caught.value)
                assert_no_secret(str(caught.value))
                assert_no_secret(repr(caught.value))
                assert isinstance(caught.value.__cause__, redis.ConnectionError)  # chained
                assert_no_secret(str(caught.value.__cause__))
    client = redis.Redis(port=free_port(), password="hunter2")
    assert_no_secret(repr(RedisStateManager(client=client)))
    assert_no_secret(repr(RedisStateManager(password="hunter2")))
    assert_no_secret(caplog.text)


@pytest.mark.parametrize("password", ["hunter2", "hu@nter2"])
def test_logs_and_errors_of_a_real_authenticated_server_never_show_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, password: str
) -> None:
    server = RedisServer(tmp_path / "r").start()
    server_proxy = ReplyDroppingProxy(server.port)
    try:
        redis.Redis(port=server.port).config_set("requirepass", password)
        quoted = password.replace("@", "%40")
        urls = [
            f"redis://127.0.0.1:{server_proxy.port}/0?password={quoted}",
            f"redis://:{password}@127.0.0.1:{server_proxy.port}/0",
            f"redis://default:{quoted}@127.0.0.1:{server_proxy.port}/0",
        ]
        caplog.set_level(logging.DEBUG)
        for number, url in enumerate(urls):
            manager = RedisStateManager.from_url(url, socket_timeout=TIMEOUT)
            assert manager.save(f"c{number}", "s", {}, expected_version=0) == 1
            server_proxy.black_hole = True  # a retry (logged) and then an error
            with pytest.raises(StateManagerUnavailableError) as caught:
                manager.load("c")
            server_proxy.black_hole = False
            assert_no_secret(str(caught.value))
            assert_no_secret(str(caught.value.__cause__))
            with pytest.raises(StateManagerUnavailableError) as caught:  # a wrong password
                RedisStateManager.from_url(url.replace("nter2", "nter3")).load("c")
            shown = f"{caught.value} {caught.value.__cause__}"
            assert "AuthenticationError" in shown
            assert_no_secret(shown)
            assert "nter3" not in shown
            manager.close()
        assert "retrying once" in caplog.text
        assert_no_secret(caplog.text)
        assert "nter3" not in caplog.text
    finally:
        server_proxy.close()
        server.stop()


def test_a_url_that_is_not_redis_is_a_tree_error() -> None:
    with pytest.raises(StateManagerError, match="not a usable Redis URL"):
        RedisStateManager.from_url("http://127.0.0.1:6379/0")


# -- item 4: the key cache is per manager and bounded -------------------------------------------
def test_the_key_cache_is_bounded() -> None:
    manager = RedisStateManager()
    for number in range(3 * redis_module._KEY_CACHE_SIZE):
        assert manager.keys_for(f"chat-{number}") == manager.keys_for(f"chat-{number}")
    assert 0 < len(manager._key_cache) <= redis_module._KEY_CACHE_SIZE
    long_id = "x" * (redis_module._KEY_CACHE_MAX_ID + 1)
    assert manager.keys_for(long_id)[0].endswith(f":s:{long_id}")
    assert long_id not in manager._key_cache


def test_keys_of_long_ids_are_not_kept_alive() -> None:
    manager = RedisStateManager()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for number in range(2000):  # 2,000 ids of 4,000 characters: 24 MB if all kept
            manager.keys_for(f"{number:04d}" + "é" * 3996)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000


# -- item 5: nested prefixes never share a key --------------------------------------------------
def test_managers_with_nested_prefixes_do_not_collide(redis_url: str) -> None:
    outer = RedisStateManager(url=redis_url, key_prefix="p:")
    inner = RedisStateManager(url=redis_url, key_prefix="p:m:", lock_timeout=2)
    record_key, lock_key = inner.keys_for("c")
    # Claim keys shaped like the inner manager's keys, minus the outer prefix: with claims at
    # "<prefix>m:<key>" these were the very same Redis keys.
    clashing = [record_key.removeprefix("p:m:"), lock_key.removeprefix("p:m:")]
    assert all(outer.claim(key, 60) for key in clashing)
    assert inner.save("c", "s", {"n": 1}, expected_version=0) == 1  # no WRONGTYPE, no busy lock
    assert inner.load("c") == StateRecord("s", {"n": 1}, 1)
    assert not any(outer.claim(key, 60) for key in clashing)  # still claimed, once
    outer_keys = {*outer.keys_for("c"), *(outer._claim_key(key) for key in clashing)}
    inner_keys = {*inner.keys_for("c"), *(inner._claim_key(key) for key in clashing)}
    assert not outer_keys & inner_keys


def test_claim_keys_share_no_key_with_records_or_locks(redis_url: str) -> None:
    manager = RedisStateManager.from_url(redis_url, key_prefix="chat:")
    names = ["a", "s:a", "l:a", "m:a", "}:s:a", "{x}:s:a", "", ":", "chat:"]
    keys = [key for name in names for key in (*manager.keys_for(name), manager._claim_key(name))]
    assert len(set(keys)) == len(keys)


# -- release_claim ------------------------------------------------------------------------------
def test_release_claim_lets_the_key_be_claimed_again(redis_url: str) -> None:
    manager = RedisStateManager.from_url(redis_url)
    other = RedisStateManager.from_url(redis_url)
    assert manager.claim("wamid.1", 60) is True
    assert other.claim("wamid.1", 60) is False
    manager.release_claim("wamid.1")
    assert other.claim("wamid.1", 60) is True
    assert manager.claim("wamid.1", 60) is False
    manager.release_claim("never-claimed")  # nothing to forget: no error
    assert manager.claim("wamid.2", 60) is True  # other keys are untouched by a release
    manager.release_claim("wamid.1")
    assert manager.claim("wamid.2", 60) is False
