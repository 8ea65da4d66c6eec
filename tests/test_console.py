"""The console sender: numbered choices, and the last messages kept for a resume."""

from __future__ import annotations

import io
from pathlib import Path

from chat_orchestrator.senders.console import (
    ConsoleMessage,
    ConsoleMessageSender,
    LastMessages,
    resolve_choice,
)

MENU = ConsoleMessage(
    "Pick one",
    {
        "list": {
            "button": "Menu",
            "sections": [
                {"title": "Food", "rows": [{"id": "pizza", "title": "Pizza"}]},
                {"title": "Drinks", "rows": [{"id": "tea", "title": "Green tea"}]},
            ],
        }
    },
)


def test_list_rows_are_numbered_and_chosen_by_number_or_title() -> None:
    out = io.StringIO()
    sender = ConsoleMessageSender(out)
    sender.send_message("u1", MENU.text, MENU.options)
    assert out.getvalue() == "Pick one\n  1. Pizza\n  2. Green tea\n"
    shown = sender.turn_messages("u1")
    assert resolve_choice("2", shown) == "tea"
    assert resolve_choice(" green TEA ", shown) == "tea"
    assert resolve_choice("3", shown) == "3"  # not a choice: passed on as typed
    assert resolve_choice("coffee", shown) == "coffee"
    sender.begin_turn("u1")
    assert sender.turn_messages("u1") == []


def test_only_the_choices_on_screen_count() -> None:
    buttons = ConsoleMessage("Sure?", {"buttons": ["Yes", "No"]})
    after = ConsoleMessage("(no buttons here)")
    assert resolve_choice("2", [MENU, buttons, after]) == "No"
    assert resolve_choice("Pizza", [MENU, buttons]) == "Pizza"  # the menu is no longer shown


def test_last_messages_round_trip_by_chat_and_version(tmp_path: Path) -> None:
    kept = LastMessages(tmp_path / ".console")
    kept.save("../a/b", [MENU], version=3)
    assert kept.load("../a/b", 3) == [MENU]
    assert kept.load("../a/b", 4) == []  # the chat moved on since
    assert kept.load("other", 3) == []
    (path,) = (tmp_path / ".console").glob("*.json")
    path.write_text("{not json", encoding="utf-8")
    assert kept.load("../a/b", 3) == []  # unreadable: nothing to repeat, no error
