"""Attacks on the WhatsApp sender from the server's side, over real HTTP (the stand-in)."""

from __future__ import annotations

import pytest

from chat_orchestrator.errors import SenderError, WhatsAppAPIError
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from tests.whatsapp.graph_standin import GraphStandIn

DEEP = b"[" * 100_000 + b"]" * 100_000


def _sender(graph: GraphStandIn) -> WhatsAppSender:
    return WhatsAppSender(
        access_token=graph.token,
        phone_number_id=graph.phone_number_id,
        base_url=graph.base_url,
        max_retries=0,
    )


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, DEEP, SenderError),
        (400, b'{"error":' + DEEP + b"}", WhatsAppAPIError),
        (500, DEEP, WhatsAppAPIError),
    ],
    ids=["200", "400", "500"],
)
def test_an_answer_nested_too_deeply_is_our_error(
    graph: GraphStandIn, status: int, body: bytes, error: type[Exception]
) -> None:
    # Before: json.loads raised RecursionError straight out of send_message.
    graph.respond(status, body)
    with _sender(graph) as sender, pytest.raises(error):
        sender.send_message("15551234567", "hi")


def test_a_huge_answer_is_quoted_briefly_in_the_error(graph: GraphStandIn) -> None:
    # Before: the whole answer (here 1 MB) became the error's message and its log line.
    graph.respond(200, {"junk": "a" * 1_000_000})
    with _sender(graph) as sender, pytest.raises(SenderError) as caught:
        sender.send_message("15551234567", "hi")
    assert len(str(caught.value)) < 1_000
    graph.respond(
        400, {"error": {"code": 100, "message": "m" * 1_000_000, "error_data": "d" * 10**6}}
    )
    with _sender(graph) as sender, pytest.raises(WhatsAppAPIError) as api:
        sender.send_message("15551234567", "hi")
    assert len(str(api.value)) < 3_000
    assert api.value.details is not None
    assert len(api.value.details) <= 1_000
