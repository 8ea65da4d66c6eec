"""WhatsAppSender against the local Graph API stand-in, over real HTTP."""

from __future__ import annotations

import logging
import socket

import pytest

from chat_orchestrator.errors import (
    InvalidMessageError,
    SenderError,
    SenderTimeoutError,
    WhatsAppAPIError,
)
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from tests.whatsapp.graph_standin import GraphStandIn, fixture


def make_sender(
    graph: GraphStandIn, delays: list[float] | None = None, **kw: object
) -> WhatsAppSender:
    sink = delays if delays is not None else []
    return WhatsAppSender(
        graph.token,
        graph.phone_number_id,
        base_url=graph.base_url,
        sleep=sink.append,
        **kw,  # type: ignore[arg-type]
    )


def test_text_matches_the_documented_request(graph: GraphStandIn) -> None:
    sender = make_sender(graph)
    message_id = sender.send_message("15550002222", "Your order #1234 has shipped.")
    assert message_id == "wamid.STANDIN_1"
    (request,) = graph.received
    assert request.body == fixture("request_text.json")
    assert request.headers["Authorization"] == f"Bearer {graph.token}"


def test_reply_buttons_with_a_quoted_reply(graph: GraphStandIn) -> None:
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
    sender = make_sender(graph)
    assert sender.send_message(
        "+15550002222", "Confirm your appointment for Friday 10:00?", options
    )
    assert graph.received[0].body == fixture("request_reply_buttons.json")


def test_list_message(graph: GraphStandIn) -> None:
    expected = fixture("request_list.json")
    interactive = expected["interactive"]
    options = {
        "list": {"button": "See plans", "sections": interactive["action"]["sections"]},
        "header": "Choose a plan",
        "footer": "Prices exclude VAT",
    }
    make_sender(graph).send_message("15550002222", "Which plan fits your team?", options)
    assert graph.received[0].body == expected


def test_preview_url_and_plain_titles(graph: GraphStandIn) -> None:
    sender = make_sender(graph)
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


def test_template(graph: GraphStandIn) -> None:
    expected = fixture("request_template.json")
    template = expected["template"]
    sent = make_sender(graph).send_template(
        "15550002222", template["name"], template["language"]["code"], template["components"]
    )
    assert sent.startswith("wamid.")
    assert graph.received[0].body == expected


def test_mark_as_read_with_and_without_typing(graph: GraphStandIn) -> None:
    sender = make_sender(graph)
    sender.mark_as_read("wamid.FAKE_IN_TEXT_0001")
    sender.mark_as_read("wamid.FAKE_IN_TEXT_0001", typing=True)
    assert graph.received[0].body == fixture("request_mark_read.json")
    assert graph.received[1].body == fixture("request_mark_read_typing.json")


def test_business_scoped_user_id_goes_to_recipient(graph: GraphStandIn) -> None:
    make_sender(graph).send_message("US.90000000000000002222", "hi")
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
    graph: GraphStandIn, name: str, status: int
) -> None:
    graph.respond(status, name)
    delays: list[float] = []
    with pytest.raises(WhatsAppAPIError) as raised:
        make_sender(graph, delays).send_message("15550002222", "hello")
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
    graph: GraphStandIn, name: str, status: int
) -> None:
    graph.respond(status, name)
    graph.respond(status, name)
    delays: list[float] = []
    assert make_sender(graph, delays, backoff=0.25).send_message("15550002222", "hi")
    assert len(graph.received) == 3
    assert delays == [0.25, 0.5]


def test_pair_rate_limit_waits_four_to_the_n(graph: GraphStandIn) -> None:
    for _ in range(3):
        graph.respond(429, "error_131056_pair_rate_limit.json")
    delays: list[float] = []
    make_sender(graph, delays).send_message("15550002222", "hi")
    assert delays == [1.0, 4.0, 16.0]


def test_retries_are_bounded(graph: GraphStandIn) -> None:
    for _ in range(10):
        graph.respond(429, "error_130429_throughput.json")
    delays: list[float] = []
    with pytest.raises(WhatsAppAPIError) as raised:
        make_sender(graph, delays, max_retries=2, backoff=1, max_backoff=1.5).send_message(
            "15550002222", "hi"
        )
    assert raised.value.code == 130429
    assert raised.value.retryable is True
    assert len(graph.received) == 3
    assert delays == [1, 1.5]


def test_non_graph_5xx_falls_back_to_the_http_status(graph: GraphStandIn) -> None:
    graph.respond(502, b"<html>bad gateway</html>")
    make_sender(graph).send_message("15550002222", "hi")
    assert len(graph.received) == 2


def test_a_read_timeout_is_not_retried(graph: GraphStandIn) -> None:
    graph.respond(200, "send_success_response.json", delay=1.0)
    with pytest.raises(SenderTimeoutError, match="may or may not have been delivered"):
        make_sender(graph, timeout=(2, 0.2)).send_message("15550002222", "hi")
    assert len(graph.received) == 1


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    delays: list[float] = []
    sender = WhatsAppSender("tok", "1", base_url=f"http://127.0.0.1:{port}", sleep=delays.append)
    with pytest.raises(SenderError, match="cannot reach"):
        sender.send_message("15550002222", "hi")
    assert len(delays) == 4


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
    graph: GraphStandIn, text: str, options: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(InvalidMessageError, match=message):
        make_sender(graph).send_message("15550002222", text, options)
    assert graph.received == []


def test_bad_recipient_is_refused(graph: GraphStandIn) -> None:
    with pytest.raises(InvalidMessageError, match="neither a phone number"):
        make_sender(graph).send_message("../../etc", "hi")


def test_the_token_never_appears(graph: GraphStandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sender = make_sender(graph)
    graph.respond(429, "error_130429_throughput.json")
    sender.send_message("15550002222", "hi")
    wrong = WhatsAppSender("other-SECRET-token", graph.phone_number_id, base_url=graph.base_url)
    with pytest.raises(WhatsAppAPIError) as raised:
        wrong.send_message("15550002222", "hi")
    graph.respond(200, "send_success_response.json", delay=1.0)
    with pytest.raises(SenderTimeoutError) as timed_out:
        make_sender(graph, timeout=(2, 0.2)).send_message("15550002222", "hi")
    texts = [repr(sender), repr(wrong), str(raised.value), repr(raised.value)]
    texts += [str(timed_out.value), caplog.text]
    for text in texts:
        assert graph.token not in text
        assert "other-SECRET-token" not in text


def test_a_transient_flag_makes_an_unlisted_code_retryable(graph: GraphStandIn) -> None:
    body = fixture("error_130429_throughput.json")
    body["error"].update(code=131999, is_transient=True)
    graph.respond(500, body)
    graph.respond(400, {"error": {"code": 131999, "message": "still failing"}})
    with pytest.raises(WhatsAppAPIError) as raised:
        make_sender(graph).send_message("15550002222", "hi")
    assert len(graph.received) == 2  # the transient one was retried, the plain one was not
    assert (raised.value.is_transient, raised.value.retryable) == (False, False)
