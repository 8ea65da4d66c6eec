"""Hostile and broken webhook requests over real HTTP: a clean 4xx or a skipped message.

Never a 500 (Meta retries those for days) and never a hang. Requests that ``requests`` will not
send (non-ASCII headers, a negative Content-Length) go over a raw socket.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from chat_orchestrator.channels import StatusEvent, WhatsAppBot, claim_key
from chat_orchestrator.errors import InvalidChatIdError, StateManagerUnavailableError
from chat_orchestrator.state_managers.async_base import AsyncTurnLease
from chat_orchestrator.state_managers.base import TurnLease
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.whatsapp.asgi_server import UvicornThread
from tests.whatsapp.conftest import Served, sign
from tests.whatsapp.graph_standin import fixture, fixture_bytes
from tests.whatsapp.test_webhook import echo_bot

Serve = Callable[[WhatsAppBot], Served]


def raw_http(url: str, head: bytes, body: bytes = b"", *, close: bool = True) -> tuple[int, bytes]:
    """Send ``head`` (request line + headers, no blank line) and ``body``; (status, reply)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        if close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            chunk = sock.recv(65536)  # socket.timeout here is the hang the issue describes
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, b""  # the server closed the connection without an answer
    status = int(data.split(b" ", 2)[1])
    return status, data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post_head(url: str, *headers: bytes) -> bytes:
    path = urlsplit(url).path.encode()
    return b"\r\n".join([b"POST " + path + b" HTTP/1.1", b"Host: x", *headers])


def test_a_non_ascii_signature_is_403(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    length = b"Content-Length: %d" % len(body)
    for signature in [b"sha256=\xe9abc", b"sha256=" + "é".encode() * 32, b"sha256=\xff" * 3]:
        status, _ = raw_http(
            served.url, post_head(served.url, length, signature_header(signature)), body
        )
        assert status == 403, signature
    assert sender.sent == []


def signature_header(value: bytes) -> bytes:
    return b"X-Hub-Signature-256: " + value


@pytest.mark.parametrize("declared", [b"-1", b"abc", b"1e3", b"0x10", "²".encode(), b"+5"])
def test_a_content_length_that_is_not_decimal_is_400_at_once(serve: Serve, declared: bytes) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    head = post_head(
        served.url, b"Content-Length: " + declared, signature_header(sign(body).encode())
    )
    # The socket stays open for writing: reading "to EOF" would wait for ever (the old stall).
    status, _ = raw_http(served.url, head, body, close=False)
    assert status == 400
    assert sender.sent == []


def test_a_content_length_of_5000_digits_is_413(serve: Serve) -> None:
    bot, _ = echo_bot()
    served = serve(bot)
    status, _ = raw_http(served.url, post_head(served.url, b"Content-Length: " + b"9" * 5000))
    # uvicorn's HTTP parser (h11) refuses a length it cannot convert before the app sees it.
    assert status == (413 if served.kind == "wsgi" else 400)


def test_a_short_body_is_400(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    head = post_head(served.url, b"Content-Length: %d" % (len(body) + 10), signature_header(b"x"))
    if served.kind == "wsgi":
        status, _ = raw_http(served.url, head, body)  # then EOF, ten bytes short
        assert status == 400
    else:
        # uvicorn reports the half-closed connection as a disconnect: no one left to answer.
        assert raw_http(served.url, head, body)[0] == 0
    assert sender.sent == []
    assert bot.turns == 0


def test_an_asgi_client_that_stops_mid_body_gets_408() -> None:
    bot, sender = echo_bot()
    bot.asgi.body_timeout = 0.3
    server = UvicornThread(bot.asgi).start()
    try:
        url = f"http://127.0.0.1:{server.port}/webhook"
        body = fixture_bytes("inbound_text.json")
        head = post_head(url, b"Content-Length: %d" % (len(body) + 10))
        status, reply = raw_http(url, head, body, close=False)  # stays connected, sends no more
    finally:
        server.stop()
    assert status == 408
    assert b"stopped sending" in reply
    assert sender.sent == []


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


@pytest.mark.parametrize("declared", ["-1", "", "500", "501", "10000000"])
def test_never_more_than_the_limit_is_read(declared: str) -> None:
    bot, _ = echo_bot()
    bot.webhook.max_body_bytes = 500
    stream = CountingStream(b"x" * 5_000_000)
    statuses: list[str] = []
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": declared,
        "wsgi.input": stream,
    }
    b"".join(bot(environ, lambda status, headers: statuses.append(status)))
    assert stream.bytes_read <= 501
    assert statuses[0][:3] in {"400", "401", "403", "413"}


def test_a_chunked_post_is_411(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    response = served.session.post(
        served.url, data=iter([body]), headers={"X-Hub-Signature-256": sign(body)}, timeout=5
    )
    assert response.status_code == 411
    assert "Content-Length" in response.text
    assert sender.sent == []


def test_405_carries_allow(serve: Serve) -> None:
    served = serve(echo_bot()[0])
    for method in ["PUT", "DELETE", "PATCH"]:
        response = served.session.request(method, served.url, timeout=5)
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, POST"


def batch_with(first: dict[str, Any]) -> bytes:
    """batch_two_messages.json with its first message changed (the second one is good)."""
    payload = fixture("batch_two_messages.json")
    messages = payload["entry"][0]["changes"][0]["value"]["messages"]
    messages[0].update(first)
    for key in [k for k, v in first.items() if v is None]:
        del messages[0][key]
    return json.dumps(payload).encode()


BAD_MESSAGES = {
    "no sender": {"from": None, "from_user_id": None},
    "non-numeric latitude": {"type": "location", "location": {"latitude": "north", "longitude": 1}},
    "latitude NaN": {"type": "location", "location": {"latitude": "nan", "longitude": 1}},
    "5000-digit timestamp": {"timestamp": "9" * 5000},
    "superscript-two timestamp": {"timestamp": "²"},
    "negative timestamp": {"timestamp": -5},
    "lone surrogate id": {"id": "\ud800"},
    "lone surrogate sender": {"from": "\udfff", "from_user_id": None},
    "id of a list": {"id": ["x"]},
}


@pytest.mark.parametrize("change", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_one_malformed_message_is_skipped_and_the_rest_run(
    serve: Serve, caplog: pytest.LogCaptureFixture, change: dict[str, Any]
) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    caplog.set_level(logging.WARNING, logger="chat_orchestrator")
    response = served.post(batch_with(change))
    assert (response.status_code, response.text) == (200, "OK")
    assert [m.chat_id for m in sender.sent] == ["15550003333"]  # the good one ran
    (failure,) = bot.failures
    assert failure.error.startswith("malformed message")
    assert "skipped a malformed message" in caplog.text


def test_a_message_that_is_not_an_object_is_skipped(serve: Serve) -> None:
    payload = fixture("batch_two_messages.json")
    payload["entry"][0]["changes"][0]["value"]["messages"].insert(0, 7)
    bot, sender = echo_bot()
    assert serve(bot).post(json.dumps(payload).encode()).status_code == 200
    assert len(sender.sent) == 2
    assert len(bot.failures) == 1


def test_json_nested_100000_deep_is_400(serve: Serve) -> None:
    bot, _ = echo_bot()
    served = serve(bot)
    deep = b"[" * 100_000 + b"]" * 100_000
    payload = fixture("inbound_text.json")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["deep"] = "@"
    inside = json.dumps(payload).encode().replace(b'"@"', deep)
    for body in [deep, inside]:
        response = served.post(body)
        assert response.status_code == 400
        assert "nested" in response.text


def test_a_5000_digit_integer_timestamp_is_400_not_500(serve: Serve) -> None:
    bot, _ = echo_bot()
    body = batch_with({"timestamp": "@"}).replace(b'"@"', b"9" * 5000)
    assert serve(bot).post(body).status_code == 400


def text_from(phone_number_id: str | None, message_id: str, body: str) -> bytes:
    payload = fixture("inbound_text.json")
    value = payload["entry"][0]["changes"][0]["value"]
    if phone_number_id is None:
        del value["metadata"]["phone_number_id"]
    else:
        value["metadata"]["phone_number_id"] = phone_number_id
    value["messages"][0].update({"id": message_id, "text": {"body": body}})
    return json.dumps(payload).encode()


def test_the_dedup_key_is_unambiguous(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    for phone, message_id in [("1", "2:3"), ("1:2", "3"), (None, "x"), ("None", "x"), ("", "x")]:
        assert served.post(text_from(phone, message_id, f"{phone}/{message_id}")).status_code == 200
    assert len(sender.sent) == 5
    assert served.post(text_from(None, "x", "again")).status_code == 200
    assert len(sender.sent) == 5  # a redelivery of the id-less one is still caught
    keys = {claim_key(p, m) for p, m in [("1", "2:3"), ("1:2", "3"), (None, "x"), ("None", "x")]}
    assert len(keys) == 4
    assert "None" not in claim_key(None, "x")
    # Meta's decimal ids keep the key of earlier releases, so their claims still count.
    assert claim_key("200000000000002", "wamid.A") == "wa:200000000000002:wamid.A"


def test_a_repeated_status_reaches_on_status_once(serve: Serve) -> None:
    bot, _ = echo_bot()
    seen: list[StatusEvent] = []
    bot.on_status = seen.append
    served = serve(bot)
    for _ in range(3):
        assert served.post(fixture_bytes("status_delivered.json")).status_code == 200
    assert len(seen) == 1
    # Another status of the same message is news, and is reported.
    payload = fixture("status_delivered.json")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "read"
    assert served.post(json.dumps(payload).encode()).status_code == 200
    assert [s.status for s in seen] == ["delivered", "read"]


@pytest.fixture
def locked_chat() -> Iterator[tuple[InMemoryStateManager, threading.Event]]:
    """A manager whose chat 15550002222 is held by another worker until the event is set."""
    manager = InMemoryStateManager(lock_timeout=0.2)
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with manager.lock("15550002222"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    yield manager, release
    release.set()
    thread.join()


def test_a_lock_timeout_gives_the_claim_back_and_the_redelivery_runs(
    serve: Serve, locked_chat: tuple[InMemoryStateManager, threading.Event]
) -> None:
    manager, release = locked_chat
    bot, sender = echo_bot(manager)
    served = serve(bot)
    body = fixture_bytes("batch_two_messages.json")
    assert served.post(body).status_code == 503  # Meta will redeliver
    assert sender.sent == []  # the later message of the batch waits for the redelivery too
    release.set()
    assert served.post(body).status_code == 200
    assert sorted(m.chat_id for m in sender.sent) == ["15550002222", "15550003333"]
    assert served.post(body).status_code == 200  # and now it is a duplicate
    assert len(sender.sent) == 2
    assert manager.get_state("15550002222") == ("start", {"n": 1})


class FlakyStore(InMemoryStateManager):
    """The store goes away for the next ``outages`` turns (claims still work)."""

    outages = 0

    def begin_turn(self, chat_id: str) -> TurnLease:
        self._outage()
        return super().begin_turn(chat_id)

    async def begin_turn_async(self, chat_id: str) -> AsyncTurnLease:
        self._outage()
        return await super().begin_turn_async(chat_id)

    def _outage(self) -> None:
        if self.outages:
            self.outages -= 1
            raise StateManagerUnavailableError("store unreachable (injected)")


def test_an_unavailable_store_mid_turn_answers_503_and_the_redelivery_runs(serve: Serve) -> None:
    manager = FlakyStore()
    manager.outages = 1
    bot, sender = echo_bot(manager)
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    assert served.post(body).status_code == 503
    assert served.post(body).status_code == 200
    assert len(sender.sent) == 1
    assert list(bot.failures) == []


def test_a_malformed_status_is_skipped_and_the_good_one_reported(serve: Serve) -> None:
    payload = fixture("status_delivered.json")
    statuses = payload["entry"][0]["changes"][0]["value"]["statuses"]
    statuses.insert(0, {**statuses[0], "id": "wamid.BAD", "timestamp": "²"})
    bot, _ = echo_bot()
    seen: list[StatusEvent] = []
    bot.on_status = seen.append
    assert serve(bot).post(json.dumps(payload).encode()).status_code == 200
    assert [s.message_id for s in seen] == [statuses[1]["id"]]
    (failure,) = bot.failures
    assert (failure.message_id, failure.error.startswith("malformed status")) == ("wamid.BAD", True)


@pytest.mark.parametrize("phone_id", ["9" * 5000, "\ud800"])
def test_an_invalid_phone_number_id_is_a_malformed_envelope(serve: Serve, phone_id: str) -> None:
    bot, sender = echo_bot()
    response = serve(bot).post(text_from(phone_id, "wamid.X", "hi"))
    assert response.status_code == 400
    assert sender.sent == []


def test_claim_keys_stay_within_the_chat_id_bound() -> None:
    longest = "é" * 1024  # the longest ids parse_payload lets through, all non-ASCII
    assert len(claim_key(longest, longest, longest)) < 16_384
    assert claim_key("1", 'a"b') != claim_key("1", "a\\b")


class PickyStore(InMemoryStateManager):
    """A custom manager that refuses some claim keys outright (its own validation rule)."""

    def claim(self, key: str, ttl: float) -> bool:
        self._check(key)
        return super().claim(key, ttl)

    async def claim_async(self, key: str, ttl: float) -> bool:
        self._check(key)
        return await super().claim_async(key, ttl)

    @staticmethod
    def _check(key: str) -> None:
        if "REFUSED" in key:
            raise InvalidChatIdError("this store refuses the key")


def test_a_refused_claim_key_skips_that_message_only(serve: Serve) -> None:
    bot, sender = echo_bot(PickyStore())
    response = serve(bot).post(batch_with({"id": "wamid.REFUSED"}))
    assert response.status_code == 200
    assert [m.chat_id for m in sender.sent] == ["15550003333"]
    (failure,) = bot.failures
    assert failure.message_id == "wamid.REFUSED"
