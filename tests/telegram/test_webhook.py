"""TelegramBot through a real server (wsgiref and uvicorn): updates, dedup, hostile requests."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chat_orchestrator.channels.events import ChannelEvent
from chat_orchestrator.channels.telegram_app import TelegramBot
from chat_orchestrator.channels.telegram_poll import TelegramPoller
from chat_orchestrator.errors import StateManagerUnavailableError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.senders.telegram import TelegramSender
from chat_orchestrator.senders.telegram_payloads import StoredCallbackIds, callback_token
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from tests.telegram.bot_api_standin import BotAPIStandIn
from tests.telegram.conftest import SECRET, Serve

UPDATES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "fixtures" / "updates.json").read_bytes()
)


class Flaky(InMemoryStateManager):
    """The store is unreachable for turns while ``down`` (claims still work)."""

    down = True

    def begin_turn(self, chat_id: str) -> Any:
        self._check()
        return super().begin_turn(chat_id)

    async def begin_turn_async(self, chat_id: str) -> Any:
        self._check()
        return await super().begin_turn_async(chat_id)

    def _check(self) -> None:
        if self.down:
            raise StateManagerUnavailableError("store down")


def update(name: str, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = copy.deepcopy(UPDATES[name])
    out.update(changes)
    return out


def echo_orchestrator(
    sender: Any, store: Any = None
) -> tuple[ChatOrchestrator, list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    orchestrator = ChatOrchestrator(store if store is not None else InMemoryStateManager(), sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, user_input: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        seen.append((chat_id, user_input))
        sender.send_message(chat_id, f"got {user_input}")
        return "start", {}

    return orchestrator, seen


@pytest.fixture
def setup(api: BotAPIStandIn) -> Any:
    sender = TelegramSender(api.token, base_url=api.base_url)
    orchestrator, seen = echo_orchestrator(sender)
    events: list[ChannelEvent] = []
    bot = TelegramBot(orchestrator, secret_token=SECRET, on_event=events.append)
    yield bot, seen, events
    sender.close()


def post(served: Any, body: Any, secret: str | None = SECRET) -> Any:
    return served.post(json.dumps(body).encode(), secret)


def test_a_text_runs_one_turn_and_the_reply_goes_out(
    serve: Serve, setup: Any, api: BotAPIStandIn
) -> None:
    bot, seen, _ = setup
    served = serve(bot)
    assert post(served, update("text")).status_code == 200
    assert seen == [("tg:111", "hello")]
    assert api.sent()[0]["text"] == "got hello"
    assert post(served, update("text")).status_code == 200  # Telegram's redelivery
    assert seen == [("tg:111", "hello")]


def test_a_button_press_reaches_the_flow_as_the_option_id_and_is_answered(
    serve: Serve, setup: Any, api: BotAPIStandIn
) -> None:
    bot, seen, _ = setup
    served = serve(bot)
    assert post(served, update("callback_query")).status_code == 200
    assert seen == [("tg:111", "opt_yes")]
    assert api.sent("answerCallbackQuery") == [{"callback_query_id": "4382bfdwdsb323b2d9"}]


def test_a_callback_query_without_a_message_is_answered_and_recorded(
    serve: Serve, setup: Any, api: BotAPIStandIn
) -> None:
    bot, seen, _ = setup
    assert post(serve(bot), update("callback_without_message")).status_code == 200
    assert seen == []
    assert api.sent("answerCallbackQuery") == [{"callback_query_id": "cbq-no-msg"}]
    assert "without a message" in bot.failures[-1].error


def test_a_long_option_id_resolves_through_the_store(serve: Serve, api: BotAPIStandIn) -> None:
    store = InMemoryStateManager()
    ids = StoredCallbackIds(store)
    sender = TelegramSender(api.token, base_url=api.base_url, callback_ids=ids)
    orchestrator, seen = echo_orchestrator(sender, store)
    long_id = "choice:" + "z" * 100
    sender.send_message("tg:111", "pick", {"buttons": [{"id": long_id, "title": "Z"}]})
    token = api.sent()[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    assert token == callback_token(long_id)
    # A new bot on the same store (a restart) still resolves it.
    bot = TelegramBot(orchestrator, secret_token=SECRET, callback_ids=StoredCallbackIds(store))
    press = update("callback_query")
    press["callback_query"]["data"] = token
    assert post(serve(bot), press).status_code == 200
    assert seen == [("tg:111", long_id)]
    unknown = update("callback_query", update_id=20000)
    unknown["callback_query"]["data"] = "~unknown"
    assert post(serve(bot), unknown).status_code == 200
    assert seen == [("tg:111", long_id)]
    assert "unknown" in bot.failures[-1].error
    sender.close()


@pytest.mark.parametrize("name", ["photo", "location", "contact"])
def test_message_kinds(serve: Serve, setup: Any, name: str) -> None:
    bot, seen, _ = setup
    assert post(serve(bot), update(name)).status_code == 200
    expected = {"photo": "my cat", "location": None, "contact": "+15550001111"}[name]
    assert seen == [("tg:111", expected)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("edited_message", "edited"),
        ("my_chat_member_kicked", "blocked"),
        ("my_chat_member_member", "unblocked"),
        ("inline_query", "unsupported"),
    ],
)
def test_updates_that_run_no_turn_are_recorded(
    serve: Serve, setup: Any, name: str, kind: str
) -> None:
    bot, seen, events = setup
    assert post(serve(bot), update(name)).status_code == 200
    assert seen == []
    assert [e.kind for e in events] == [kind]
    assert list(bot.recorded) == events


@pytest.mark.parametrize(
    ("group_mode", "topics", "name", "chat_id"),
    [
        ("chat", True, "group_text", "tg:-1001234567890"),
        ("user", True, "group_text", "tg:-1001234567890:u222"),
        ("chat", True, "forum_text", "tg:-1001234567890:t55"),
        ("user", True, "forum_text", "tg:-1001234567890:t55:u222"),
        ("chat", False, "forum_text", "tg:-1001234567890"),
        ("user", True, "text", "tg:111"),
    ],
)
def test_chat_identity(
    api: BotAPIStandIn, group_mode: Any, topics: bool, name: str, chat_id: str
) -> None:
    with TelegramSender(api.token, base_url=api.base_url) as sender:
        orchestrator, seen = echo_orchestrator(sender)
        bot = TelegramBot(orchestrator, secret_token=SECRET, group_mode=group_mode, topics=topics)
        assert bot.handle_update(update(name)) == (200, "OK")
    assert seen[0][0] == chat_id
    reply = api.sent()[0]
    assert reply.get("message_thread_id") == (55 if ":t55" in chat_id else None)


# -- hostile requests ----------------------------------------------------------------------
@pytest.mark.parametrize(("secret", "status"), [(None, 401), ("wrong", 403), ("é" * 3, 403)])
def test_a_missing_or_wrong_secret_is_refused(
    serve: Serve, setup: Any, secret: str | None, status: int
) -> None:
    bot, seen, _ = setup
    served = serve(bot)
    body = json.dumps(update("text")).encode()
    headers = (
        {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret.encode("latin-1")}
    )
    answer = served.session.post(served.url, data=body, headers=headers, timeout=10)
    assert answer.status_code == status
    assert seen == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"update_id": "10"}',
        b'{"update_id": -1}',
        b'{"update_id": true}',
        b'{"update_id": 1e3}',
        b'{"update_id": 99999999999999999999999999}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"update_id": ' + b"9" * 5000 + b"}",
    ],
)
def test_bodies_that_are_no_update_are_400(serve: Serve, setup: Any, body: bytes) -> None:
    bot, seen, _ = setup
    assert serve(bot).post(body).status_code == 400
    assert seen == []


def test_oversized_bodies_and_odd_methods(serve: Serve, api: BotAPIStandIn) -> None:
    with TelegramSender(api.token, base_url=api.base_url) as sender:
        orchestrator, seen = echo_orchestrator(sender)
        served = serve(TelegramBot(orchestrator, secret_token=SECRET, max_body_bytes=500))
        assert served.post(b"{" + b" " * 600 + b"}").status_code == 413
        assert served.session.get(served.url, timeout=10).status_code == 405
        chunked = served.session.post(
            served.url,
            data=iter([b'{"update_id": 1}']),
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            timeout=10,
        )
        assert chunked.status_code == 411
    assert seen == []


def test_a_short_body_is_400_not_a_hang(serve: Serve, setup: Any) -> None:
    bot, _, _ = setup
    served = serve(bot)
    url = urlsplit(served.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as conn:
        conn.sendall(
            b"POST /telegram HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
            + f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n\r\n".encode()
            + b'{"update_id": 1}'
        )
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(100)
    if served.kind == "asgi":  # uvicorn reports the half-close as a disconnect: no one to answer
        assert answer in (b"", b"HTTP/1.1 400 Bad Request\r\n"[:100]) or b" 400 " in answer
    else:
        assert answer.split(b" ")[1] == b"400"


@pytest.mark.parametrize(
    "broken",
    [
        {"message": {"message_id": 1, "text": "no chat"}},
        {"message": {"message_id": 1, "chat": {"id": "111"}, "text": "string id"}},
        {"message": {"message_id": 1, "chat": {"id": 2**70}, "text": "huge id"}},
        {"message": {"message_id": True, "chat": {"id": 1}, "text": "bool id"}},
        {"message": "not an object"},
        {"message": {"message_id": 1, "chat": {"id": 1}, "location": {"latitude": "x"}}},
        {
            "message": {
                "message_id": 1,
                "chat": {"id": 1},
                "location": {"latitude": 91, "longitude": 0},
            }
        },
        {"callback_query": {"from": {"id": 1}, "data": "x"}},
        {"my_chat_member": {"chat": {}}},
    ],
)
def test_a_malformed_update_is_skipped_recorded_and_acknowledged(
    serve: Serve, setup: Any, broken: dict[str, Any]
) -> None:
    bot, seen, _ = setup
    served = serve(bot)
    assert post(served, {"update_id": 30000} | broken).status_code == 200
    assert seen == []
    assert bot.failures[-1].message_id == "30000"
    assert "malformed" in bot.failures[-1].error


def test_odd_text_is_passed_on_unchanged_or_escaped(serve: Serve, setup: Any) -> None:
    bot, seen, _ = setup
    served = serve(bot)
    for n, text in enumerate(["", "\x00", "😀" * 10, "\ud800"]):
        body = update("text", update_id=40000 + n)
        body["message"]["text"] = text
        assert post(served, body).status_code == 200
    assert [s[1] for s in seen] == ["", "\x00", "😀" * 10, "\\ud800"]


def test_an_unreachable_store_gives_the_claim_back_and_answers_503(
    serve: Serve, api: BotAPIStandIn
) -> None:
    store = Flaky()
    with TelegramSender(api.token, base_url=api.base_url) as sender:
        orchestrator, seen = echo_orchestrator(sender, store)
        served = serve(TelegramBot(orchestrator, secret_token=SECRET))
        assert post(served, update("text")).status_code == 503
        store.down = False
        assert post(served, update("text")).status_code == 200
    assert seen == [("tg:111", "hello")]


def test_secrets_never_appear_and_bad_settings_are_refused(setup: Any) -> None:
    bot, _, _ = setup
    assert SECRET not in repr(bot) + repr(bot.asgi)
    orchestrator = bot.orchestrator
    for bad in ["", "has space", "x" * 257, "ünï"]:
        with pytest.raises(ValueError, match="secret_token"):
            TelegramBot(orchestrator, secret_token=bad)
    with pytest.raises(ValueError, match="bot_id"):
        TelegramBot(ChatOrchestrator(InMemoryStateManager(), object()), secret_token="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_mode"):
        TelegramBot(orchestrator, secret_token="a", group_mode="x")  # type: ignore[arg-type]


def test_a_bot_without_a_secret_serves_no_webhook(serve: Serve, setup: Any) -> None:
    bot, seen, _ = setup
    served = serve(TelegramBot(bot.orchestrator, secret_token=None))
    assert post(served, update("text")).status_code == 403
    assert seen == []


# -- long polling --------------------------------------------------------------------------
def test_polling_confirms_an_offset_only_after_the_turn(api: BotAPIStandIn) -> None:
    store = Flaky()
    with TelegramSender(api.token, base_url=api.base_url) as sender:
        orchestrator, seen = echo_orchestrator(sender, store)
        bot = TelegramBot(orchestrator, secret_token=None)
        api.push_update(update("text"))
        api.push_update(update("callback_query"))
        store.down = True
        poller = TelegramPoller(bot, sender, timeout=0)
        assert poller.poll_once() == 0  # deferred: the offset is not moved
        assert api.pending() == [10000, 10001]
        store.down = False
        assert poller.poll_once() == 2
        assert seen == [("tg:111", "hello"), ("tg:111", "opt_yes")]
        # A restart: a new poller with no offset is served the unconfirmed updates again ...
        restarted = TelegramPoller(bot, sender, timeout=0)
        assert restarted.poll_once() == 2
        assert len(seen) == 2  # ... and the claims keep them from running twice
        restarted.run(rounds=1)
        assert api.pending() == []
        assert api.sent("getUpdates")[0]["allowed_updates"] == [
            "message",
            "edited_message",
            "callback_query",
            "my_chat_member",
        ]


def test_polling_survives_a_failing_get_updates(api: BotAPIStandIn) -> None:
    api.respond(429, "error_429_retry_after.json")
    waits: list[float] = []
    with TelegramSender(api.token, base_url=api.base_url, max_retries=0) as sender:
        orchestrator, seen = echo_orchestrator(sender)
        api.push_update(update("text"))
        poller = TelegramPoller(
            TelegramBot(orchestrator, secret_token=None), sender, timeout=0, sleep=waits.append
        )
        poller.run(rounds=2)
    assert waits == [3.0]
    assert seen == [("tg:111", "hello")]
