"""What the sync and async WhatsApp senders share besides the core: one constructor, one repr."""

from __future__ import annotations

from typing import TypeVar

from chat_orchestrator.senders.base import Pacing
from chat_orchestrator.senders.http_drivers import HttpSenderBase
from chat_orchestrator.senders.whatsapp_core import GraphAPI, RetryPolicy, Timeout

__all__ = ["WHATSAPP_PACING", "GraphSender"]

ClientT = TypeVar("ClientT")
SleepT = TypeVar("SleepT")

#: Cloud API throughput: 80 messages a second per number by default; no per-chat interval
#: beyond the pair rate limit (131056), which the delivery loop learns from the error.
WHATSAPP_PACING = Pacing(per_chat_interval=0.0, per_second=80.0)


class GraphSender(HttpSenderBase[ClientT, SleepT]):
    """The constructor both drivers take; only the client and sleep types differ.

    ``client`` is an ``httpx.Client`` (sync) or ``httpx.AsyncClient`` (async) to share a
    connection pool or add transport settings; the sender closes only a client it created.
    ``timeout`` applies to every request (it overrides the client's own). ``sleep`` waits
    between retries (tests pass a recorder). ``pacing`` defaults to ``WHATSAPP_PACING``.
    """

    _api: GraphAPI

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        api_version: str = "v25.0",
        base_url: str = "https://graph.facebook.com",
        client: ClientT | None = None,
        timeout: Timeout = (5.0, 20.0),
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        sleep: SleepT | None = None,
        pacing: Pacing = WHATSAPP_PACING,
    ) -> None:
        self._api = GraphAPI(
            access_token,
            phone_number_id,
            api_version=api_version,
            base_url=base_url,
            timeout=timeout,
            retry_policy=RetryPolicy(max_retries, backoff, max_backoff),
        )
        self._init_io(client, sleep, pacing)

    @property
    def phone_number_id(self) -> str:
        return self._api.phone_number_id

    @property
    def url(self) -> str:
        return self._api.url

    def __repr__(self) -> str:  # the token never appears
        return f"{type(self).__name__}(phone_number_id={self.phone_number_id!r}, url={self.url!r})"
