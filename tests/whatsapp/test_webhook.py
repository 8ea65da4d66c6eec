"""The webhook and the WSGI bot, driven with real HTTP requests and the fixture bytes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator.channels import (
    StatusEvent,
    WhatsAppBot,
    WhatsAppWebhook,
    inbound_message,
    parse_payload,
)
from chat_orchestrator.errors import WebhookError
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.senders.base import MessageSender
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.file import FileStateManager
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.testing import RecordingSender
from tests.whatsapp.conftest import APP_SECRET, VERIFY_TOKEN, Served, sign
from tests.whatsapp.graph_standin import FIXTURES, fixture, fixture_bytes

SIGNATURES = {
    line.split("|")[1].strip(): line.split("|")[2].strip().strip("`")
    for line in (FIXTURES / "README.md").read_text().splitlines()
    if line.startswith("| ") and "sha256=" in line
}
Serve = Callable[[WhatsAppBot], Served]


def echo_bot(manager: StateManager | None = None) -> tuple[WhatsAppBot, RecordingSender]:
    """Each turn replies with what the step saw: input, reply title, message kind."""
    sender = RecordingSender()
    # "is None", not "or": an empty InMemoryStateManager is falsy (it has __len__).
    orchestrator = ChatOrchestrator(InMemoryStateManager() if manager is None else manager, sender)

    @orchestrator.register_step("start")
    def start(
        chat_id: str, text: str | None, context: dict[str, Any], sender: MessageSender
    ) -> tuple[str, dict[str, Any]]:
        message = inbound_message()
        assert message is not None
        if text == "boom":
            raise RuntimeError("the step failed")
        title = message.reply.title if message.reply else None
        sender.send_message(chat_id, f"{message.kind}|{text}|{title}")
        return "start", {"n": context.get("n", 0) + 1}

    bot = WhatsAppBot(orchestrator, WhatsAppWebhook(VERIFY_TOKEN, APP_SECRET))
    return bot, sender


def test_fixture_signatures_are_the_documented_ones() -> None:
    assert len(SIGNATURES) == 8
    for name, signature in SIGNATURES.items():
        assert sign(fixture_bytes(name)) == signature, name


def test_subscription_check(serve: Serve) -> None:
    served = serve(echo_bot()[0])
    params = {
        "hub.mode": "subscribe",
        "hub.challenge": "1158201444",
        "hub.verify_token": VERIFY_TOKEN,
    }
    ok = served.session.get(served.url, params=params, timeout=5)
    assert (ok.status_code, ok.text) == (200, "1158201444")
    assert ok.headers["Content-Type"].startswith("text/plain")
    params["hub.challenge"] = "not-a-number-é"
    assert served.session.get(served.url, params=params, timeout=5).text == "not-a-number-é"
    for wrong in ({**params, "hub.verify_token": "nope"}, {**params, "hub.mode": "unsubscribe"}):
        assert served.session.get(served.url, params=wrong, timeout=5).status_code == 403


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_fixture_is_accepted_with_its_signature(serve: Serve, name: str) -> None:
    bot, _ = echo_bot()
    served = serve(bot)
    response = served.post(fixture_bytes(name), SIGNATURES[name])
    assert (response.status_code, response.text) == (200, "OK")


def test_text_button_list_image_unsupported_reach_the_step(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    for name in [
        "inbound_text.json",
        "inbound_button_reply.json",
        "inbound_list_reply.json",
        "inbound_image.json",
        "inbound_unsupported.json",
    ]:
        assert served.post(fixture_bytes(name), SIGNATURES[name]).status_code == 200
    text = fixture("inbound_text.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    button = fixture("inbound_button_reply.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    image = fixture("inbound_image.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    reply = button["interactive"]["button_reply"]
    assert sender.texts() == [
        f"text|{text['text']['body']}|None",
        f"button_reply|{reply['id']}|{reply['title']}",
        "list_reply|" + _list_reply_id() + "|" + _list_reply_title(),
        f"image|{image['image'].get('caption')}|None",
        "unsupported|None|None",
    ]
    assert "é" in sender.texts()[0]  # the \u00e9 escape was decoded, the bytes were verified


def _list_reply_id() -> str:
    raw = fixture("inbound_list_reply.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    return str(raw["interactive"]["list_reply"]["id"])


def _list_reply_title() -> str:
    raw = fixture("inbound_list_reply.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    return str(raw["interactive"]["list_reply"]["title"])


def test_two_users_in_one_post_are_two_turns(serve: Serve) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    assert served.post(fixture_bytes("batch_two_messages.json")).status_code == 200
    assert [m.chat_id for m in sender.sent] == ["15550002222", "15550003333"]
    assert bot.turns == 2


def test_the_same_payload_twice_is_one_turn(serve: Serve, tmp_path: Path) -> None:
    manager = FileStateManager(state_dir=tmp_path)
    bot, sender = echo_bot(manager)
    served = serve(bot)
    body = fixture_bytes("inbound_text.json")
    assert served.post(body).status_code == 200
    assert served.post(body).status_code == 200
    # A restarted worker on the same store does not run it again either.
    restarted, sender_after = echo_bot(FileStateManager(state_dir=tmp_path))
    assert serve(restarted).post(body).status_code == 200
    assert len(sender.sent) + len(sender_after.sent) == 1


def test_status_only_post_runs_no_turn_and_reports_statuses(serve: Serve) -> None:
    bot, sender = echo_bot()
    seen: list[StatusEvent] = []
    bot.on_status = seen.append
    served = serve(bot)
    assert served.post(fixture_bytes("status_delivered.json")).status_code == 200
    assert served.post(fixture_bytes("status_failed_131047.json")).status_code == 200
    assert sender.sent == []
    assert [s.status for s in seen] == ["delivered", "failed"]
    assert seen[1].errors[0].code == 131047
    assert seen[0].callback_data is not None


def test_a_failing_step_is_answered_200_and_recorded(serve: Serve) -> None:
    bot, _ = echo_bot()
    served = serve(bot)
    payload = fixture("inbound_text.json")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "boom"
    body = json.dumps(payload).encode()
    assert served.post(body).status_code == 200
    (failure,) = bot.failures
    assert "the step failed" in failure.error


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


HOSTILE = [
    ("forged signature", fixture_bytes("inbound_text.json"), "sha256=" + "0" * 64, 403),
    (
        "other secret",
        fixture_bytes("inbound_text.json"),
        sign(fixture_bytes("inbound_text.json"), "wrong"),
        403,
    ),
    ("missing header", fixture_bytes("inbound_text.json"), None, 401),
    (
        "re-serialized JSON's signature",
        fixture_bytes("inbound_text.json"),
        sign(json.dumps(fixture("inbound_text.json"), ensure_ascii=False).encode()),
        403,
    ),
    ("empty body", b"", "auto", 400),
    ("non-JSON", b"not json at all", "auto", 400),
    (
        "messages as an object",
        body_of(
            {
                "object": "whatsapp_business_account",
                "entry": [{"changes": [{"field": "messages", "value": {"messages": {"id": "x"}}}]}],
            }
        ),
        "auto",
        400,
    ),
    ("missing entry", body_of({"object": "whatsapp_business_account"}), "auto", 400),
    ("entry not a list", body_of({"object": "whatsapp_business_account", "entry": 5}), "auto", 400),
]


@pytest.mark.parametrize(
    ("body", "signature", "status"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_posts_are_refused_and_run_nothing(
    serve: Serve, body: bytes, signature: str | None, status: int
) -> None:
    bot, sender = echo_bot()
    served = serve(bot)
    response = served.post(body, signature)
    assert response.status_code == status
    assert sender.sent == []
    assert bot.turns == 0


def test_a_body_over_the_limit_is_413(serve: Serve) -> None:
    bot, sender = echo_bot()
    bot.webhook.max_body_bytes = 500  # the fixture is about 1.5 KB
    served = serve(bot)
    assert served.post(fixture_bytes("batch_two_messages.json")).status_code == 413
    assert sender.sent == []


def test_another_products_webhook_is_ignored(serve: Serve) -> None:
    bot, sender = echo_bot()
    response = serve(bot).post(body_of({"object": "page", "entry": []}))
    assert response.status_code == 200
    assert sender.sent == []


def test_messages_for_another_business_number_are_skipped(serve: Serve) -> None:
    bot, sender = echo_bot()
    bot.phone_number_id = "999"
    assert serve(bot).post(fixture_bytes("inbound_text.json")).status_code == 200
    assert sender.sent == []


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_one_chats_messages_run_in_timestamp_order(driver: str) -> None:
    payload = fixture("batch_two_messages.json")
    messages = payload["entry"][0]["changes"][0]["value"]["messages"]
    for message, (stamp, body) in zip(
        messages, [("1767226009", "second"), ("1767226001", "first")], strict=True
    ):
        message.update({"from": "15550002222", "timestamp": stamp, "text": {"body": body}})
    bot, sender = echo_bot()
    batch = parse_payload(payload)
    answer = bot.handle(batch) if driver == "sync" else asyncio.run(bot.handle_async(batch))
    assert answer == (200, "OK")
    assert sender.texts() == ["text|first|None", "text|second|None"]


def test_absent_from_uses_the_business_scoped_id_and_unknown_fields_pass() -> None:
    payload = fixture("inbound_text.json")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["from"]
    message["brand_new_field"] = {"x": 1}
    payload["entry"][0]["changes"][0]["value"]["contacts"][0].pop("wa_id", None)
    (parsed,) = parse_payload(payload).messages
    assert parsed.chat_id == message["from_user_id"]
    assert parsed.wa_id is None
    assert parsed.contact_name == "Test User A"


def test_template_quick_reply_and_location_are_typed() -> None:
    payload = fixture("inbound_text.json")
    value = payload["entry"][0]["changes"][0]["value"]
    base = value["messages"][0]
    value["messages"] = [
        {
            **base,
            "id": "wamid.T",
            "type": "button",
            "button": {"payload": "appt_reschedule", "text": "Reschedule"},
        },
        {
            **base,
            "id": "wamid.L",
            "type": "location",
            "location": {"latitude": 52.5, "longitude": 13.4, "name": "Berlin"},
        },
    ]
    template, location = parse_payload(payload).messages
    assert (template.kind, template.user_input, template.reply and template.reply.title) == (
        "template_button",
        "appt_reschedule",
        "Reschedule",
    )
    assert location.location is not None
    assert (location.kind, location.location.latitude, location.location.name) == (
        "location",
        52.5,
        "Berlin",
    )


def test_secrets_never_appear(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bot, _ = echo_bot()
    served = serve(bot)
    served.post(fixture_bytes("inbound_text.json"), "sha256=" + "1" * 64)
    served.session.get(served.url, params={"hub.mode": "subscribe", "hub.verify_token": "x"})
    with pytest.raises(WebhookError) as raised:
        bot.webhook.parse(b"{}", sign(b"{}", "wrong"))
    for text in [repr(bot.webhook), caplog.text, str(raised.value)]:
        assert APP_SECRET not in text
        assert VERIFY_TOKEN not in text
