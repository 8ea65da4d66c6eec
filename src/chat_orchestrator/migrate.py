"""Eager migration of a whole store to a class-API flow's current schema and states.

``chat-orchestrator chats migrate --store URL module:Flow`` runs :func:`migrate_chats`: for
every stored chat it loads the record, asks :meth:`Conversation.upgrade_record` what it
becomes, and stores that *conditionally on the version it read*. A turn that commits in
between wins: the write fails with VersionConflictError, the record is read again (the turn
has already stored it migrated, so it is usually current by then) and retried. Records that
cannot be migrated are reported with their chat id and left exactly as they were. Running
the command again migrates nothing: every record it wrote is current.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chat_orchestrator.errors import (
    CorruptStateError,
    LockTimeoutError,
    StateManagerError,
    TurnError,
    VersionConflictError,
    describe_chat_id,
)
from chat_orchestrator.state_managers.base import StateManager

if TYPE_CHECKING:
    from chat_orchestrator.conversation import Conversation

__all__ = ["MigrationReport", "add_migrate_command", "migrate_chats"]

logger = logging.getLogger(__name__)

#: Writes tried per chat before a chat that keeps changing under us is reported as failed.
ATTEMPTS = 5


@dataclass(slots=True)
class MigrationReport:
    """What one pass over a store did. ``failed`` holds ``(chat_id, reason)`` pairs."""

    migrated: int = 0
    current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Conditional writes that lost against a concurrent writer and were retried.
    retried: int = 0

    def summary(self) -> str:
        return (
            f"migrated {self.migrated}, already current {self.current}, failed {len(self.failed)}"
        )


def migrate_chats(
    manager: StateManager,
    flow: type[Conversation[Any]],
    chat_ids: Iterable[str] | None = None,
    *,
    attempts: int = ATTEMPTS,
) -> MigrationReport:
    """Bring every record of ``manager`` (or of ``chat_ids``) up to ``flow``; never lose a turn.

    A chat that vanishes meanwhile (reset) counts as current. Errors reaching the store
    itself (other than a conflict, a lock timeout or a corrupt record) stop the pass.
    """
    report = MigrationReport()
    for chat_id in _stored_chat_ids(manager) if chat_ids is None else chat_ids:
        _migrate_one(manager, flow, chat_id, report, attempts)
    return report


def _migrate_one(
    manager: StateManager,
    flow: type[Conversation[Any]],
    chat_id: str,
    report: MigrationReport,
    attempts: int,
) -> None:
    reason = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            record = manager.load(chat_id)
            if record is None:
                report.current += 1
                return
            update = flow.upgrade_record(record, chat_id=chat_id)
            if update is None:
                report.current += 1
                return
            manager.save(
                chat_id,
                update.state_id,
                update.context,
                expected_version=record.version,
                encoded=update.context_json,
            )
        except (VersionConflictError, LockTimeoutError) as exc:
            # A turn got there first (or holds the chat): read what it stored and try again.
            report.retried += 1
            reason = f"still changing after {attempt} attempts: {exc}"
            logger.info("chat %s changed during migration; retrying", describe_chat_id(chat_id))
            continue
        except (TurnError, CorruptStateError) as exc:
            report.failed.append((chat_id, str(exc)))
            # The reason may quote the stored context (user data): only its kind above DEBUG.
            logger.warning(
                "chat %s cannot be migrated: %s", describe_chat_id(chat_id), type(exc).__name__
            )
            logger.debug("chat %s: %s", describe_chat_id(chat_id), exc)
            return
        report.migrated += 1
        return
    report.failed.append((chat_id, reason))
    logger.warning("chat %s kept changing; not migrated", describe_chat_id(chat_id))


def _stored_chat_ids(manager: StateManager) -> Iterator[str]:
    """Every stored chat id.

    TODO(lead): once ``iter_chats()`` is merged on every store, keep only the first branch.
    The fallbacks read the memory and SQLite stores' records directly, for now.
    """
    iter_chats = getattr(manager, "iter_chats", None)
    if iter_chats is not None:
        for info in iter_chats():
            yield info.chat_id
        return
    from chat_orchestrator.state_managers.inmemory import InMemoryStateManager
    from chat_orchestrator.state_managers.sqlite import SQLiteStateManager

    if isinstance(manager, InMemoryStateManager):
        yield from list(manager._records)  # a snapshot: turns may add chats meanwhile
        return
    if isinstance(manager, SQLiteStateManager):
        with contextlib.closing(sqlite3.connect(manager.path)) as db:
            # version 0 is a lease row without a record
            rows = db.execute("SELECT id FROM chats WHERE version > 0 ORDER BY id").fetchall()
        yield from (row[0] for row in rows)
        return
    raise StateManagerError(
        f"{type(manager).__name__} cannot list its chats yet (migrate supports memory and "
        "SQLite stores until iter_chats() lands)"
    )


# -- the command ---------------------------------------------------------------------------
def add_migrate_command(chat_commands: Any) -> None:
    """Register ``migrate`` on the ``chats`` sub-parsers of the ``chat-orchestrator`` command."""
    migrate = chat_commands.add_parser(
        "migrate", help="migrate every stored chat to the flow's current schema and states"
    )
    migrate.add_argument(
        "--store", required=True, metavar="URL", help="for example sqlite:///chats.db"
    )
    migrate.add_argument("target", help="file.py:Flow or module:Flow (a Conversation subclass)")
    migrate.set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    """``chats migrate``: exit 0 when every chat is current afterwards, 1 when some failed."""
    from chat_orchestrator.cli import TargetError, load_target
    from chat_orchestrator.conversation import Conversation
    from chat_orchestrator.stores import open_store

    target = load_target(args.target)
    flow = type(target) if isinstance(target, Conversation) else target
    if not (isinstance(flow, type) and issubclass(flow, Conversation) and hasattr(flow, "flow")):
        raise TargetError(
            f"{args.target} is a {type(target).__name__}, not a Conversation: only the class "
            "API declares a schema to migrate to"
        )
    manager = open_store(args.store)
    try:
        report = migrate_chats(manager, flow)
    finally:
        manager.close()
    for chat_id, reason in report.failed:
        print(f"failed: chat {describe_chat_id(chat_id)}: {reason}")
    print(report.summary())
    return 1 if report.failed else 0
