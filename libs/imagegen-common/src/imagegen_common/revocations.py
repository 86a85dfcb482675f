"""The message of a credential revocation on ``nats_names.REVOCATIONS_SUBJECT``: billing publishes it,
every gateway reads it and drops the credential from its auth cache.

It names ids only (a token's id, an account's id), never a token or its hash: anyone who may listen
learns which credential stopped working, nothing that would let them use one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked token (``token_id``) or a disabled account (``account_id`` alone: all its tokens)."""

    account_id: str
    token_id: str = ""

    def encode(self) -> bytes:
        return json.dumps({"account_id": self.account_id, "token_id": self.token_id}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        """Raises ValueError for a message that is not a revocation."""
        try:
            fields = json.loads(data)
            account_id, token_id = fields["account_id"], fields.get("token_id", "")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError("not a revocation message") from error
        if not isinstance(account_id, str) or not isinstance(token_id, str) or not account_id:
            raise ValueError("not a revocation message")
        return cls(account_id=account_id, token_id=token_id)
