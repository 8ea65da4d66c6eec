"""WhatsApp webhook bodies built in code, in the shape of fixtures/batch_two_messages.json."""

from __future__ import annotations

import json
from collections.abc import Sequence

PHONE_NUMBER_ID = "200000000000002"


def text_batch(
    messages: Sequence[tuple[str, str, str]],
    *,
    phone_number_id: str = PHONE_NUMBER_ID,
    timestamp: int = 1767226000,
) -> bytes:
    """A POST body carrying ``(wa_id, message id, text)`` messages, in order, one change."""
    contacts = [
        {"profile": {"name": f"User {wa_id}"}, "wa_id": wa_id}
        for wa_id in dict.fromkeys(wa_id for wa_id, _, _ in messages)
    ]
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": contacts,
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": message_id,
                                    "timestamp": str(timestamp + n),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                                for n, (wa_id, message_id, text) in enumerate(messages)
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body).encode()
