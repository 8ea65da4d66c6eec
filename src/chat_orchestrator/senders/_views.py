"""One sender, two faces: sync steps get a blocking sender, async steps an awaitable one.

A flow may mix ``def`` and ``async def`` steps and be served by a sync or an async sender;
each step is handed the face it can call, so a step never has to know which sender runs it.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, TypeAlias

from chat_orchestrator.senders.base import AsyncMessageSender, MessageSender

__all__ = ["AnySender", "as_async", "as_sync", "is_async_sender"]

AnySender: TypeAlias = MessageSender | AsyncMessageSender


def is_async_sender(sender: object) -> bool:
    """True when ``sender.send_message`` is a coroutine function (duck-typed senders too)."""
    return inspect.iscoroutinefunction(getattr(sender, "send_message", None))


class _Awaitable(AsyncMessageSender):
    """A sync sender for async steps: each send runs in a worker thread."""

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: MessageSender) -> None:
        self.wrapped = wrapped

    async def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        return await asyncio.to_thread(self.wrapped.send_message, chat_id, text, options)


class _Blocking(MessageSender):
    """An async sender for sync steps.

    In a worker thread of a running loop (a sync step on the async path) each send is
    handed to that loop and waited for; with no loop (the sync path) it runs on its own.
    """

    __slots__ = ("loop", "wrapped")

    def __init__(self, wrapped: AsyncMessageSender, loop: asyncio.AbstractEventLoop | None) -> None:
        self.wrapped, self.loop = wrapped, loop

    def send_message(
        self, chat_id: str, text: str, options: dict[str, Any] | None = None
    ) -> str | None:
        coroutine = self.wrapped.send_message(chat_id, text, options)
        if self.loop is None:
            return asyncio.run(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


def as_async(sender: AnySender) -> AsyncMessageSender:
    if is_async_sender(sender):
        return sender  # type: ignore[return-value]
    return _Awaitable(sender)  # type: ignore[arg-type]


def as_sync(sender: AnySender, loop: asyncio.AbstractEventLoop | None = None) -> MessageSender:
    if not is_async_sender(sender):
        return sender  # type: ignore[return-value]
    return _Blocking(sender, loop)  # type: ignore[arg-type]
