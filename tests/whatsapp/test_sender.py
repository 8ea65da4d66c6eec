"""Both WhatsApp senders (sync and async) against the local Graph API stand-in, over real HTTP.

Every test here runs once per flavor: the async sender is driven on a real event loop through
``tests.whatsapp.sender_drivers``, so both drivers meet the same payloads, errors and retries.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from chat_orchestrator.errors import (
    InvalidMessageError,
    SenderError,
    SenderTimeoutError,
    WhatsAppAPIError,
)
from tests.whatsapp.graph_standin import GraphStandIn, fixture
from tests.whatsapp.sender_drivers import (
    FLAVORS,
    Driven,
    MakeSender,
    SenderFactory,
    SilentServer,
    closed_port,
)


@pytest.fixture(params=FLAVORS)
def senders(request: pytest.FixtureRequest) -> Iterator[SenderFactory]:
    with start_blocking_portal() as portal:
        factory = SenderFactory(request.param, portal)
        yield factory
        for sender in factory.made:
            sender.close()


@pytest.fixture
def make(senders: SenderFactory, graph: GraphStandIn) -> MakeSender:
    """``make(delays=None, **kw)``: a sender of this test's flavor aimed at the stand-in."""

    def build(delays: list[float] | None = None, **kw: Any) -> Driven:
        return senders(graph.token, graph.phone_number_id, graph.base_url, delays, **kw)

    return build


def test_text_matches_the_documented_request(graph: GraphStandIn, make: MakeSender) -> None:
    sender = make()
    message_id = sender.send_message("15550002222", "Your order #1234 has shipped.")
    assert message_id == "wamid.STANDIN_1"
    (request,) = graph.received
    assert request.body == fixture("request_text.json")
    assert request.headers["Authorization"] == f"Bearer {graph.token}"


def test_reply_buttons_with_a_quoted_reply(graph: GraphStandIn, make: MakeSender) -> None:
    options = {
        "buttons": [
            {"id": "confirm_yes", "title": "Yes, confirm"},
            {"id": "confirm_no", "title": "No"},
            {"id": "reschedule", "title": "Reschedule"},
        ],
        "header": "Appointment",
        "footer": "Reply within 24h",
        "reply_to": "wamid.FAKE_IN_TEXT_0001",
    }
    sender = make()
    assert sender.send_message(
        "+15550002222", "Confirm your appointment for Friday 10:00?", options
    )
    assert graph.received[0].body == fixture("request_reply_buttons.json")


def test_list_message(graph: GraphStandIn, make: MakeSender) -> None:
    expected = fixture("request_list.json")
    interactive = expected["interactive"]
    options = {
        "list": {"button": "See plans", "sections": interactive["action"]["sections"]},
        "header": "Choose a plan",
        "footer": "Prices exclude VAT",
    }
    make().send_message("15550002222", "Which plan fits your team?", options)
    assert graph.received[0].body == expected


def test_preview_url_and_plain_titles(graph: GraphStandIn, make: MakeSender) -> None:
    sender = make()
    sender.send_message("15550002222", "see https://example.org", {"preview_url": True})
    sender.send_message("15550002222", "pick", {"buttons": ["A", "B"]})
    assert graph.received[0].body["text"] == {
        "preview_url": True,
        "body": "see https://example.org",
    }
    assert graph.received[1].body["interactive"]["action"]["buttons"][1] == {
        "type": "reply",
        "reply": {"id": "B", "title": "B"},
    }


def test_template(graph: GraphStandIn, make: MakeSender) -> None:
    expected = fixture("request_template.json")
    template = expected["template"]
    sent = make().send_template(
        "15550002222", template["name"], template["language"]["code"], template["components"]
    )
    assert sent.startswith("wamid.")
    assert graph.received[0].body == expected


def test_mark_as_read_with_and_without_typing(graph: GraphStandIn, make: MakeSender) -> None:
    sender = make()
    sender.mark_as_read("wamid.FAKE_IN_TEXT_0001")
    sender.mark_as_read("wamid.FAKE_IN_TEXT_0001", typing=True)
    assert graph.received[0].body == fixture("request_mark_read.json")
    assert graph.received[1].body == fixture("request_mark_read_typing.json")


def test_business_scoped_user_id_goes_to_recipient(graph: GraphStandIn, make: MakeSender) -> None:
    make().send_message("US.90000000000000002222", "hi")
    body = graph.received[0].body
    assert body["recipient"] == "US.90000000000000002222"
    assert "to" not in body


NO_RETRY = [
    ("error_190_token_expired.json", 401),
    ("error_190_token_expired.json", 400),
    ("error_131047_reengagement.json", 400),
    ("error_131026_undeliverable.json", 400),
    ("error_100_invalid_parameter.json", 400),
]


@pytest.mark.parametrize(("name", "status"), NO_RETRY)
def test_permanent_errors_are_raised_without_retry(
    graph: GraphStandIn, make: MakeSender, name: str, status: int
) -> None:
    graph.respond(status, name)
    delays: list[float] = []
    with pytest.raises(WhatsAppAPIError) as raised:
        make(delays).send_message("15550002222", "hello")
    error = fixture(name)["error"]
    assert raised.value.code == error["code"]
    assert raised.value.http_status == status
    assert raised.value.type == error["type"]
    assert raised.value.fbtrace_id == error["fbtrace_id"]
    assert raised.value.error_subcode == error.get("error_subcode")
    assert raised.value.retryable is False
    assert len(graph.received) == 1
    assert delays == []


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("error_130429_throughput.json", 429),
        ("error_130429_throughput.json", 400),
    ],
)
def test_throughput_errors_are_retried_with_backoff(
    graph: GraphStandIn, make: MakeSender, name: str, status: int
) -> None:
    graph.respond(status, name)
    graph.respond(status, name)
    delays: list[float] = []
    assert make(delays, backoff=0.25).send_message("15550002222", "hi")
    assert len(graph.received) == 3
    assert delays == [0.25, 0.5]


def test_pair_rate_limit_waits_four_to_the_n(graph: GraphStandIn, make: MakeSender) -> None:
    for _ in range(3):
        graph.respond(429, "error_131056_pair_rate_limit.json")
    delays: list[float] = []
    make(delays).send_message("15550002222", "hi")
    assert delays == [1.0, 4.0, 16.0]


def test_retries_are_bounded(graph: GraphStandIn, make: MakeSender) -> None:
    for _ in range(10):
        graph.respond(429, "error_130429_throughput.json")
    delays: list[float] = []
    with pytest.raises(WhatsAppAPIError) as raised:
        make(delays, max_retries=2, backoff=1, max_backoff=1.5).send_message("15550002222", "hi")
    assert raised.value.code == 130429
    assert raised.value.retryable is True
    assert len(graph.received) == 3
    assert delays == [1, 1.5]


def test_non_graph_5xx_falls_back_to_the_http_status(graph: GraphStandIn, make: MakeSender) -> None:
    graph.respond(502, b"<html>bad gateway</html>")
    make().send_message("15550002222", "hi")
    assert len(graph.received) == 2


def test_a_read_timeout_is_not_retried(graph: GraphStandIn, make: MakeSender) -> None:
    graph.respond(200, "send_success_response.json", delay=1.0)
    with pytest.raises(SenderTimeoutError, match="may or may not have been delivered"):
        make(timeout=(2, 0.2)).send_message("15550002222", "hi")
    assert len(graph.received) == 1


def test_connection_refused_is_retried_then_reported(senders: SenderFactory) -> None:
    delays: list[float] = []
    sender = senders("tok", "1", f"http://127.0.0.1:{closed_port()}", delays)
    with pytest.raises(SenderError, match="cannot reach") as raised:
        sender.send_message("15550002222", "hi")
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert isinstance(raised.value.__cause__, httpx.ConnectError)  # the original, chained


def test_a_server_that_never_answers_times_out_once(senders: SenderFactory) -> None:
    silent = SilentServer()
    delays: list[float] = []
    with silent.serving() as url:
        sender = senders("tok", "1", url, delays, timeout=(1.0, 0.3))
        started = time.monotonic()
        with pytest.raises(SenderTimeoutError, match=r"within 0\.3 s") as raised:
            sender.send_message("15550002222", "hi")
        elapsed = time.monotonic() - started
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
    assert (silent.connections, delays) == (1, [])  # sent once, never resent
    assert elapsed < 5  # bounded by the read timeout, not by the silent server


def test_a_connection_dropped_after_the_request_is_not_retried(senders: SenderFactory) -> None:
    silent = SilentServer(hang_up=True)
    delays: list[float] = []
    with silent.serving() as url:
        sender = senders("tok", "1", url, delays)
        with pytest.raises(SenderTimeoutError, match="after the request was sent") as raised:
            sender.send_message("15550002222", "hi")
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    assert (silent.connections, delays) == (1, [])


BAD_INPUT = [
    ("x" * 4097, None, "4097 characters"),
    ("", None, "must not be empty"),
    ("   ", None, "must not be empty"),
    ("pick", {"buttons": ["a", "b", "c", "d"]}, "4 buttons"),
    ("pick", {"buttons": ["x" * 21]}, "title is 21 characters"),
    ("pick", {"buttons": ["Same", "Same"]}, "used twice"),
    (
        "pick",
        {
            "list": {
                "button": "Open",
                "sections": [
                    {
                        "title": "S",
                        "rows": [{"id": f"r{i}", "title": f"Row {i}"} for i in range(11)],
                    }
                ],
            }
        },
        "more than 10 rows",
    ),
    (
        "pick",
        {
            "list": {
                "button": "Open",
                "sections": [{"title": "S", "rows": [{"id": "r", "title": "t" * 25}]}],
            }
        },
        "title is 25 characters",
    ),
    ("pick", {"buttons": ["a"], "list": {}}, "not both"),
    ("pick", {"colour": "red"}, "unknown options"),
]


@pytest.mark.parametrize(("text", "options", "message"), BAD_INPUT)
def test_bad_messages_are_refused_before_any_http(
    make: MakeSender,
    graph: GraphStandIn,
    text: str,
    options: dict[str, object] | None,
    message: str,
) -> None:
    with pytest.raises(InvalidMessageError, match=message):
        make().send_message("15550002222", text, options)
    assert graph.received == []


def test_bad_recipient_is_refused(graph: GraphStandIn, make: MakeSender) -> None:
    with pytest.raises(InvalidMessageError, match="neither a phone number"):
        make().send_message("../../etc", "hi")


OTHER_TOKEN = "other-SECRET-token"  # a name, so that traceback source lines do not show it


def test_the_token_never_appears(
    graph: GraphStandIn, make: MakeSender, senders: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at DEBUG/INFO
    sender = make()
    graph.respond(429, "error_130429_throughput.json")
    sender.send_message("15550002222", "hi")
    wrong = senders(OTHER_TOKEN, graph.phone_number_id, graph.base_url)
    with pytest.raises(WhatsAppAPIError) as raised:
        wrong.send_message("15550002222", "hi")
    graph.respond(200, "send_success_response.json", delay=1.0)
    with pytest.raises(SenderTimeoutError) as timed_out:
        make(timeout=(2, 0.2)).send_message("15550002222", "hi")
    with pytest.raises(SenderError) as refused:
        senders(OTHER_TOKEN, "1", f"http://127.0.0.1:{closed_port()}").send_message("1555000", "hi")
    texts = [repr(sender), repr(wrong), caplog.text]
    for error in (raised.value, timed_out.value, refused.value):
        # the whole printed chain, original httpx exceptions included
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        texts += [repr(vars(cause)) for cause in _chain(error)]
    assert "HTTP Request: POST" in caplog.text  # the library logs were captured
    for text in texts:
        assert graph.token not in text
        assert OTHER_TOKEN not in text


def _chain(error: BaseException) -> Iterator[BaseException]:
    cause: BaseException | None = error
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def test_a_transient_flag_makes_an_unlisted_code_retryable(
    graph: GraphStandIn, make: MakeSender
) -> None:
    body = fixture("error_130429_throughput.json")
    body["error"].update(code=131999, is_transient=True)
    graph.respond(500, body)
    graph.respond(400, {"error": {"code": 131999, "message": "still failing"}})
    with pytest.raises(WhatsAppAPIError) as raised:
        make().send_message("15550002222", "hi")
    assert len(graph.received) == 2  # the transient one was retried, the plain one was not
    assert (raised.value.is_transient, raised.value.retryable) == (False, False)


def test_odd_success_answers_are_sender_errors(graph: GraphStandIn, make: MakeSender) -> None:
    sender = make()
    graph.respond(200, b"not json")
    with pytest.raises(SenderError, match="200 without JSON"):
        sender.send_message("15550002222", "hi")
    graph.respond(200, b"[]")
    with pytest.raises(SenderError, match="non-object body"):
        sender.send_message("15550002222", "hi")
    graph.respond(200, {"messages": []})
    with pytest.raises(SenderError, match="no message id"):
        sender.send_message("15550002222", "hi")
    graph.respond(200, {"success": False})
    with pytest.raises(SenderError, match="was not confirmed"):
        sender.mark_as_read("wamid.FAKE_IN_TEXT_0001")
    assert len(graph.received) == 4  # none of these is retried


def test_template_components_that_are_not_json_are_refused(
    graph: GraphStandIn, make: MakeSender
) -> None:
    with pytest.raises(InvalidMessageError, match="not plain JSON"):
        make().send_template("15550002222", "hello_world", "en_US", [{"value": float("nan")}])
    with pytest.raises(InvalidMessageError, match="not plain JSON"):
        make().send_template("15550002222", "hello_world", "en_US", [{"value": object()}])
    assert graph.received == []


def test_the_body_is_compact_utf8_json(graph: GraphStandIn, make: MakeSender) -> None:
    make().send_message("15550002222", "héllo 👋")
    request = graph.received[0]
    assert request.body["text"]["body"] == "héllo 👋"
    assert request.headers["Content-Type"] == "application/json"


def test_every_retry_resends_the_same_request(graph: GraphStandIn, make: MakeSender) -> None:
    graph.respond(503, "error_130429_throughput.json")
    graph.respond(429, "error_131056_pair_rate_limit.json")
    make().send_message("15550002222", "hi", {"buttons": ["A"]})
    first, second, third = graph.received
    assert first.body == second.body == third.body
    assert first.headers["Authorization"] == third.headers["Authorization"]


@pytest.mark.parametrize(
    "base_url", ["", "ftp://graph.example", "http://[::1", "graph.facebook.com"]
)
def test_a_bad_base_url_is_refused_at_construction(senders: SenderFactory, base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        senders("tok", "1", base_url)


def test_missing_token_or_number_is_refused(senders: SenderFactory) -> None:
    with pytest.raises(ValueError, match="required"):
        senders("", "1", "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="required"):
        senders("tok", "", "http://127.0.0.1:1")
