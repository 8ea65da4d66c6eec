"""The steps TelegramBot shares with WhatsAppBot (``channels._bot``), seen through Telegram.

A refused claim key, a claim store that is down, an ``async def`` callback on both paths, a
failing callback, and arguments refused before the pipeline's inbox is opened (the inbox
being down in queue mode is in ``test_queue_mode``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat_orchestrator.channels._bot import WebhookBot
from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.telegram_app import TelegramBot
from chat_orchestrator.channels.whatsapp_app import WhatsAppBot
from chat_orchestrator.errors import InvalidChatIdError, StateManagerUnavailableError
from chat_orchestrator.pipeline.memory import MemoryPipelineStore
from chat_orchestrator.senders.telegram import TelegramSender
from tests.telegram.bot_api_standin import BotAPIStandIn
from tests.telegram.conftest import SECRET, Serve
from tests.telegram.test_webhook import echo_orchestrator, update
from tests.whatsapp.test_webhook_hostile import PickyStore


class ClaimStore(PickyStore):
    """Refuses claim keys holding ``refuse`` (a custom rule); unreachable for claims while
    ``down``; counts the pipeline stores it was asked for."""

    refuse = "never"
    down = False
    opened = 0

    def pipeline_store(self) -> MemoryPipelineStore:
        self.opened += 1
        return super().pipeline_store()

    def _check(self, key: str) -> None:  # type: ignore[override]
        if self.down:
            raise StateManagerUnavailableError("claims unreachable (injected)")
        if self.refuse in key:
            raise InvalidChatIdError("this store refuses the key")


@pytest.fixture
def sender(api: BotAPIStandIn) -> Any:
    with TelegramSender(api.token, base_url=api.base_url) as opened:
        yield opened


def post(served: Any, body: Any) -> Any:
    return served.post(json.dumps(body).encode())


def test_both_bots_are_one_webhook_bot() -> None:
    assert issubclass(TelegramBot, WebhookBot)
    assert issubclass(WhatsAppBot, WebhookBot)


def test_a_refused_claim_key_skips_that_update_only(serve: Serve, sender: Any) -> None:
    store = ClaimStore()
    store.refuse = ":10000"
    orchestrator, seen = echo_orchestrator(sender, store)
    bot = TelegramBot(orchestrator, secret_token=SECRET)
    served = serve(bot)
    response = post(served, update("text"))
    assert (response.status_code, response.text) == (200, "OK")  # a retry cannot help
    assert post(served, update("text", update_id=10001)).status_code == 200
    assert [text for _, text in seen] == ["hello"]  # the second update ran, the first did not
    (failure,) = bot.failures
    assert (failure.message_id, failure.chat_id) == ("10000", "tg:111")
    assert failure.error.startswith("claim key refused")


def test_claims_that_cannot_be_recorded_answer_503_and_run_nothing(
    serve: Serve, sender: Any
) -> None:
    store = ClaimStore()
    store.down = True
    orchestrator, seen = echo_orchestrator(sender, store)
    served = serve(TelegramBot(orchestrator, secret_token=SECRET))
    assert post(served, update("text")).status_code == 503
    store.down = False
    assert post(served, update("text")).status_code == 200  # Telegram's redelivery runs it
    assert post(served, update("text")).status_code == 200  # and then it is a duplicate
    assert seen == [("tg:111", "hello")]


def test_an_async_on_event_is_awaited_once_on_both_paths(serve: Serve, sender: Any) -> None:
    orchestrator, seen = echo_orchestrator(sender)
    events: list[ChannelEvent] = []

    async def on_event(event: ChannelEvent) -> None:
        events.append(event)

    bot = TelegramBot(orchestrator, secret_token=SECRET, on_event=on_event)
    served = serve(bot)
    for _ in range(2):  # the second is a redelivery: claimed once, reported once
        assert post(served, update("edited_message")).status_code == 200
    assert [event.kind for event in events] == ["edited"]
    assert [event.key for event in bot.recorded] == [events[0].key]
    assert seen == []


def test_a_failing_on_event_is_logged_not_the_request(serve: Serve, sender: Any) -> None:
    orchestrator, _ = echo_orchestrator(sender)

    def on_event(event: ChannelEvent) -> None:
        raise RuntimeError("the user's callback broke")

    bot = TelegramBot(orchestrator, secret_token=SECRET, on_event=on_event)
    assert post(serve(bot), update("edited_message")).status_code == 200
    assert len(bot.recorded) == 1
    assert list(bot.failures) == []


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"secret_token": "has space"}, "secret_token"),
        ({"group_mode": "x"}, "group_mode"),
        ({"bot_id": "12:ab"}, "bot_id"),
        ({"retention": -1}, "claim ttl"),
    ],
)
def test_refused_arguments_open_no_inbox(sender: Any, bad: dict[str, Any], says: str) -> None:
    store = ClaimStore()
    orchestrator, _ = echo_orchestrator(sender, store)
    arguments: dict[str, Any] = {"secret_token": SECRET, "mode": "queue", **bad}
    with pytest.raises(ValueError, match=says):
        TelegramBot(orchestrator, **arguments)
    assert store.opened == 0
    TelegramBot(orchestrator, secret_token=SECRET, mode="queue")
    assert store.opened == 1


def test_an_unknown_mode_is_refused_before_anything_opens(sender: Any) -> None:
    store = ClaimStore()
    orchestrator, _ = echo_orchestrator(sender, store)
    with pytest.raises(ValueError, match="mode must be"):
        TelegramBot(orchestrator, secret_token=SECRET, mode="later")
    assert store.opened == 0
