"""The channel boundary's contracts: ChannelEvent, sender error attributes, Pacing, one attempt."""

from __future__ import annotations

import json

import pytest

from chat_orchestrator.channels import ChannelEvent, channel_event, claim_key
from chat_orchestrator.channels.whatsapp_events import InboundMessage, ReplyChoice
from chat_orchestrator.errors import (
    InvalidMessageError,
    SenderError,
    SenderTimeoutError,
    TelegramAPIError,
)
from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.senders.whatsapp_errors import api_error


def test_a_channel_event_round_trips_through_json() -> None:
    event = ChannelEvent("telegram", "tg:42", "tg:7:1001", "yes", "button", {"title": "Yes"})
    text = json.dumps(event.to_json())
    assert ChannelEvent.from_json(json.loads(text)) == event
    assert ChannelEvent.from_json(event.to_json()).data == {"title": "Yes"}


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"channel": "", "chat_id": "a", "key": "k", "kind": "text"},
        {"channel": "x", "chat_id": 5, "key": "k", "kind": "text"},
        {"channel": "x", "chat_id": "a", "key": "k", "kind": "text", "user_input": 3},
        {"channel": "x", "chat_id": "a", "key": "k", "kind": "text", "data": []},
    ],
)
def test_a_malformed_channel_event_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="channel event"):
        ChannelEvent.from_json(bad)  # type: ignore[arg-type]


def test_extras_that_are_not_json_fail_when_written() -> None:
    with pytest.raises((TypeError, ValueError)):
        ChannelEvent("x", "a", "k", None, "text", {"n": float("nan")}).to_json()


def test_a_whatsapp_button_reply_is_a_button_event_with_the_old_ids() -> None:
    message = InboundMessage(
        id="wamid.1",
        chat_id="15550001111",
        phone_number_id="123",
        wa_id="15550001111",
        user_id=None,
        contact_name="Ann",
        timestamp=1,
        kind="button_reply",
        reply=ReplyChoice("opt_yes", "Yes"),
    )
    event = channel_event(message)
    assert (event.channel, event.chat_id, event.kind, event.user_input) == (
        "whatsapp",
        "15550001111",
        "button",
        "opt_yes",
    )
    assert event.key == claim_key("123", "wamid.1") == "wa:123:wamid.1"
    assert event.data["title"] == "Yes"
    json.dumps(event.to_json())


def test_sender_errors_carry_permanent_and_retry_after() -> None:
    assert (SenderError("x").permanent, SenderError("x").retry_after) == (False, None)
    assert InvalidMessageError("too long").permanent is True
    assert SenderTimeoutError("maybe sent").permanent is False
    pair = api_error(400, {"error": {"code": 131056, "message": "pair"}})
    assert (pair.permanent, pair.retry_after) == (False, 6.0)
    for code in (130429, 131048, 80007):
        error = api_error(429, {"error": {"code": code, "message": "slow"}})
        assert not error.permanent
        assert error.retry_after is not None
        assert error.retry_after > 0
    bad = api_error(400, {"error": {"code": 131047, "message": "window"}})
    assert (bad.permanent, bad.retry_after) == (True, None)
    blocked = TelegramAPIError("x", http_status=403, error_code=403, permanent=True)
    assert blocked.blocked
    assert blocked.permanent


def test_pacing_refuses_nonsense() -> None:
    assert Pacing(1.0, 30.0).per_second == 30.0
    for bad in [(-1.0, 1.0), (0.0, 0.0), (float("nan"), 1.0), (0.0, float("inf"))]:
        with pytest.raises(ValueError, match="per_"):
            Pacing(*bad)


def test_whatsapp_pacing_is_declared_and_configurable() -> None:
    with WhatsAppSender("tok", "123") as sender:
        assert sender.pacing == Pacing(0.0, 80.0)
    custom = Pacing(0.5, 10.0)
    with WhatsAppSender("tok", "123", pacing=custom) as sender:
        assert sender.pacing is custom
    with pytest.raises(TypeError):
        WhatsAppSender("tok", "123", pacing=(1, 2))  # type: ignore[arg-type]


def test_without_retries_makes_one_attempt_on_the_same_client() -> None:
    from chat_orchestrator.errors import WhatsAppAPIError
    from tests.whatsapp.graph_standin import GraphStandIn

    graph = GraphStandIn().start()
    try:
        sender = WhatsAppSender(
            graph.token, graph.phone_number_id, base_url=graph.base_url, sleep=lambda _: None
        )
        once = sender.without_retries()
        assert once._client is sender._client
        assert once.pacing == sender.pacing
        assert sender.retry_policy.max_retries == 4
        assert once.retry_policy.max_retries == 0
        graph.respond(429, "error_130429_throughput.json")
        with pytest.raises(WhatsAppAPIError) as raised:
            once.send_message("15550002222", "hi")
        assert len(graph.received) == 1
        assert raised.value.permanent is False
        assert raised.value.retry_after == 5.0
        once.close()  # not its client: the original still sends
        assert sender.send_message("15550002222", "again")
        sender.close()
    finally:
        graph.stop()
