"""Webhook verification: the subscription handshake and ``X-Hub-Signature-256``."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from chat_orchestrator.channels.whatsapp_events import WebhookBatch, parse_payload
from chat_orchestrator.errors import WebhookError

__all__ = ["WhatsAppWebhook"]

#: Meta's documented maximum payload is 3 MB; leave a little room.
DEFAULT_MAX_BODY = 3_500_000
_HEX64 = re.compile(r"[0-9a-f]{64}")


class WhatsAppWebhook:
    """Checks and parses Meta's webhook requests. Raises WebhookError with the HTTP status."""

    def __init__(
        self, verify_token: str, app_secret: str, *, max_body_bytes: int = DEFAULT_MAX_BODY
    ) -> None:
        if not verify_token or not app_secret:
            raise ValueError("verify_token and app_secret are required")
        self._verify_token = verify_token.encode()
        self._app_secret = app_secret.encode()
        self.max_body_bytes = max_body_bytes

    def __repr__(self) -> str:  # neither secret appears
        return f"WhatsAppWebhook(max_body_bytes={self.max_body_bytes})"

    def verify_subscription(self, params: Mapping[str, str]) -> str:
        """The ``hub.challenge`` to echo (200, text/plain), or WebhookError 403."""
        token = params.get("hub.verify_token", "").encode()
        challenge = params.get("hub.challenge")
        matches = hmac.compare_digest(token, self._verify_token)
        if params.get("hub.mode") != "subscribe" or not matches or challenge is None:
            raise WebhookError("webhook verification refused", status=403)
        return challenge

    def verify_signature(self, body: bytes, header: str | None) -> None:
        """HMAC-SHA256 of the raw body bytes with the app secret, compared in constant time."""
        if not header:
            raise WebhookError("X-Hub-Signature-256 is missing", status=401)
        scheme, _, received = header.partition("=")
        digest = received.strip().lower()
        expected = hmac.new(self._app_secret, body, hashlib.sha256).hexdigest()
        # Compared as bytes: compare_digest refuses a str holding non-ASCII (a TypeError, a 500).
        # WSGI hands headers over as latin-1 text, so anything outside it is not ours either.
        well_formed = scheme == "sha256" and _HEX64.fullmatch(digest) is not None
        if not well_formed or not hmac.compare_digest(digest.encode("ascii"), expected.encode()):
            raise WebhookError("X-Hub-Signature-256 does not match the body", status=403)

    def parse(self, body: bytes, signature: str | None) -> WebhookBatch:
        """Verify, then parse every entry of a POST body."""
        if len(body) > self.max_body_bytes:
            raise WebhookError(f"body over {self.max_body_bytes} bytes", status=413)
        self.verify_signature(body, signature)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):  # ValueError also covers a >4300-digit int
            raise WebhookError("the body is not JSON", status=400) from None
        except RecursionError:  # JSON nested deeper than the interpreter's stack
            raise WebhookError("the body is nested too deeply", status=400) from None
        return parse_payload(payload)
