"""One import for the public API; optional drivers load only when their names are used."""

from __future__ import annotations

import importlib
import textwrap

import pytest

import chat_orchestrator
from tests.helpers import run_python

PACKAGES = ["chat_orchestrator", "chat_orchestrator.state_managers", "chat_orchestrator.senders"]


def test_the_short_imports_work() -> None:
    from chat_orchestrator import (
        ChatOrchestrator,
        Conversation,
        ConversationTester,
        RecordingSender,
        Turn,
        state,
    )
    from chat_orchestrator.conversation import Conversation as LongConversation
    from chat_orchestrator.testing import ConversationTester as LongTester

    assert Conversation is LongConversation
    assert ConversationTester is LongTester
    assert [ChatOrchestrator.__name__, RecordingSender.__name__, Turn.__name__, state.__name__] == [
        "ChatOrchestrator",
        "RecordingSender",
        "Turn",
        "state",
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_is_there_and_every_public_name_is_in_all(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    public = {n for n, v in vars(module).items() if not n.startswith("_") and not _is_module(v)}
    assert public - {"OPTIONAL", "TYPE_CHECKING", "lazy_attributes"} <= set(module.__all__)


def _is_module(value: object) -> bool:
    return type(value).__name__ == "module"


def test_every_error_of_the_tree_is_exported() -> None:
    from chat_orchestrator import errors

    assert set(errors.__all__) - {"describe_chat_id"} <= set(chat_orchestrator.__all__)


@pytest.mark.parametrize(
    ("package", "name", "driver", "extra"),
    [
        ("chat_orchestrator.state_managers", "RedisStateManager", "redis", "redis"),
        ("chat_orchestrator.state_managers", "MongoDBStateManager", "pymongo", "mongo"),
        ("chat_orchestrator.state_managers", "PostgresStateManager", "psycopg", "postgres"),
        ("chat_orchestrator", "PostgresStateManager", "psycopg_pool", "postgres"),
        ("chat_orchestrator.senders", "WhatsAppSender", "httpx", "whatsapp"),
        ("chat_orchestrator.senders", "AsyncWhatsAppSender", "httpx", "whatsapp"),
        ("chat_orchestrator", "RedisStateManager", "redis", "redis"),
    ],
)
def test_optional_names_load_lazily_and_name_the_extra(
    package: str, name: str, driver: str, extra: str
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{driver!r}] = None  # the driver is not installed
        import chat_orchestrator, {package}
        from chat_orchestrator import *
        assert {driver!r} not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            from {package} import {name}
        except chat_orchestrator.MissingDependencyError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        else:
            raise AssertionError("imported without the driver")
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert f'"chat-orchestrator[{extra}]"' in result.stdout


def test_optional_names_resolve_when_the_extra_is_installed() -> None:
    from chat_orchestrator import WhatsAppBot
    from chat_orchestrator.channels import WhatsAppBot as LongBot
    from chat_orchestrator.senders import WhatsAppSender
    from chat_orchestrator.senders.whatsapp import WhatsAppSender as LongSender
    from chat_orchestrator.state_managers import MongoDBStateManager, RedisStateManager
    from chat_orchestrator.state_managers.mongodb import MongoDBStateManager as LongMongo
    from chat_orchestrator.state_managers.redis import RedisStateManager as LongRedis

    assert WhatsAppSender is LongSender
    assert WhatsAppBot is LongBot
    assert RedisStateManager is LongRedis
    assert MongoDBStateManager is LongMongo
    from chat_orchestrator import PostgresStateManager
    from chat_orchestrator.state_managers.postgres import PostgresStateManager as LongPostgres

    assert PostgresStateManager is LongPostgres
    assert "RedisStateManager" in dir(chat_orchestrator.state_managers)
    with pytest.raises(ImportError):
        exec("from chat_orchestrator.state_managers import NoSuchManager")  # noqa: S102
