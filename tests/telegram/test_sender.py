"""TelegramSender and AsyncTelegramSender against the local Bot API stand-in, over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from chat_orchestrator.errors import InvalidMessageError, SenderError, TelegramAPIError
from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.senders.telegram import TelegramSender
from chat_orchestrator.senders.telegram_async import AsyncTelegramSender
from chat_orchestrator.senders.telegram_payloads import (
    MemoryCallbackIds,
    build_message,
    callback_token,
)
from tests.telegram.bot_api_standin import TOKEN, BotAPIStandIn
from tests.whatsapp.sender_drivers import closed_port


def make(api: BotAPIStandIn, delays: list[float] | None = None, **kw: Any) -> TelegramSender:
    record = delays.append if delays is not None else (lambda _: None)
    return TelegramSender(api.token, base_url=api.base_url, sleep=record, **kw)


def test_text_has_no_parse_mode_and_goes_to_the_chat(api: BotAPIStandIn) -> None:
    with make(api) as sender:
        assert sender.send_message("tg:111", "*not bold*") == "1"
    body = api.sent()[0]
    assert body["chat_id"] == 111
    assert body["text"] == "*not bold*"
    assert "parse_mode" not in body
    assert body["link_preview_options"] == {"is_disabled": True}


def test_parse_mode_only_when_asked(api: BotAPIStandIn) -> None:
    with make(api) as sender:
        sender.send_message("tg:111", "<b>hi</b>", {"parse_mode": "HTML"})
    assert api.sent()[0]["parse_mode"] == "HTML"


def test_buttons_become_an_inline_keyboard(api: BotAPIStandIn) -> None:
    options = {"buttons": [{"id": "opt_yes", "title": "Yes"}, "No"]}
    with make(api) as sender:
        sender.send_message("tg:111", "Pick", options)
        sender.send_message("tg:111", "Pick", options | {"keyboard": "reply"})
    inline, reply = api.sent()
    assert inline["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "Yes", "callback_data": "opt_yes"}],
            [{"text": "No", "callback_data": "No"}],
        ]
    }
    assert reply["reply_markup"]["keyboard"] == [[{"text": "Yes"}], [{"text": "No"}]]


def test_a_whatsapp_list_becomes_buttons(api: BotAPIStandIn) -> None:
    listing = {"button": "Menu", "sections": [{"title": "A", "rows": [{"id": "r1", "title": "R"}]}]}
    with make(api) as sender:
        sender.send_message("tg:111", "Choose", {"list": listing, "header": "H", "footer": "F"})
    body = api.sent()[0]
    assert body["text"] == "H\n\nChoose\n\nF"
    assert body["reply_markup"]["inline_keyboard"] == [[{"text": "R", "callback_data": "r1"}]]


def test_long_option_ids_are_mapped_never_cut() -> None:
    ids = MemoryCallbackIds()
    long_a, long_b = "x" * 64 + "a", "x" * 64 + "b"
    _, body = build_message(
        "tg:1", "t", {"buttons": [{"id": long_a, "title": "A"}, {"id": long_b, "title": "B"}]}, ids
    )
    data = [row[0]["callback_data"] for row in body["reply_markup"]["inline_keyboard"]]
    assert data[0] != data[1]
    assert all(len(d.encode()) <= 64 and d.startswith("~") for d in data)
    assert [ids.recall(d) for d in data] == [long_a, long_b]
    assert callback_token(long_a) == data[0]  # deterministic: the same after a restart
    # "~" at the start is mapped too, so a verbatim id can never look like a mapped one.
    _, tilde = build_message("tg:1", "t", {"buttons": ["~x"]}, ids)
    assert ids.recall(tilde["reply_markup"]["inline_keyboard"][0][0]["callback_data"]) == "~x"
    with pytest.raises(InvalidMessageError, match="callback_ids"):
        build_message("tg:1", "t", {"buttons": [long_a]}, None)


def test_forum_topics_and_user_scoped_groups_reply_in_place(api: BotAPIStandIn) -> None:
    with make(api) as sender:
        sender.send_message("tg:-1001234567890:t55", "in topic")
        sender.send_message("tg:-1001234567890:u222", "in group")
    topic, group = api.sent()
    assert (topic["chat_id"], topic["message_thread_id"]) == (-1001234567890, 55)
    assert group["chat_id"] == -1001234567890
    assert "message_thread_id" not in group


def test_images_typing_and_callback_answers(api: BotAPIStandIn) -> None:
    with make(api) as sender:
        sender.send_message("tg:111", "a cat", {"image": "https://example.com/cat.jpg"})
        sender.send_message("tg:111", "", {"image": "AgAD-file-id"})
        sender.send_typing("tg:111")
        sender.answer_callback_query("cbq-1")
    photo, by_id = api.sent("sendPhoto")
    assert (photo["photo"], photo["caption"]) == ("https://example.com/cat.jpg", "a cat")
    assert by_id["photo"] == "AgAD-file-id"
    assert "caption" not in by_id
    assert api.sent("sendChatAction") == [{"chat_id": 111, "action": "typing"}]
    assert api.sent("answerCallbackQuery") == [{"callback_query_id": "cbq-1"}]


@pytest.mark.parametrize(
    ("text", "options", "match"),
    [
        ("x" * 4097, None, "4097 characters"),
        ("😀" * 2049, None, "4098 characters"),  # UTF-16: each emoji is two
        ("", None, "must not be empty"),
        ("hi", {"buttons": []}, "non-empty"),
        ("hi", {"nope": 1}, "unknown options"),
        ("hi", {"keyboard": "grid", "buttons": ["a"]}, "inline"),
        ("hi", {"parse_mode": "markdown"}, "parse_mode"),
        ("c" * 1025, {"image": "f"}, "1024"),
        ("hi", {"reply_to": "x"}, "message id"),
    ],
)
def test_limits_are_refused_before_any_http(
    api: BotAPIStandIn, text: str, options: dict[str, Any] | None, match: str
) -> None:
    with make(api) as sender, pytest.raises(InvalidMessageError, match=match) as raised:
        sender.send_message("tg:111", text, options)
    assert raised.value.permanent
    assert api.calls == []


@pytest.mark.parametrize("chat_id", ["", "111", "tg:", "tg:abc", "wa:1", "tg:1:x5", "tg:1\n"])
def test_odd_chat_ids(api: BotAPIStandIn, chat_id: str) -> None:
    with make(api) as sender:
        if chat_id == "111":
            sender.send_message(chat_id, "raw ids pass")
            return
        with pytest.raises(InvalidMessageError, match="chat id"):
            sender.send_message(chat_id, "hi")


def test_429_honours_retry_after(api: BotAPIStandIn) -> None:
    api.respond(429, "error_429_retry_after.json")
    delays: list[float] = []
    with make(api, delays) as sender:
        sender.send_message("tg:111", "hi")
    assert delays == [3.0]


def test_a_retry_after_longer_than_max_backoff_is_handed_to_the_caller(api: BotAPIStandIn) -> None:
    api.respond(429, "error_429_retry_after.json")
    with make(api, max_backoff=1.0) as sender, pytest.raises(TelegramAPIError) as raised:
        sender.send_message("tg:111", "hi")
    assert (raised.value.permanent, raised.value.retry_after) == (False, 3.0)


@pytest.mark.parametrize(
    ("status", "fixture_name", "permanent", "blocked"),
    [
        (403, "error_403_blocked.json", True, True),
        (400, "error_400_chat_not_found.json", True, False),
        (400, "error_400_migrated.json", True, False),
    ],
)
def test_permanent_errors_are_not_retried(
    api: BotAPIStandIn, status: int, fixture_name: str, permanent: bool, blocked: bool
) -> None:
    api.respond(status, fixture_name)
    delays: list[float] = []
    with make(api, delays) as sender, pytest.raises(TelegramAPIError) as raised:
        sender.send_message("tg:111", "hi")
    assert (raised.value.permanent, raised.value.blocked) == (permanent, blocked)
    assert delays == []
    assert len(api.calls) == 1


def test_5xx_is_transient_and_retried(api: BotAPIStandIn) -> None:
    api.respond(502, "error_502_bad_gateway.json")
    api.respond(503, b"<html>down</html>")
    delays: list[float] = []
    with make(api, delays, backoff=0.1) as sender:
        assert sender.send_message("tg:111", "hi")
    assert delays == [0.1, 0.2]


def test_without_retries_raises_the_first_transient_error(api: BotAPIStandIn) -> None:
    api.respond(502, "error_502_bad_gateway.json")
    with make(api) as sender:
        once = sender.without_retries()
        with pytest.raises(TelegramAPIError) as raised:
            once.send_message("tg:111", "hi")
        assert not raised.value.permanent
        assert once._client is sender._client
        assert sender.pacing == once.pacing == Pacing(1.0, 30.0)


def test_a_network_error_is_transient(api: BotAPIStandIn) -> None:
    sender = TelegramSender(
        TOKEN, base_url=f"http://127.0.0.1:{closed_port()}", max_retries=1, sleep=lambda _: None
    )
    with sender, pytest.raises(SenderError, match="cannot reach") as raised:
        sender.send_message("tg:111", "hi")
    assert not raised.value.permanent
    assert TOKEN not in str(raised.value)


def test_the_token_never_appears(api: BotAPIStandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.respond(429, "error_429_retry_after.json")
    api.respond(403, "error_403_blocked.json")
    with make(api) as sender:
        with pytest.raises(TelegramAPIError) as raised:
            sender.send_message("tg:111", "hi")
        texts = [repr(sender), repr(sender._api), str(raised.value), caplog.text]
    assert "HTTP Request: POST" in caplog.text  # httpx's own line was captured, redacted
    secret = TOKEN.partition(":")[2]
    for text in texts:
        assert secret not in text
    with pytest.raises(ValueError, match="BotFather") as bad:
        TelegramSender("123:short-SECRET")
    assert "short-SECRET" not in str(bad.value)


def test_the_async_sender_makes_the_same_requests(api: BotAPIStandIn) -> None:
    async def main() -> None:
        async with AsyncTelegramSender(api.token, base_url=api.base_url) as sender:
            await sender.send_message("tg:111", "hi", {"buttons": ["a"]})
            await sender.send_typing("tg:111")
            await sender.answer_callback_query("q")
            assert (await sender.get_me())["is_bot"] is True

    asyncio.run(main())
    with make(api) as sync:
        sync.send_message("tg:111", "hi", {"buttons": ["a"]})
    first, last = api.sent()
    assert first == last


def test_webhook_helpers(api: BotAPIStandIn) -> None:
    with make(api) as sender:
        sender.set_webhook(
            "https://example.com/tg", secret_token="abc", allowed_updates=["message"]
        )
        assert api.webhook == {
            "url": "https://example.com/tg",
            "drop_pending_updates": False,
            "secret_token": "abc",
            "allowed_updates": ["message"],
        }
        sender.delete_webhook()
    assert api.webhook is None


def test_a_wrong_token_is_the_documented_401(api: BotAPIStandIn) -> None:
    other = TelegramSender("123456789:AAHanother-token-abcdefghijk", base_url=api.base_url)
    with other, pytest.raises(TelegramAPIError) as raised:
        other.get_me()
    assert (raised.value.error_code, raised.value.permanent) == (401, True)
