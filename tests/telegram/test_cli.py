"""``chat-orchestrator telegram webhook set|delete`` and ``telegram poll`` against the stand-in."""

from __future__ import annotations

import pytest

from chat_orchestrator.cli import main
from tests.telegram.bot_api_standin import BotAPIStandIn


def test_webhook_set_and_delete(
    api: BotAPIStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", api.token)
    monkeypatch.setenv("TELEGRAM_API_BASE", api.base_url)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "sec_1")
    assert main(["telegram", "webhook", "set", "https://example.com/tg"]) == 0
    assert (api.webhook or {}).get("secret_token") == "sec_1"
    assert main(["telegram", "webhook", "delete"]) == 0
    assert not api.webhook
    out = capsys.readouterr()
    assert api.token.partition(":")[2] not in out.out + out.err


def test_missing_settings_and_bad_targets_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    assert main(["telegram", "webhook", "delete"]) == 2
    assert "TELEGRAM_BOT_TOKEN" in capsys.readouterr().err
    assert main(["telegram", "poll", "examples/two_channels.py:menu_orchestrator"]) == 2
    assert "not a TelegramBot" in capsys.readouterr().err
