"""``chat-orchestrator chats list|show|set|reset|export|import --store URL``.

The store comes from ``--store URL`` or the ``CHAT_STORE`` environment variable (see
:mod:`chat_orchestrator.stores`). Every change is conditional on the version read, so it
never overwrites a live worker's turn (see :mod:`chat_orchestrator.operators`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from chat_orchestrator import operators as ops
from chat_orchestrator.errors import StoreURLError
from chat_orchestrator.migrate import add_migrate_command
from chat_orchestrator.state_managers.base import ChatInfo, StateManager
from chat_orchestrator.stores import STORE_VARIABLE, open_store

__all__ = [
    "UsageError",
    "add_chats_command",
    "duration",
    "open_cli_store",
    "run_chats_command",
    "store_argument",
]

# One encoder for every line: json.dumps with options builds a new one per call.
_quote = json.JSONEncoder(ensure_ascii=False).encode
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A command-line mistake: one line on stderr and exit code 2."""


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` as seconds."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 15m, 2h, 7d)")
    return float(found[1]) * _UNITS[found[2]]


def store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"the store's URL (memory:, file:///dir, sqlite:///chats.db, redis://, "
        f"mongodb://, postgresql://...); default: ${STORE_VARIABLE}",
    )


def open_cli_store(url: str | None, *, required: bool = True) -> StateManager | None:
    """The store named by ``--store`` or ``$CHAT_STORE``; UsageError for a bad or missing URL."""
    url = url or os.environ.get(STORE_VARIABLE) or None
    if url is None:
        if required:
            raise UsageError(f"no store: pass --store URL or set {STORE_VARIABLE}")
        return None
    try:
        return open_store(url)
    except StoreURLError as exc:
        raise UsageError(str(exc)) from None  # already redacted


def add_chats_command(commands: Any) -> None:
    chats = commands.add_parser("chats", help="list, inspect, change, export or import chats")
    actions = chats.add_subparsers(dest="action", required=True)
    add_migrate_command(actions)  # its own module: it needs the class API's migrations

    listing = actions.add_parser("list", help="one line per chat: id, state, version, update")
    store_argument(listing)
    _filters(listing)
    listing.add_argument("--json", action="store_true", help="JSON Lines instead of columns")

    show = actions.add_parser("show", help="one chat's record as JSON")
    store_argument(show)
    show.add_argument("chat_id")

    change = actions.add_parser("set", help="move a chat to a state (its context is kept)")
    store_argument(change)
    change.add_argument("chat_id")
    change.add_argument("state_id")
    change.add_argument("--flow", metavar="TARGET", help="file.py:name or module:name to check")
    change.add_argument("--expected-version", type=int, metavar="N")

    reset = actions.add_parser("reset", help="forget a chat: it starts the flow again")
    store_argument(reset)
    reset.add_argument("chat_id")
    reset.add_argument("--expected-version", type=int, metavar="N")

    export = actions.add_parser("export", help="write chats as JSON Lines")
    store_argument(export)
    _filters(export)
    export.add_argument("-o", "--output", metavar="FILE", help="default: standard output")

    load = actions.add_parser("import", help="read chats from JSON Lines (a file or -)")
    store_argument(load)
    load.add_argument("input", metavar="FILE")
    load.add_argument("--force", action="store_true", help="overwrite newer records too")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", metavar="STATE", help="only chats in this state")
    parser.add_argument(
        "--idle-for", type=duration, metavar="DURATION", help="only chats idle this long (2h, 7d)"
    )


def run_chats_command(args: argparse.Namespace) -> int:
    store = open_cli_store(args.store)
    assert store is not None
    with contextlib.closing(store):
        return _ACTIONS[args.action](store, args)


def _list(store: StateManager, args: argparse.Namespace) -> int:
    chats = ops.list_chats(store, state=args.state, idle_for=args.idle_for)
    out = sys.stdout
    if args.json:
        for info in chats:
            out.write(_quote(_info_json(info)) + "\n")
        return 0
    out.write("chat_id\tstate\tversion\tupdated\n")
    for info in chats:
        # The id as a JSON string: ids may hold tabs, newlines or NUL.
        chat_id = _quote(info.chat_id)
        out.write(f"{chat_id}\t{info.state_id}\t{info.version}\t{_when(info.updated_at)}\n")
    return 0


def _info_json(info: ChatInfo) -> dict[str, Any]:
    return {
        "chat_id": info.chat_id,
        "state_id": info.state_id,
        "version": info.version,
        "updated_at": info.updated_at,
    }


def _when(stamp: float | None) -> str:
    # time.strftime: a third of datetime's cost, which shows at a million lines.
    return "-" if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _show(store: StateManager, args: argparse.Namespace) -> int:
    snapshot = ops.show_chat(store, args.chat_id)
    if snapshot is None:
        print(f"chat-orchestrator: no record for chat {args.chat_id!r}", file=sys.stderr)
        return 1
    sys.stdout.write(snapshot.to_line())
    return 0


def _set(store: StateManager, args: argparse.Namespace) -> int:
    flow = None
    if args.flow:
        from chat_orchestrator.cli import load_flow

        with contextlib.redirect_stdout(sys.stderr):  # what the module prints on import
            flow = load_flow(args.flow)
    version = ops.set_chat_state(
        store, args.chat_id, args.state_id, flow=flow, expected_version=args.expected_version
    )
    print(f"chat {args.chat_id!r} is now in state {args.state_id!r} (version {version})")
    return 0


def _reset(store: StateManager, args: argparse.Namespace) -> int:
    if ops.reset_chat(store, args.chat_id, expected_version=args.expected_version):
        print(f"chat {args.chat_id!r} was reset")
    else:
        print(f"chat {args.chat_id!r} had no record")
    return 0


def _export(store: StateManager, args: argparse.Namespace) -> int:
    with _output(args.output) as out:
        count = ops.export_chats(store, out, state=args.state, idle_for=args.idle_for)
    print(f"exported {count} chats", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    try:
        out = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror}") from None
    with out:
        yield out


def _import(store: StateManager, args: argparse.Namespace) -> int:
    if args.input == "-":
        report = ops.import_chats(store, sys.stdin, force=args.force)
    else:
        try:
            source = open(args.input, encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot read {args.input!r}: {exc.strerror}") from None
        with source:
            report = ops.import_chats(store, source, force=args.force)
    print(report.summary())
    for chat_id in report.skipped_newer:
        print(f"  kept (newer in the store; --force overwrites): {chat_id!r}", file=sys.stderr)
    for chat_id in report.conflicts:
        print(f"  kept (changed by a live turn meanwhile): {chat_id!r}", file=sys.stderr)
    return 0


_ACTIONS = {
    "list": _list,
    "show": _show,
    "set": _set,
    "reset": _reset,
    "export": _export,
    "import": _import,
}
