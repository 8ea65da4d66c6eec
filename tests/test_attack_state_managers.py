"""Attacks on the public methods of the memory and SQLite managers that once got through."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from chat_orchestrator import InMemoryStateManager, InvalidClaimTTLError
from chat_orchestrator.errors import StoreURLError
from chat_orchestrator.state_managers.base import StateManager
from chat_orchestrator.state_managers.sqlite import SQLiteStateManager
from chat_orchestrator.stores import open_store

BAD_TTLS: list[Any] = [float("nan"), float("inf"), -1, 0, 1e300, "5", None, True]


def _managers(tmp_path: Path) -> list[StateManager]:
    return [InMemoryStateManager(), SQLiteStateManager(tmp_path / "chats.db")]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_a_bad_claim_ttl_is_refused_and_claims_nothing(tmp_path: Path, ttl: Any) -> None:
    # Before: NaN let every claim win on memory (a redelivered message ran twice), "5" and
    # None escaped as TypeError, 1e300/inf as OverflowError from sqlite3.
    for manager in _managers(tmp_path):
        with pytest.raises(InvalidClaimTTLError) as caught:
            manager.claim("wa:k", ttl)
        assert isinstance(caught.value, ValueError)
        assert manager.claim("wa:k", 60) is True  # the bad call claimed nothing
        assert manager.claim("wa:k", 60) is False


def test_the_memory_claim_table_forgets_expired_claims_behind_a_long_one() -> None:
    # Before: the table was swept from its oldest end only, so one claim with a long ttl
    # kept every later short-lived claim alive forever.
    manager = InMemoryStateManager()
    manager.claim("long", 3600)
    for index in range(2_000):
        manager.claim(f"short-{index}", 0.01)
    time.sleep(0.05)
    manager.claim("next", 0.01)
    assert len(manager._claim_table()) == 2  # "long" and "next"
    assert manager.claim("long", 60) is False  # the long claim itself is kept


def test_a_released_and_reclaimed_key_keeps_its_new_deadline() -> None:
    manager = InMemoryStateManager()
    manager.claim("k", 0.01)
    manager.release_claim("k")
    manager.claim("k", 3600)
    time.sleep(0.05)
    manager.claim("other", 1)  # sweeps the stale heap entry of the first claim
    assert manager.claim("k", 60) is False


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-5, ValueError), (float("nan"), ValueError), ("3", TypeError)],
    ids=repr,
)
def test_memory_refuses_a_bad_lock_timeout_when_built(timeout: Any, error: type) -> None:
    # Before: accepted, then every set_state/turn raised threading's raw ValueError/TypeError.
    with pytest.raises(error):
        InMemoryStateManager(lock_timeout=timeout)


def test_memory_takes_an_infinite_lock_timeout_as_no_limit() -> None:
    manager = InMemoryStateManager(lock_timeout=float("inf"))  # was OverflowError per turn
    manager.set_state("a", "s", {"n": 1})
    assert manager.get_state("a") == ("s", {"n": 1})


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("x", TypeError)],
    ids=repr,
)
def test_sqlite_refuses_a_bad_busy_timeout(tmp_path: Path, value: Any, error: type) -> None:
    with pytest.raises(error):
        SQLiteStateManager(tmp_path / "x.db", busy_timeout=value)
    with pytest.raises(StoreURLError):
        open_store(f"sqlite:///{tmp_path}/y.db?busy_timeout={value}")


def test_sqlite_refuses_a_lease_its_clock_cannot_hold(tmp_path: Path) -> None:
    # Before: accepted, then every turn raised a raw OverflowError from sqlite3's binding.
    with pytest.raises(ValueError, match="lock_lease"):
        SQLiteStateManager(tmp_path / "x.db", lock_lease=1e300, lock_timeout=None)


def test_a_sqlite_claim_error_names_a_long_key_briefly(tmp_path: Path) -> None:
    # Before: the whole key (up to 16,384 characters) went into the error and the log line.
    import sqlite3

    from chat_orchestrator.errors import StateManagerError

    manager = SQLiteStateManager(tmp_path / "x.db", busy_timeout=0.01)
    blocker = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateManagerError) as caught:
            manager.claim("k" * 16_000, 60)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert len(str(caught.value)) < 500
    assert manager.claim("k" * 16_000, 60) is True  # nothing was claimed by the failed call


def test_a_foreign_sqlite_row_is_named_briefly_in_its_error(tmp_path: Path) -> None:
    # Before: a 100 KB blob in the state column went whole into the error and the log.
    import sqlite3

    from chat_orchestrator.errors import CorruptStateError

    manager = SQLiteStateManager(tmp_path / "x.db")
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    db.execute("INSERT INTO chats VALUES ('c', ?, '{}', 1, 0, NULL, 0)", (b"x" * 100_000,))
    db.close()
    with pytest.raises(CorruptStateError) as caught:
        manager.get_state("c")
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize("bad", [5, "", "x\ud800", None, {"$ne": None}, "x" * 20_000], ids=repr)
def test_memory_delete_state_async_refuses_a_bad_chat_id(bad: Any) -> None:
    # Before: 5, "", None and lone surrogates were accepted, a dict raised a raw TypeError.
    import asyncio

    from chat_orchestrator.errors import InvalidChatIdError

    manager = InMemoryStateManager()
    manager.set_state("c", "s", {"n": 1})
    with pytest.raises(InvalidChatIdError):
        asyncio.run(manager.delete_state_async(bad))
    assert manager.get_state("c") == ("s", {"n": 1})
    asyncio.run(manager.delete_state_async("c"))
    assert manager.get_state("c") is None


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_an_async_custom_manager_refuses_a_bad_claim_ttl(ttl: Any) -> None:
    import asyncio

    from chat_orchestrator.state_managers.async_base import AsyncStateManager

    class Mine(AsyncStateManager):
        async def get_state(self, chat_id: str) -> tuple[str, dict[str, Any]] | None:
            return None

        async def set_state(self, chat_id: str, state_id: str, context: dict[str, Any]) -> None:
            pass

        async def delete_state(self, chat_id: str) -> None:
            pass

    async def run() -> tuple[bool, bool]:
        manager = Mine()
        with pytest.raises(InvalidClaimTTLError):
            await manager.claim_async("k", ttl)
        return await manager.claim_async("k", 60), await manager.claim_async("k", 60)

    assert asyncio.run(run()) == (True, False)
