"""Flows that change after deployment: schema versions, migrations, renamed states, migrate."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, Field

from chat_orchestrator._migrations import VERSION_KEY, Migration
from chat_orchestrator.conversation import Conversation, Turn, state
from chat_orchestrator.errors import (
    ContextValidationError,
    ConversationDefinitionError,
    UnknownStateError,
)
from chat_orchestrator.migrate import migrate_chats
from chat_orchestrator.orchestrator import ChatOrchestrator
from chat_orchestrator.state_managers.base import StateManager, StateRecord
from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.testing import RecordingSender
from tests.helpers import ROOT
from tests.test_cli import exe


# -- version 1, as deployed first ----------------------------------------------------------
class V1(BaseModel):
    name: str | None = None


class ShopV1(Conversation[V1]):
    @state(initial=True)
    def ask(self, turn: Turn[V1]) -> Literal["checkout"]:
        turn.context.name = turn.text
        turn.send("What do you want?")
        return "checkout"

    @state(final=True)
    def checkout(self, turn: Turn[V1]) -> Literal["checkout"]:
        turn.send(f"Bye {turn.context.name}")
        return "checkout"


# -- version 3: a field renamed, a field added, "ask" renamed, "checkout" removed -----------
class V3(BaseModel):
    first_name: str | None = None
    visits: int = 0


#: Called once (then dropped) from inside the 1->2 migration: a turn "racing" the migrator.
DURING_MIGRATION: list[Callable[[], object]] = []


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["first_name"] = data.pop("name", None)
    while DURING_MIGRATION:
        DURING_MIGRATION.pop()()
    return data


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["visits"] = int(data.pop("visit_count", 0))  # "many" raises: unmigratable
    return data


class ShopV3(Conversation[V3]):
    schema_version = 3
    migrations: ClassVar[Mapping[int, Migration]] = {1: v1_to_v2, 2: v2_to_v3}
    renamed_states: ClassVar[Mapping[str, str]] = {"ask": "start", "checkout": "menu"}

    @state(initial=True)
    def start(self, turn: Turn[V3]) -> Literal["menu"]:
        turn.context.first_name = turn.text
        turn.send("Welcome")
        return "menu"

    @state
    def menu(self, turn: Turn[V3]) -> Literal["menu"]:
        turn.context.visits += 1
        turn.send(f"Menu for {turn.context.first_name} ({turn.context.visits})")
        return "menu"


class AsyncShopV3(ShopV3):
    """The same flow (inherited schema, migrations and renames) with an async state."""

    @state
    async def menu(self, turn: Turn[V3]) -> Literal["menu"]:  # type: ignore[override]
        turn.context.visits += 1
        await turn.send_async(f"Menu for {turn.context.first_name} ({turn.context.visits})")
        return "menu"


def v1_record(
    manager: StateManager, chat_id: str, state_id: str = "checkout", **context: Any
) -> StateRecord:
    """A record as version 1 of the flow stored it (no version key)."""
    manager.save(chat_id, state_id, {"name": "Ada", **context}, expected_version=0)
    record = manager.load(chat_id)
    assert record is not None
    return record


def sqlite(tmp_path: Path) -> SQLiteStateManager:
    return SQLiteStateManager(tmp_path / "chats.db", lock_lease=5)


MIGRATED = {VERSION_KEY: 3, "first_name": "Ada", "visits": 1}


# -- migrate on load, store on the next turn ------------------------------------------------
def test_a_real_v1_record_is_migrated_on_load_and_stored_migrated_by_the_next_turn(
    manager: StateManager,
) -> None:
    sender = RecordingSender()
    ShopV1(manager, sender).handle_message("c1", "Ada")  # stored by the old code itself
    before = manager.load("c1")
    assert before is not None
    assert before.state_id == "checkout"
    assert VERSION_KEY not in before.context  # a flow at version 1 writes no version

    shop = ShopV3(manager, sender)
    assert shop.state_of("c1") == "menu"  # "checkout" was removed: it reads as "menu"
    assert shop.context_of("c1") == V3(first_name="Ada", visits=0)
    assert manager.load("c1") == before  # reading migrates in memory only

    assert shop.handle_message("c1", "hi") == "menu"
    assert sender.texts("c1")[-1] == "Menu for Ada (1)"
    after = manager.load("c1")
    assert after is not None
    assert (after.state_id, after.context) == ("menu", MIGRATED)
    # Stored current: the next turn migrates nothing and keeps counting.
    assert ShopV3.upgrade_record(after) is None
    shop.handle_message("c1", "hi")
    assert shop.context_of("c1") == V3(first_name="Ada", visits=2)


def test_the_async_paths_migrate_too(tmp_path: Path) -> None:
    manager = sqlite(tmp_path)
    v1_record(manager, "c1", visit_count="4")
    sender = RecordingSender()
    shop = AsyncShopV3(manager, sender)

    async def main() -> None:
        assert await shop.context_of_async("c1") == V3(first_name="Ada", visits=4)
        assert await shop.state_of_async("c1") == "menu"
        assert await shop.handle_message_async("c1", "hi") == "menu"

    asyncio.run(main())
    assert sender.texts("c1") == ["Menu for Ada (5)"]
    after = manager.load("c1")
    assert after is not None
    assert after.context == {VERSION_KEY: 3, "first_name": "Ada", "visits": 5}


def test_a_record_part_way_is_migrated_only_through_the_remaining_steps() -> None:
    manager = InMemoryStateManager()
    manager.save(
        "c1", "menu", {VERSION_KEY: 2, "first_name": "Bo", "visit_count": 2}, expected_version=0
    )
    ShopV3(manager, RecordingSender()).handle_message("c1", "hi")
    record = manager.load("c1")
    assert record is not None
    assert record.context == {
        VERSION_KEY: 3,
        "first_name": "Bo",
        "visits": 3,
    }


def test_a_flow_without_a_version_stores_exactly_what_it_stored_before() -> None:
    manager = InMemoryStateManager()
    ShopV1(manager, RecordingSender()).handle_message("c1", "Ada")
    record = manager.load("c1")
    assert record is not None
    assert record.context == {"name": "Ada"}


# -- records that cannot be migrated ---------------------------------------------------------
@pytest.mark.parametrize(
    ("context", "says"),
    [
        ({"name": "Ada", "visit_count": "many"}, "migration 2->3 raised ValueError"),
        ({"name": 5}, "does not fit V3"),  # migrated fine, but does not validate
        ({VERSION_KEY: 4, "first_name": "Ada"}, "newer than this flow's 3"),
        ({VERSION_KEY: "2", "first_name": "Ada"}, "schema version '2' is not an int"),
    ],
)
def test_an_unmigratable_record_raises_naming_the_chat_and_is_left_untouched(
    tmp_path: Path, context: dict[str, Any], says: str
) -> None:
    manager = sqlite(tmp_path)
    manager.save("chat-7", "checkout", context, expected_version=0)
    before = manager.load("chat-7")
    assert before is not None
    shop = AsyncShopV3(manager, RecordingSender())
    attempts: list[Callable[[], object]] = [
        lambda: shop.handle_message("chat-7", "hi"),
        lambda: asyncio.run(shop.handle_message_async("chat-7", "hi")),
        lambda: shop.context_of("chat-7"),
        lambda: asyncio.run(shop.context_of_async("chat-7")),
        lambda: ShopV3.upgrade_record(before, chat_id="chat-7"),
    ]
    for attempt in attempts:
        with pytest.raises(ContextValidationError, match=says) as caught:
            attempt()
        assert caught.value.chat_id == "chat-7"
        assert "'chat-7'" in str(caught.value)
        assert manager.load("chat-7") == before


def test_a_migration_returning_no_dict_is_refused() -> None:
    class Broken(Conversation[V3]):
        schema_version = 2
        # forgot to return the dict
        migrations: ClassVar[Mapping[int, Migration]] = {1: lambda data: None}  # type: ignore[dict-item,return-value]

        @state(initial=True, final=True)
        def start(self, turn: Turn[V3]) -> Literal["start"]:
            return "start"

    manager = InMemoryStateManager()
    before = v1_record(manager, "c1", state_id="start")
    with pytest.raises(ContextValidationError, match="must return a dict, got NoneType"):
        Broken(manager, RecordingSender()).handle_message("c1", "hi")
    assert manager.load("c1") == before


# -- upgrade_record ----------------------------------------------------------------------------
def test_upgrade_record_is_pure_and_none_when_current() -> None:
    record = StateRecord("ask", {"name": "Ada", "extra": {"nested": [1]}}, 7)
    update = ShopV3.upgrade_record(record)
    assert update is not None
    assert (update.state_id, update.context) == (
        "start",
        {VERSION_KEY: 3, "first_name": "Ada", "visits": 0},
    )
    assert update.context_json == '{"__schema_version__":3,"first_name":"Ada","visits":0}'
    assert record == StateRecord("ask", {"name": "Ada", "extra": {"nested": [1]}}, 7)
    assert ShopV3.upgrade_record(StateRecord("menu", update.context, 8)) is None
    # Current schema, renamed state: the state alone is upgraded.
    moved = ShopV3.upgrade_record(StateRecord("checkout", update.context, 9))
    assert moved is not None
    assert (moved.state_id, moved.context) == ("menu", update.context)


def test_upgrade_record_of_a_state_that_is_gone_and_unmapped() -> None:
    with pytest.raises(UnknownStateError, match="map it in renamed_states"):
        ShopV3.upgrade_record(StateRecord("vanished", {}, 1), chat_id="c9")


# -- renamed states ------------------------------------------------------------------------------
def test_a_chat_in_a_renamed_state_continues_in_the_new_one() -> None:
    manager = InMemoryStateManager()
    v1_record(manager, "c1", state_id="ask")
    sender = RecordingSender()
    assert ShopV3(manager, sender).handle_message("c1", "Bea") == "menu"
    assert sender.texts("c1") == ["Welcome"]  # the "start" step ran (it was "ask")
    record = manager.load("c1")
    assert record is not None
    assert (record.state_id, record.context["first_name"]) == ("menu", "Bea")


def test_the_decorator_api_maps_states_through_state_aliases() -> None:
    manager = InMemoryStateManager()
    manager.save("c1", "old_menu", {"n": 1}, expected_version=0)
    bot = ChatOrchestrator(manager, RecordingSender(), state_aliases={"old_menu": "menu"})

    @bot.register_step("start", to=["menu"])
    def start(chat_id: str, text: str | None, context: dict[str, Any], sender: Any) -> Any:
        return "menu", context

    @bot.register_step("menu", to=["menu"])
    def menu(chat_id: str, text: str | None, context: dict[str, Any], sender: Any) -> Any:
        return "menu", {"n": context["n"] + 1}

    bot.validate()
    assert bot.handle_message("c1", "hi") == "menu"
    record = manager.load("c1")
    assert record is not None
    assert (record.state_id, record.context) == ("menu", {"n": 2})
    # Without the alias, a chat in a state that is gone is stuck.
    manager.save("c2", "old_menu", {"n": 1}, expected_version=0)
    plain = ChatOrchestrator(manager, RecordingSender())
    plain.add_step("menu", menu)
    with pytest.raises(UnknownStateError):
        plain.handle_message("c2", "hi")


def test_the_decorator_api_reports_bad_aliases_in_validate() -> None:
    bot = ChatOrchestrator(
        InMemoryStateManager(), RecordingSender(), state_aliases={"start": "x", "gone": "nowhere"}
    )
    bot.add_step("start", lambda chat_id, text, context, sender: ("start", context), to=["start"])
    with pytest.raises(ConversationDefinitionError) as caught:
        bot.validate()
    assert caught.value.problems == [
        "renamed_states maps 'start', which is still a state: remove the entry or the state",
        "renamed_states maps 'gone' to 'nowhere', which is not a state (states: start)",
    ]
    with pytest.raises(TypeError, match="state_aliases"):
        ChatOrchestrator(InMemoryStateManager(), RecordingSender(), state_aliases={"a": 1})  # type: ignore[dict-item]


# -- definition errors -------------------------------------------------------------------------
def _define(**attributes: Any) -> None:
    def start(self: Any, turn: Turn[V3]) -> Literal["start"]:
        return "start"

    namespace = {"start": state(initial=True, final=True)(start), **attributes}
    types.new_class("Bad", (Conversation[V3],), {}, lambda body: body.update(namespace))


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"renamed_states": {"old": "missing"}}, "maps 'old' to 'missing', which is not a state"),
        ({"renamed_states": {"start": "start"}}, "maps 'start', which is still a state"),
        ({"renamed_states": ["old"]}, "renamed_states must be a mapping"),
        ({"schema_version": 3, "migrations": {1: v1_to_v2}}, "lacks the steps from version(s) [2]"),
        ({"schema_version": 2, "migrations": {1: v1_to_v2, 2: v2_to_v3}}, "has key 2"),
        ({"schema_version": 2, "migrations": {1: "v1_to_v2"}}, "migrations[1] is not callable"),
        ({"schema_version": 0}, "schema_version must be an int >= 1, got 0"),
        ({"schema_version": True}, "schema_version must be an int >= 1, got True"),
    ],
)
def test_bad_versions_and_mappings_are_definition_errors(
    attributes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConversationDefinitionError) as caught:
        _define(**attributes)
    assert any(problem in found for found in caught.value.problems), caught.value.problems


def test_a_context_field_on_the_reserved_key_is_a_definition_error() -> None:
    class Sneaky(BaseModel):
        version: int = Field(default=0, alias=VERSION_KEY)

    with pytest.raises(ConversationDefinitionError, match="reserved key"):

        class Flow(Conversation[Sneaky]):
            @state(initial=True, final=True)
            def start(self, turn: Turn[Sneaky]) -> Literal["start"]:
                return "start"


# -- eager migration of a whole store ------------------------------------------------------------
def test_migrate_counts_reports_failures_untouched_and_is_restartable(tmp_path: Path) -> None:
    manager = sqlite(tmp_path)
    for n in range(3):
        v1_record(manager, f"old-{n}", visit_count=n)
    ShopV3(manager, RecordingSender()).handle_message("new", "Cy")  # already current
    bad = v1_record(manager, "bad", visit_count="many")

    report = migrate_chats(manager, ShopV3)
    assert (report.migrated, report.current) == (3, 1)
    assert [chat_id for chat_id, _ in report.failed] == ["bad"]
    assert "migration 2->3 raised ValueError" in report.failed[0][1]
    assert manager.load("bad") == bad
    for n in range(3):
        record = manager.load(f"old-{n}")
        assert record is not None
        assert (record.state_id, record.context) == (
            "menu",
            {VERSION_KEY: 3, "first_name": "Ada", "visits": n},
        )

    again = migrate_chats(manager, ShopV3)
    assert (again.migrated, again.current, len(again.failed)) == (0, 4, 1)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_a_turn_committed_during_migrate_is_never_lost(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    manager: StateManager
    if kind == "postgres":
        from chat_orchestrator.state_managers.postgres import PostgresStateManager

        url = request.getfixturevalue("postgres_server").url
        manager = PostgresStateManager(url, schema=request.getfixturevalue("postgres_schema"))
    else:
        manager = InMemoryStateManager() if kind == "memory" else sqlite(tmp_path)
    v1_record(manager, "c1", visit_count=10)
    shop = ShopV3(manager, RecordingSender())
    # The migrator has read c1 (v1) and is migrating it when a turn on c1 commits.
    DURING_MIGRATION.append(lambda: shop.handle_message("c1", "hi"))

    report = migrate_chats(manager, ShopV3, ["c1"])
    assert not DURING_MIGRATION
    assert (report.migrated, report.current, report.retried, report.failed) == (0, 1, 1, [])
    record = manager.load("c1")
    assert record is not None
    assert record.context == {VERSION_KEY: 3, "first_name": "Ada", "visits": 11}  # the turn's


def test_migrate_racing_real_turns_on_threads_loses_none(tmp_path: Path) -> None:
    manager = sqlite(tmp_path)
    chats = [f"c{n}" for n in range(40)]
    for chat_id in chats:
        v1_record(manager, chat_id)
    turns_each = 5

    def talk(chat_ids: list[str]) -> None:
        shop = ShopV3(sqlite(tmp_path), RecordingSender())
        for _ in range(turns_each):
            for chat_id in chat_ids:
                shop.handle_message(chat_id, "hi")

    workers = [threading.Thread(target=talk, args=(chats[n::2],)) for n in range(2)]
    for worker in workers:
        worker.start()
    report = migrate_chats(sqlite(tmp_path), ShopV3)
    for worker in workers:
        worker.join()
    assert report.failed == []
    assert report.migrated + report.current == len(chats)
    for chat_id in chats:
        record = manager.load(chat_id)
        assert record is not None
        assert record.context == {VERSION_KEY: 3, "first_name": "Ada", "visits": turns_each}


def test_the_migrate_command_on_a_sqlite_store(tmp_path: Path) -> None:
    manager = sqlite(tmp_path)
    v1_record(manager, "old")
    bad = v1_record(manager, "bad", visit_count="many")
    manager.close()

    def migrate() -> subprocess.CompletedProcess[str]:
        url = f"sqlite:///{tmp_path / 'chats.db'}"
        return subprocess.run(
            [exe(), "chats", "migrate", "--store", url, "tests.test_migrations:ShopV3"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    first = migrate()
    assert first.returncode == 1, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("failed: chat 'bad': migration 2->3 raised ValueError")
    assert lines[-1] == "migrated 1, already current 0, failed 1"
    second = migrate()
    assert second.stdout.splitlines()[-1] == "migrated 0, already current 1, failed 1"
    manager = sqlite(tmp_path)
    assert manager.load("bad") == bad
    record = manager.load("old")
    assert record is not None
    assert record.context[VERSION_KEY] == 3

    wrong = subprocess.run(
        [exe(), "chats", "migrate", "--store", "memory:", "tests.test_migrations:V3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 2
    assert "not a Conversation" in wrong.stderr
