"""What the sync and async Telegram senders share besides the core: one constructor, one repr."""

from __future__ import annotations

from typing import TypeVar

from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.senders.http_drivers import HttpSenderBase
from chat_orchestrator.senders.telegram_core import BotAPI
from chat_orchestrator.senders.telegram_payloads import CallbackIds
from chat_orchestrator.senders.whatsapp_core import RetryPolicy, Timeout

__all__ = ["TELEGRAM_PACING", "BotSender"]

ClientT = TypeVar("ClientT")
SleepT = TypeVar("SleepT")

#: The Bot API FAQ: about one message a second in a chat, about 30 a second per bot overall.
TELEGRAM_PACING = Pacing(per_chat_interval=1.0, per_second=30.0)


class BotSender(HttpSenderBase[ClientT, SleepT]):
    """``TelegramSender(token=...)``: the constructor both drivers take.

    ``token`` is the bot's token from @BotFather; it appears in no repr, message or log line.
    ``base_url`` is the Bot API server (a local stand-in or a self-hosted ``telegram-bot-api``).
    ``callback_ids`` keeps option ids longer than 64 bytes (``StoredCallbackIds(store)``);
    without it such an id is refused. ``pacing`` defaults to ``TELEGRAM_PACING``.
    """

    _api: BotAPI

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.telegram.org",
        client: ClientT | None = None,
        timeout: Timeout = (5.0, 20.0),
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        sleep: SleepT | None = None,
        pacing: Pacing = TELEGRAM_PACING,
        callback_ids: CallbackIds | None = None,
    ) -> None:
        self._api = BotAPI(
            token,
            base_url=base_url,
            timeout=timeout,
            retry_policy=RetryPolicy(max_retries, backoff, max_backoff),
            callback_ids=callback_ids,
        )
        self._init_io(client, sleep, pacing)

    @property
    def bot_id(self) -> str:
        """The numeric id before the token's colon (public: it is the bot's user id)."""
        return self._api.bot_id

    @property
    def callback_ids(self) -> CallbackIds | None:
        return self._api.callback_ids

    def __repr__(self) -> str:  # the token never appears
        return f"{type(self).__name__}(bot_id={self.bot_id!r}, url={self._api.shown_base!r})"
