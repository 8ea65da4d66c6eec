"""Attacks on store URLs that once got a secret into a log line."""

from __future__ import annotations

import logging
import traceback

import pytest

from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.stores import open_store, redact_url
from tests.servers import NxServer

TOKEN = "Sess10nT0ken"


def test_a_session_token_under_a_harmless_option_name_is_redacted() -> None:
    url = f"mongodb://h/db?authMechanismProperties=AWS_SESSION_TOKEN:{TOKEN}&w=1"
    assert redact_url(url) == "mongodb://h/db?authMechanismProperties=***&w=1"
    encoded = f"mongodb://h/db?authMechanismProperties=AWS_SESSION_TOKEN%3A{TOKEN}"
    assert TOKEN not in redact_url(encoded)


def test_a_mongodb_session_token_never_reaches_the_log(
    nx_server: NxServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: open_store's own DEBUG line "opening store ..." showed the token in full.
    caplog.set_level(logging.DEBUG)
    host = nx_server.uri.split("//", 1)[1].rstrip("/")
    url = (
        f"mongodb://{host}/attackdb?serverSelectionTimeoutMS=2000"
        f"&authMechanismProperties=AWS_SESSION_TOKEN:{TOKEN}"
    )
    seen: list[str] = []
    try:
        store = open_store(url)
        seen.append(repr(store))
        store.set_state("c", "s", {})
    except StateManagerError as exc:
        seen.append("".join(traceback.format_exception(exc)))
    seen.extend(record.getMessage() for record in caplog.records)
    assert any("opening store" in text for text in seen)
    assert [text for text in seen if TOKEN in text] == []
