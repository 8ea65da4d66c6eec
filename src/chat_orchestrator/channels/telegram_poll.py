"""Long polling (``getUpdates``) for a TelegramBot: development without a public URL.

Each update runs through the bot's own operation (claims, turns, recording: the webhook's
code). Its offset is confirmed (the next ``getUpdates`` asks from ``update_id + 1``) only after
that operation answered 200: the update's turn committed, or it was recorded or skipped. An
update that must be retried (the store was unreachable, the chat stayed locked) is fetched
again, and the claim keeps an update whose turn already committed from running twice after a
restart. So a restart neither loses an update nor repeats one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from chat_orchestrator.channels.telegram_app import TelegramBot
from chat_orchestrator.errors import SenderError

__all__ = ["DEFAULT_ALLOWED_UPDATES", "TelegramPoller"]

log = logging.getLogger(__name__)

#: The update types the bot handles (the rest is never fetched).
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")


class TelegramPoller:
    """``TelegramPoller(bot, sender).run()`` polls until ``stop()``; ``poll_once()`` is one round.

    ``sender`` is a sync ``TelegramSender`` (it calls ``getUpdates``). ``timeout`` is the long
    poll's seconds; ``retry_delay`` the pause after a failed round.
    """

    def __init__(
        self,
        bot: TelegramBot,
        sender: Any,
        *,
        timeout: int = 30,
        allowed_updates: Sequence[str] | None = DEFAULT_ALLOWED_UPDATES,
        limit: int = 100,
        retry_delay: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 <= timeout <= 3600 or not 1 <= limit <= 100:
            raise ValueError("timeout must be 0-3600 seconds and limit 1-100")
        self.bot, self.sender = bot, sender
        self.timeout, self.limit, self.retry_delay = timeout, limit, retry_delay
        self.allowed_updates = list(allowed_updates) if allowed_updates is not None else None
        self.offset: int | None = None
        self._sleep = sleep
        self._stopped = False

    def poll_once(self) -> int:
        """Fetch once and handle what came; returns how many updates were confirmed."""
        updates = self.sender.get_updates(
            self.offset,
            timeout=self.timeout,
            allowed_updates=self.allowed_updates,
            limit=self.limit,
        )
        done = 0
        for update in updates:
            update_id = update.get("update_id") if isinstance(update, dict) else None
            status, text = self.bot.handle_update(update)
            if status >= 500:
                log.warning("update %s deferred (%s); fetched again next round", update_id, text)
                break  # later updates wait too: a chat's messages keep their order
            if status != 200:
                log.warning("update %s refused (%d): %s", update_id, status, text)
            if isinstance(update_id, int) and not isinstance(update_id, bool):
                self.offset = update_id + 1
            done += 1
        return done

    def run(self, rounds: int | None = None) -> None:
        """Poll until ``stop()`` (or ``rounds`` rounds); a failed round waits ``retry_delay``."""
        count = 0
        while not self._stopped and (rounds is None or count < rounds):
            count += 1
            try:
                self.poll_once()
            except SenderError as exc:
                log.warning("getUpdates failed (%s); retrying in %.1f s", exc, self.retry_delay)
                self._sleep(exc.retry_after or self.retry_delay)
        # Confirm what was handled: Telegram forgets updates below the offset we last asked.
        if self.offset is not None:
            try:
                self.sender.get_updates(self.offset, timeout=0, limit=1)
            except SenderError as exc:
                log.warning("could not confirm the last offset (%s); claims cover it", exc)

    def stop(self) -> None:
        self._stopped = True
