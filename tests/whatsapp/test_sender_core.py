"""The sans-I/O core alone: retry policy, transport-failure classification, one attempt count."""

from __future__ import annotations

import json

import httpx
import pytest

from chat_orchestrator.errors import SenderError, SenderTimeoutError, WhatsAppAPIError
from chat_orchestrator.senders.whatsapp_core import (
    GraphAPI,
    GraphCall,
    Retry,
    RetryPolicy,
    make_timeout,
)


def api(**policy: float) -> GraphAPI:
    return GraphAPI(
        "tok-SECRET",
        "123",
        api_version="v25.0",
        base_url="http://graph.test/",
        timeout=(1.0, 2.0),
        retry_policy=RetryPolicy(**policy),  # type: ignore[arg-type]
    )


def call(**policy: float) -> GraphCall[str]:
    return api(**policy).message("15550002222", "hi", None)


def test_the_policy_doubles_caps_and_gives_up() -> None:
    policy = RetryPolicy(max_retries=5, backoff=0.5, max_backoff=3.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    assert [policy.delay(n, 131056) for n in range(4)] == [1.0, 3.0, 3.0, 3.0]
    assert RetryPolicy(max_retries=0).delay(0) is None
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_retries=-1)


NOT_SENT = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError]
MAYBE_SENT = [
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
    httpx.TooManyRedirects,
]


@pytest.mark.parametrize("kind", NOT_SENT)
def test_nothing_sent_is_retried_then_cannot_reach(kind: type[httpx.RequestError]) -> None:
    attempt = call(max_retries=2, backoff=1.0)
    assert attempt.failed(kind("boom")) == Retry(1.0)
    assert attempt.failed(kind("boom")) == Retry(2.0)
    with pytest.raises(SenderError, match="cannot reach") as raised:
        attempt.failed(kind("boom"))
    assert type(raised.value) is SenderError
    assert isinstance(raised.value.__cause__, kind)


@pytest.mark.parametrize("kind", MAYBE_SENT)
def test_anything_after_sending_may_have_been_delivered(kind: type[httpx.RequestError]) -> None:
    with pytest.raises(SenderTimeoutError, match="may or may not have been delivered") as raised:
        call().failed(kind("boom"))
    assert isinstance(raised.value.__cause__, kind)


@pytest.mark.parametrize("kind", [httpx.LocalProtocolError, httpx.UnsupportedProtocol])
def test_an_unsendable_request_is_not_retried(kind: type[httpx.RequestError]) -> None:
    with pytest.raises(SenderError, match="cannot be sent") as raised:
        call().failed(kind("boom"))
    assert type(raised.value) is SenderError


def test_transport_and_api_failures_share_one_attempt_count() -> None:
    attempt = call(max_retries=3, backoff=1.0)
    throttled = json.dumps({"error": {"code": 130429, "message": "slow down"}}).encode()
    assert attempt.failed(httpx.ConnectError("refused")) == Retry(1.0)
    assert attempt.answered(429, throttled) == Retry(2.0)
    assert attempt.failed(httpx.ConnectError("refused")) == Retry(4.0)
    with pytest.raises(WhatsAppAPIError) as raised:
        attempt.answered(429, throttled)
    assert raised.value.retryable is True  # retryable, but the policy ran out


def test_the_call_carries_the_request_and_the_result() -> None:
    attempt = call()
    assert attempt.url == "http://graph.test/v25.0/123/messages"
    assert attempt.headers["Authorization"] == "Bearer tok-SECRET"
    assert json.loads(attempt.content)["text"] == {"preview_url": False, "body": "hi"}
    assert attempt.answered(200, b'{"messages": [{"id": "wamid.X"}]}') == "wamid.X"
    assert "SECRET" not in repr(attempt) + repr(api())


def test_timeouts_in_every_spelling() -> None:
    assert make_timeout(3.0) == httpx.Timeout(3.0)
    assert make_timeout((1.0, 7.0)) == httpx.Timeout(7.0, connect=1.0)
    custom = httpx.Timeout(1.0, read=9.0)
    assert make_timeout(custom) is custom
