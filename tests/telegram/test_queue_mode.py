"""``TelegramBot(mode="queue")``: updates stored, workers reply through the Bot API, paced."""

from __future__ import annotations

import json
import time
from typing import Any

from chat_orchestrator.channels.telegram_app import TelegramBot
from chat_orchestrator.pipeline.worker import Worker
from chat_orchestrator.senders.telegram import TelegramSender
from tests.telegram.bot_api_standin import BotAPIStandIn
from tests.telegram.conftest import SECRET, Serve
from tests.telegram.test_webhook import echo_orchestrator, update


def test_updates_are_stored_and_a_worker_replies_paced_per_chat(
    serve: Serve, api: BotAPIStandIn
) -> None:
    sender = TelegramSender(api.token, base_url=api.base_url)
    orchestrator, seen = echo_orchestrator(sender)
    bot = TelegramBot(orchestrator, secret_token=SECRET, mode="queue")
    served = serve(bot)
    first = update("text")
    second = update("text", update_id=first["update_id"] + 1)
    second["message"] = {**first["message"], "message_id": 99, "text": "again"}
    for body in (first, second, first):  # the third is Telegram's redelivery
        assert served.post(json.dumps(body).encode()).status_code == 200
    assert seen == []  # nothing ran in the request
    worker = Worker(bot)
    assert worker.settings.per_chat_interval == 1.0  # the Telegram sender's pacing
    deadline = time.monotonic() + 10
    while len(api.sent()) < 2 and time.monotonic() < deadline:
        worker.drain()
        time.sleep(0.05)
    assert seen == [("tg:111", "hello"), ("tg:111", "again")]
    assert [m["text"] for m in api.sent()] == ["got hello", "got again"]
    sender.close()


def test_a_button_press_is_answered_at_once_in_queue_mode(serve: Serve, api: BotAPIStandIn) -> None:
    sender = TelegramSender(api.token, base_url=api.base_url)
    orchestrator, seen = echo_orchestrator(sender)
    served = serve(TelegramBot(orchestrator, secret_token=SECRET, mode="queue"))
    assert served.post(json.dumps(update("callback_query")).encode()).status_code == 200
    assert api.sent("answerCallbackQuery") == [{"callback_query_id": "4382bfdwdsb323b2d9"}]
    assert seen == []
    sender.close()


def test_a_store_that_is_down_is_answered_503(serve: Serve, api: BotAPIStandIn) -> None:
    sender = TelegramSender(api.token, base_url=api.base_url)
    orchestrator, _ = echo_orchestrator(sender)
    bot = TelegramBot(orchestrator, secret_token=SECRET, mode="queue")
    store: Any = bot._inbox
    add, add_async = store.add, store.add_async

    def down(*args: object, **kwargs: object) -> list[bool]:
        raise ConnectionError("the store is not answering")

    async def down_async(*args: object, **kwargs: object) -> list[bool]:
        raise ConnectionError("the store is not answering")

    store.add, store.add_async = down, down_async
    served = serve(bot)
    assert served.post(json.dumps(update("text")).encode()).status_code == 503
    # The claim was given back: Telegram's redelivery is stored once the store is back.
    store.add, store.add_async = add, add_async
    assert served.post(json.dumps(update("text")).encode()).status_code == 200
    assert bot.turns == 1
    assert [event.key for event in store.pending("tg:111", 10)] == ["tg:123456789:10000"]
    sender.close()
