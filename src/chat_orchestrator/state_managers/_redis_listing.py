"""Listing a Redis store's chats: ``SCAN`` over the record-key pattern, master by master.

Records are ``<prefix>{<digest>}:s:<chat id>`` hashes (see ``state_managers.redis``). The
server walks its keyspace in steps (``SCAN ... MATCH ... TYPE hash``); we hold one batch of
keys at a time and read ``v``, ``s`` and ``t`` of a batch in one pipelined round trip, so the
memory used is the same for a hundred chats or a million. A cluster is scanned on each master.
Imported by ``state_managers.redis`` only, after redis-py was imported there.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import redis
from redis.cluster import RedisCluster

from chat_orchestrator.errors import CorruptStateError, describe_chat_id
from chat_orchestrator.state_managers.base import ChatInfo, keep_chat

if TYPE_CHECKING:
    from chat_orchestrator.state_managers.redis import RedisStateManager

__all__ = ["record_info", "scan_chats"]

#: ``{`` + 16 hex digits + ``}`` + ``:s:`` between the prefix and the chat id.
_TAG_AND_KIND = 21


def scan_chats(
    manager: RedisStateManager, state: str | None, cutoff: float | None
) -> Iterator[ChatInfo]:
    pattern = f"{_glob_escape(manager._prefix)}{{{'?' * 16}}}:s:*"
    batch = manager.list_batch
    for client in _masters(manager):
        keys: list[bytes | str] = []
        cursor = 0
        while True:
            scan = partial(client.scan, cursor, match=pattern, count=batch, _type="hash")
            cursor, found = manager._call("list chats", "*", scan)
            keys.extend(found)
            if len(keys) >= batch or cursor == 0:
                yield from _infos(manager, client, keys, state, cutoff)
                keys = []
            if cursor == 0:
                break


def record_info(chat_id: str, v: Any, s: Any, t: Any) -> ChatInfo:
    """A ChatInfo from a record's ``v``, ``s`` and ``t`` (``t`` missing in older records)."""
    try:
        state_id = s if isinstance(s, str) else s.decode("utf-8")
        return ChatInfo(chat_id, state_id, int(v), None if t is None else int(t) / 1000)
    except (AttributeError, TypeError, ValueError) as exc:  # e.g. a hash without ``s``
        raise CorruptStateError(
            f"the Redis record of chat {describe_chat_id(chat_id)} cannot be read: {exc}"
        ) from exc


def _masters(manager: RedisStateManager) -> list[redis.Redis]:
    client = manager._client
    if isinstance(client, RedisCluster):
        primaries = manager._call("list the masters of", "*", client.get_primaries)
        return [client.get_redis_connection(node) for node in primaries]
    return [client]


def _infos(
    manager: RedisStateManager,
    client: redis.Redis,
    keys: list[bytes | str],
    state: str | None,
    cutoff: float | None,
) -> Iterator[ChatInfo]:
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, ["v", "s", "t"])
    replies = manager._call("list chats", "*", pipe.execute)
    start = len(manager._prefix) + _TAG_AND_KIND
    for key, (v, s, t) in zip(keys, replies, strict=True):
        try:
            name = key if isinstance(key, str) else key.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not a key of ours: every chat id is valid UTF-8
        chat_id = name[start:]
        if v is None or not chat_id or manager.keys_for(chat_id)[0] != name:
            continue  # deleted since the SCAN, or a foreign key that fits the pattern
        info = record_info(chat_id, v, s, t)
        if keep_chat(info, state, cutoff):
            yield info


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
