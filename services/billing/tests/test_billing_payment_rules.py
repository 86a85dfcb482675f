"""The rules of buying credits, without a database."""

from __future__ import annotations

import pytest

from imagegen_billing.domain import EntryKind, InvalidArgumentError
from imagegen_billing.payment_rules import (
    PurchaseState,
    can_close,
    check_stripe_id,
    dispute_key,
    may_go_negative,
    proportional_credits,
    purchase_key,
    refund_key,
    refund_take_back,
)


def test_a_purchase_is_keyed_by_its_checkout_session_whatever_the_event() -> None:
    assert purchase_key("cs_test_1") == purchase_key("cs_test_1") == "purchase:cs_test_1"
    assert refund_key("ch_1", 500) != refund_key("ch_1", 1000)
    assert dispute_key("dp_1", won=False) != dispute_key("dp_1", won=True)


@pytest.mark.parametrize(
    ("credits", "paid", "part", "expected"),
    [
        (2500, 2000, 2000, 2500),
        (2500, 2000, 1000, 1250),
        (2500, 2000, 1, 1),
        (500, 500, 9999, 500),
        (10, 3, 1, 3),
    ],
)
def test_take_back_is_in_proportion_and_never_more_than_the_pack(
    credits: int, paid: int, part: int, expected: int
) -> None:
    assert proportional_credits(credits, paid, part) == expected


def test_refunds_take_only_what_their_cumulative_total_adds() -> None:
    assert refund_take_back(2500, 2000, 1000, 0) == 1250  # first half
    assert refund_take_back(2500, 2000, 2000, 1250) == 1250  # then the rest
    assert refund_take_back(2500, 2000, 1000, 2500) == 0  # an older total arriving late gives nothing back


def test_only_refunds_and_disputes_may_take_a_balance_below_zero() -> None:
    assert {k for k in EntryKind if may_go_negative(k)} == {EntryKind.REFUND, EntryKind.DISPUTE}


def test_only_a_pending_purchase_closes() -> None:
    assert can_close(PurchaseState.PENDING)
    assert not can_close(PurchaseState.PAID)


@pytest.mark.parametrize("bad", ["", "cs", "cs_", "cs test", "pi_abc", "cs_a/b", "x" * 300])
def test_stripe_ids_are_checked(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_stripe_id(bad, "checkout_session_id", "cs")
    assert check_stripe_id("cs_test_a1B2", "checkout_session_id", "cs") == "cs_test_a1B2"
