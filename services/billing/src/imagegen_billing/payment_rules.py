"""The rules of buying credits, as plain Python: when a purchase is granted, what refunds and disputes
take back, and which ledger entries may take a balance below zero. payments.py applies them in the
database.

- A paid Checkout Session grants its pack's credits once: the grant's ledger entry is keyed by the
  session id (``purchase_key``), and the key is unique in the ledger.
- A refund takes back ``floor(credits * refunded / paid)`` in total for the payment; Stripe reports the
  cumulative refunded amount, so each event takes only what its total adds (never gives back).
- An opened dispute takes back its share the same way; a won dispute gives back what its opening took.
- Only REFUND and DISPUTE entries may take a balance below zero: the credits were spent already, and
  new holds fail (they need ``credits >= amount``) until the balance is positive again.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from imagegen_billing.domain import EntryKind, InvalidArgumentError, shown

#: Stripe ids: a prefix, an underscore, then letters and digits ("cs_test_a1B2…", "pi_…", "dp_…").
_STRIPE_ID = re.compile(r"^[a-z]{2,8}_[A-Za-z0-9_]{1,250}$")
#: Entries that may take a balance below zero.
MAY_GO_NEGATIVE = frozenset({EntryKind.REFUND, EntryKind.DISPUTE})


class PurchaseState(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Purchase:
    checkout_session_id: str
    account_id: str
    pack_id: str
    credits: int
    amount: int
    currency: str
    state: PurchaseState
    payment_intent_id: str
    credits_taken_back: int
    flagged: bool
    create_time: datetime
    paid_time: datetime | None


def check_stripe_id(value: str, field: str, prefix: str | None = None) -> str:
    """A Stripe object id (``cs_…``, ``pi_…``, ``ch_…``, ``dp_…``); raises InvalidArgumentError."""
    if not _STRIPE_ID.match(value) or (prefix is not None and not value.startswith(prefix + "_")):
        raise InvalidArgumentError(f"{field} {shown(value)!r} is not a Stripe id", field=field)
    return value


def purchase_key(checkout_session_id: str) -> str:
    return f"purchase:{checkout_session_id}"


def refund_key(charge_id: str, amount_refunded: int) -> str:
    return f"refund:{charge_id}:{amount_refunded}"


def dispute_key(dispute_id: str, won: bool) -> str:
    return f"dispute_reversal:{dispute_id}" if won else f"dispute:{dispute_id}"


def proportional_credits(credits: int, paid: int, part: int) -> int:
    """Credits matching ``part`` of a payment of ``paid`` (rounded down, at most all of them)."""
    if paid <= 0 or part <= 0:
        return 0
    return credits * min(part, paid) // paid


def refund_take_back(credits: int, paid: int, amount_refunded: int, refunded_before: int) -> int:
    """Credits a refund event takes back now: what the cumulative ``amount_refunded`` stands for, less
    what earlier refunds of the payment took (``refunded_before`` credits); never negative."""
    return max(0, proportional_credits(credits, paid, amount_refunded) - refunded_before)


def can_close(state: PurchaseState) -> bool:
    """Only a pending purchase fails or expires; a paid one stays paid (its credits are granted)."""
    return state is PurchaseState.PENDING


def may_go_negative(kind: EntryKind) -> bool:
    return kind in MAY_GO_NEGATIVE
