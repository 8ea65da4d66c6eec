"""Owning and closing the HTTP client, injected clients, the async sender contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from chat_orchestrator.senders import AsyncMessageSender
from chat_orchestrator.senders.whatsapp import WhatsAppSender
from chat_orchestrator.senders.whatsapp_async import AsyncWhatsAppSender
from tests.whatsapp.graph_standin import GraphStandIn

ROOT = Path(__file__).resolve().parents[2]


def test_the_sync_sender_closes_only_its_own_client(graph: GraphStandIn) -> None:
    with WhatsAppSender(graph.token, graph.phone_number_id, base_url=graph.base_url) as owned:
        owned.send_message("15550002222", "hi")
    with pytest.raises(RuntimeError, match="closed"):
        owned.send_message("15550002222", "after close")
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(r.url.path)]}) as client:
        with WhatsAppSender(
            graph.token, graph.phone_number_id, base_url=graph.base_url, client=client
        ) as injected:
            injected.send_message("15550002222", "hi")
        assert not client.is_closed
        assert seen == [f"/v25.0/{graph.phone_number_id}/messages"]
    assert len(graph.received) == 2


@pytest.mark.anyio
async def test_the_async_sender_closes_only_its_own_client(graph: GraphStandIn) -> None:
    async with AsyncWhatsAppSender(
        graph.token, graph.phone_number_id, base_url=graph.base_url
    ) as owned:
        await owned.send_message("15550002222", "hi")
    with pytest.raises(RuntimeError, match="closed"):
        await owned.send_message("15550002222", "after close")
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
        async with AsyncWhatsAppSender(
            graph.token, graph.phone_number_id, base_url=graph.base_url, client=client
        ) as injected:
            await injected.send_message("15550002222", "hi")
        assert not client.is_closed
        assert seen == [f"/v25.0/{graph.phone_number_id}/messages"]
    assert len(graph.received) == 2


def test_both_senders_show_the_same_repr_shape_without_the_token() -> None:
    sync = WhatsAppSender("tok-SECRET", "123", base_url="http://127.0.0.1:1")
    async_ = AsyncWhatsAppSender("tok-SECRET", "123", base_url="http://127.0.0.1:1")
    assert repr(sync) == (
        "WhatsAppSender(phone_number_id='123', url='http://127.0.0.1:1/v25.0/123/messages')"
    )
    assert repr(async_) == repr(sync).replace("WhatsAppSender", "AsyncWhatsAppSender")
    assert sync.retry_policy == async_.retry_policy
    sync.close()
    anyio.run(async_.aclose)


def test_a_users_async_sender_needs_only_send_message() -> None:
    class Half(AsyncMessageSender):
        pass

    with pytest.raises(TypeError, match="send_message"):
        Half()  # type: ignore[abstract]

    class Recording(AsyncMessageSender):
        def __init__(self) -> None:
            self.sent: list[tuple[str, str]] = []

        async def send_message(
            self, chat_id: str, text: str, options: dict[str, object] | None = None
        ) -> str | None:
            await anyio.sleep(0)
            self.sent.append((chat_id, text))
            return None

    recording = Recording()
    anyio.run(recording.send_message, "c1", "hi")
    assert recording.sent == [("c1", "hi")]
    assert isinstance(AsyncWhatsAppSender("t", "1"), AsyncMessageSender)


@pytest.mark.parametrize(
    "module", ["chat_orchestrator.senders.whatsapp", "chat_orchestrator.senders.whatsapp_async"]
)
def test_missing_httpx_names_the_extra(module: str) -> None:
    code = (  # neither httpx nor its anyio: the extra is not installed at all
        "import sys; sys.modules['httpx'] = sys.modules['anyio'] = None\n"
        "from chat_orchestrator.errors import MissingDependencyError\n"
        "try:\n"
        f"    import {module}\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert 'pip install "chat-orchestrator[whatsapp]"' in result.stdout, result.stderr
