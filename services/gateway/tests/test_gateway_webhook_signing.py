"""Standard Webhooks signing: the signature checked by hand from the spec and by the reference
library's verifier, ids stable per job event, and the body's shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from imagegen_gateway.webhooks.signing import (
    COMPLETED,
    FAILED,
    message_body,
    message_id,
    signed_headers,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body() -> None:
    sent_at = datetime(2026, 11, 28, 9, 15, 2, 500_000, tzinfo=UTC)
    body = message_body(COMPLETED, sent_at, {"id": "img_1", "status": 2})
    headers = signed_headers(SECRET, "evt_img_1_completed", sent_at, body)
    assert headers["webhook-id"] == "evt_img_1_completed"
    assert headers["webhook-timestamp"] == str(int(sent_at.timestamp()))
    signed = f"evt_img_1_completed.{headers['webhook-timestamp']}.{body}".encode()
    digest = hmac.new(b"0123456789abcdef0123456789abcdef", signed, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_the_reference_verifier_accepts_it_and_refuses_a_changed_body() -> None:
    now = datetime.now(UTC)
    body = message_body(FAILED, now, {"id": "img_2", "error": {"code": "timeout", "message": "late"}})
    headers = signed_headers(SECRET, message_id("img_2", FAILED), now, body)
    assert Webhook(SECRET).verify(body, headers)["type"] == "image.failed"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("late", "early"), headers)
    other = "whsec_" + base64.b64encode(b"another secret of enough bytes!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_the_body_and_the_ids() -> None:
    happened = datetime(2026, 11, 28, 9, 15, 2, tzinfo=UTC)
    body = json.loads(message_body(COMPLETED, happened, {"id": "img_3"}))
    assert body == {
        "type": "image.completed",
        "timestamp": "2026-11-28T09:15:02.000000Z",
        "data": {"id": "img_3"},
    }
    assert message_id("img_3", COMPLETED) == "evt_img_3_completed"
    assert message_id("img_3", FAILED) == "evt_img_3_failed"
