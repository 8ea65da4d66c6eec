"""Graph API error bodies: parsing and retry classification by ``error.code``.

Meta says to classify on ``code`` (not the HTTP status or the message text); the HTTP status is
only a fallback for bodies that are not Graph JSON (an HTML 502 from a proxy, say).
"""

from __future__ import annotations

from typing import Any

from chat_orchestrator.errors import WhatsAppAPIError

__all__ = ["NEVER_RETRY", "PAIR_RATE_LIMIT", "RETRYABLE", "api_error", "is_retryable"]

#: Throughput, app/WABA and spam rate limits, transient server errors, maintenance.
RETRYABLE = frozenset(
    {1, 2, 4, 80007, 130429, 131000, 131048, 131016, 131056, 131057, 133004, 2494100}
)
#: Request or account problems that a retry only repeats (token, parameters, recipient, window).
NEVER_RETRY = frozenset({0, 100, 190, 131008, 131009, 131021, 131026, 131030, 131047, 131050})
#: Same sender to the same recipient too fast: Meta prescribes waiting 4^n seconds.
PAIR_RATE_LIMIT = 131056
_RETRYABLE_HTTP = frozenset({429, 500, 502, 503, 504})
#: Longest message or details text kept from an error body (Meta's are a sentence or two).
_MAX_TEXT = 1_000


def is_retryable(code: int | None, http_status: int, transient: bool = False) -> bool:
    if code is not None:
        if code in NEVER_RETRY:
            return False
        return code in RETRYABLE or transient
    return http_status in _RETRYABLE_HTTP


def api_error(http_status: int, body: Any) -> WhatsAppAPIError:
    """A WhatsAppAPIError from a response body (Graph JSON or not)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return WhatsAppAPIError(
            f"WhatsApp API answered HTTP {http_status} without a Graph error body",
            http_status=http_status,
            code=None,
            retryable=is_retryable(None, http_status),
        )
    code = error.get("code") if isinstance(error.get("code"), int) else None
    subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
    data = error.get("error_data")
    # error_data is usually {"details": ...} but some errors carry a string, some nothing.
    details = (
        data.get("details") if isinstance(data, dict) else data if isinstance(data, str) else None
    )
    # Bounded: the body is the server's, and the message goes into every log line of it.
    message = str(error.get("message") or "no message")[:_MAX_TEXT]
    transient = error.get("is_transient") is True
    return WhatsAppAPIError(
        f"WhatsApp API error {code} (HTTP {http_status}): {message}"
        + (f" - {str(details)[:_MAX_TEXT]}" if details else ""),
        http_status=http_status,
        code=code,
        error_subcode=subcode,
        type=error.get("type") if isinstance(error.get("type"), str) else None,
        fbtrace_id=error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None,
        details=str(details)[:_MAX_TEXT] if details is not None else None,
        is_transient=transient,
        retryable=is_retryable(code, http_status, transient),
    )
