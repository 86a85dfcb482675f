"""Standard Webhooks (https://www.standardwebhooks.com): the message, its id and its signature.

The signature is ``v1,`` and the base64 HMAC-SHA256, keyed with the account's secret (``whsec_`` and
base64 bytes), of ``<webhook-id>.<webhook-timestamp>.<body>``. The id names the job's event, so it is
the same on every retry and receivers can drop duplicates; the timestamp is that of the attempt.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

COMPLETED = "image.completed"
FAILED = "image.failed"


def message_id(job_id: str, event_type: str) -> str:
    """The ``webhook-id`` of a job's event: stable across retries."""
    return f"evt_{job_id}_{event_type.rsplit('.', 1)[-1]}"


def message_body(event_type: str, timestamp: datetime, data: dict[str, Any]) -> str:
    """The JSON body: ``{"type", "timestamp", "data"}``, compact."""
    stamp = timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"))


def signed_headers(secret: str, msg_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, sent_at, body),
    }
