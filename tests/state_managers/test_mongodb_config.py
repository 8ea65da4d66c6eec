"""MongoDB configuration: bad URIs, TTL and claim retention changed between restarts, and
forgetting a claim. Against nx-27017, and a real MongoDB too when ``MONGODB_URI`` is set.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from chat_orchestrator.errors import StateManagerError
from chat_orchestrator.state_managers.mongodb import MongoDBStateManager
from tests.conftest import mongo_uri

SECRET = "Pw0rd-s3cret"
KINDS = ["mongo"] + (["mongo-real"] if os.environ.get("MONGODB_URI") else [])

Client = pymongo.MongoClient[dict[str, Any]]


class Commands(monitoring.CommandListener):
    """Every command a client sent, in order: what the manager asked the server to do."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append({event.command_name: dict(event.command)})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict[str, Any]]:
        return [command[name] for command in self.sent if name in command]


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(uri, database name), the database dropped afterwards."""
    uri = mongo_uri(request, real=request.param == "mongo-real")
    database = f"config_{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    yield uri, database
    client: Client
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


def watched(uri: str) -> tuple[Client, Commands]:
    commands = Commands()
    return pymongo.MongoClient(uri, event_listeners=[commands]), commands


def ttl_of(collection: Any, field: str) -> object:
    found = [i for i in collection.list_indexes() if dict(i["key"]) == {field: 1}]
    assert len(found) == 1, found
    return found[0].get("expireAfterSeconds")


BAD_URIS: list[object] = [
    "garbage",
    f"http://user:{SECRET}@db.example",
    f"mongodb://user:{SECRET}@db.example:99999",
    f"mongodb://user:{SECRET}@db.example:abc/db",
    f"mongodb://us@er:{SECRET}@db.example",
    f"mongodb://user:{SECRET}%ZZ@db.example",
    f"mongodb+srv://user:{SECRET}@nonexistent.invalid/db",
    f"mongodb+srv://user:{SECRET}@a.invalid,b.invalid/db",
    "",
    None,
    b"mongodb://db.example",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_uri_is_a_tree_error_without_the_password(
    uri: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StateManagerError) as caught:
        MongoDBStateManager(uri, timeout=0.5)
    error = caught.value
    shown = "".join(traceback.format_exception(error)) + repr(error) + caplog.text
    chained: list[BaseException | None] = [error.__cause__, error.__context__]
    while chained:  # every exception reachable from the error, hidden context included
        link = chained.pop()
        if link is not None:
            shown += repr(link) + str(link)
            chained += [link.__cause__, link.__context__]
    assert SECRET not in shown
    assert "MongoDB URI" in str(error)


def test_percent_encoded_password_never_shown() -> None:
    encoded = "p%40ss%3Aw0rd"  # p@ss:w0rd
    with pytest.raises(StateManagerError) as caught:
        MongoDBStateManager(f"mongodb://user:{encoded}@db.example:abc", timeout=0.5)
    shown = "".join(traceback.format_exception(caught.value))
    assert encoded not in shown
    assert "p@ss:w0rd" not in shown
    assert "w0rd" not in shown


def test_good_uri_repr_shows_hosts_only(server: tuple[str, str]) -> None:
    manager = MongoDBStateManager(f"mongodb://user:{SECRET}@db.example:27018", timeout=0.5)
    assert SECRET not in repr(manager)
    assert "db.example:27018" in repr(manager)
    manager.close()


def test_changed_ttl_changes_the_index_in_place(server: tuple[str, str]) -> None:
    uri, database = server
    first = MongoDBStateManager(uri, database=database, ttl=3600)
    first.set_state("c", "s", {})
    first.close()
    client, commands = watched(uri)
    MongoDBStateManager(client=client, database=database, ttl=3600)  # same ttl: nothing to do
    assert commands.named("createIndexes") == commands.named("collMod") == []
    MongoDBStateManager(client=client, database=database, ttl=7200)  # a restart, new ttl
    # MongoDB refuses createIndex on a key that has an index with other options
    # (IndexOptionsConflict); a changed TTL must go through collMod instead.
    assert commands.named("createIndexes") == []
    [collmod] = commands.named("collMod")
    assert collmod["collMod"] == "chat_states"
    assert collmod["index"] == {"keyPattern": {"at": 1}, "expireAfterSeconds": 7200}
    if uri == os.environ.get("MONGODB_URI"):  # nx-27017 accepts collMod but changes nothing
        assert ttl_of(client[database]["chat_states"], "at") == 7200
    assert client[database]["chat_states"].find_one({"_id": "c"}) is not None
    client.close()


def test_non_ttl_index_on_the_field_is_a_clear_error(server: tuple[str, str]) -> None:
    uri, database = server
    client: Client = pymongo.MongoClient(uri)
    client[database]["chat_states"].create_index("at")
    with pytest.raises(StateManagerError, match="not a TTL index"):
        MongoDBStateManager(client=client, database=database, ttl=60)
    client.close()


def test_changed_claim_retention_needs_no_other_index(server: tuple[str, str]) -> None:
    uri, database = server
    first = MongoDBStateManager(uri, database=database)
    assert first.claim("wa:1:A", 60) is True
    first.close()
    client, commands = watched(uri)
    manager = MongoDBStateManager(client=client, database=database)  # a restart, new retention
    assert manager.claim("wa:1:B", 7 * 24 * 3600) is True
    assert manager.claim("wa:1:A", 7 * 24 * 3600) is False
    assert commands.named("createIndexes") == commands.named("collMod") == []
    claims = client[database]["chat_states_claims"]
    assert ttl_of(claims, "exp") == 0  # each marker expires at its own ``exp``
    marker = claims.find_one({"_id": "wa:1:B"})
    assert marker is not None
    assert abs(marker["exp"].timestamp() * 1000 - marker["until"]) < 2
    client.close()


def test_old_claims_ttl_index_is_replaced(server: tuple[str, str]) -> None:
    uri, database = server
    client: Client = pymongo.MongoClient(uri)
    claims = client[database]["chat_states_claims"]
    claims.create_index("at", expireAfterSeconds=60)  # what earlier versions created
    old_until = int(time.time() * 1000) + 3_600_000
    claims.insert_one({"_id": "old", "until": old_until, "at": dt.datetime.now(dt.UTC)})
    manager = MongoDBStateManager(client=client, database=database)
    assert manager.claim("k", 3600) is True
    keys = [dict(info["key"]) for info in claims.list_indexes()]
    assert {"at": 1} not in keys
    assert {"exp": 1} in keys
    old = claims.find_one({"_id": "old"})
    assert old is not None  # an earlier marker keeps counting, and now expires by its ``exp``
    exp = old["exp"]
    if isinstance(exp, str):  # nx-27017 stores a datetime given to $set as its text
        exp = dt.datetime.fromisoformat(exp)
    assert abs(exp.replace(tzinfo=dt.UTC).timestamp() * 1000 - old_until) < 2
    assert manager.claim("old", 3600) is False
    client.close()


def test_release_claim_forgets_only_that_key(server: tuple[str, str]) -> None:
    uri, database = server
    manager = MongoDBStateManager(uri, database=database)
    assert manager.claim("wa:1:A", 3600) is True
    assert manager.claim("wa:1:B", 3600) is True
    manager.release_claim("wa:1:A")
    assert manager.claim("wa:1:A", 3600) is True  # runs again
    assert manager.claim("wa:1:A", 3600) is False
    assert manager.claim("wa:1:B", 3600) is False  # untouched
    manager.release_claim("never-claimed")  # nothing to forget: no error
    other = MongoDBStateManager(uri, database=database)  # another worker sees it too
    other.release_claim("wa:1:B")
    assert manager.claim("wa:1:B", 3600) is True
    manager.close()
    other.close()
