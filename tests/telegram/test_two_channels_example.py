"""examples/two_channels.py: the same flow gives the same transcript on WhatsApp and Telegram."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from examples.two_channels import telegram_bot_from, whatsapp_bot_from

from chat_orchestrator.channels.whatsapp_events import InboundMessage, ReplyChoice, WebhookBatch
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.telegram.bot_api_standin import BotAPIStandIn
from tests.telegram.test_webhook import update
from tests.whatsapp.graph_standin import GraphStandIn

Transcript = list[tuple[str, list[str]]]


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    standin = GraphStandIn().start()
    yield standin
    standin.stop()


def whatsapp_transcript(graph: GraphStandIn, store: InMemoryStateManager) -> Transcript:
    bot = whatsapp_bot_from(
        graph.token, graph.phone_number_id, "v", "s", store, base_url=graph.base_url
    )

    def message(n: int, **fields: Any) -> InboundMessage:
        return InboundMessage(
            id=f"wamid.{n}",
            chat_id="15550001111",
            phone_number_id=graph.phone_number_id,
            wa_id="15550001111",
            user_id=None,
            contact_name="Ann",
            timestamp=n,
            **fields,
        )

    inputs = [
        message(1, kind="text", text="hi"),
        message(2, kind="text", text="water"),
        message(3, kind="button_reply", reply=ReplyChoice("tea", "Tea")),
    ]
    for inbound in inputs:
        assert bot.handle(WebhookBatch(messages=[inbound])) == (200, "OK")
    out: Transcript = []
    for received in graph.received:
        body = received.body
        if body["type"] == "text":
            out.append((body["text"]["body"], []))
        else:
            buttons = body["interactive"]["action"]["buttons"]
            out.append((body["interactive"]["body"]["text"], [b["reply"]["id"] for b in buttons]))
    return out


def telegram_transcript(api: BotAPIStandIn, store: InMemoryStateManager) -> Transcript:
    bot = telegram_bot_from(api.token, store, secret_token="x", base_url=api.base_url)
    first = update("text")
    second = update("text", update_id=10100)
    second["message"]["text"] = "water"
    press = update("callback_query")
    press["callback_query"]["data"] = "tea"
    for item in (first, second, press):
        assert bot.handle_update(item) == (200, "OK")
    assert len(api.sent("answerCallbackQuery")) == 1
    out: Transcript = []
    for body in api.sent():
        rows = body.get("reply_markup", {}).get("inline_keyboard", [])
        out.append((body["text"], [row[0]["callback_data"] for row in rows]))
    return out


def test_the_same_flow_gives_the_same_transcript_on_both_channels(
    graph: GraphStandIn, api: BotAPIStandIn
) -> None:
    store = InMemoryStateManager()  # one store for both: the chat ids never collide
    on_whatsapp = whatsapp_transcript(graph, store)
    on_telegram = telegram_transcript(api, store)
    assert (
        on_whatsapp
        == on_telegram
        == [
            ("Coffee or tea?", ["coffee", "tea"]),
            ("Please pick one:", ["coffee", "tea"]),
            ("One tea coming up!", []),
        ]
    )
    assert {c.chat_id for c in store.iter_chats()} == {"15550001111", "tg:111"}
