from __future__ import annotations

import pytest

from imagegen_common.credit_packs import CreditPackError, load_credit_packs, parse_credit_packs


def test_the_built_in_packs_load() -> None:
    packs = load_credit_packs()
    assert [p.id for p in packs.packs] == ["starter", "standard", "large"]
    starter = packs.get("starter")
    assert starter is not None
    assert (starter.credits, starter.amount, starter.currency) == (500, 500, "usd")
    assert starter.price_per_100_credits() == 100
    assert packs.get("nope") is None


@pytest.mark.parametrize(
    "pack",
    [
        {"id": "x", "name": "X", "credits": 0, "price": {"amount": 1, "currency": "usd"}},
        {"id": "x", "name": "X", "credits": 1, "price": {"amount": -1, "currency": "usd"}},
        {"id": "X Y", "name": "X", "credits": 1, "price": {"amount": 1, "currency": "usd"}},
        {"id": "x", "name": "X", "credits": 1, "price": {"amount": 1, "currency": "dollars"}},
        {"id": "x", "name": "X", "credits": 1},
    ],
)
def test_bad_packs_are_refused(pack: dict[str, object]) -> None:
    with pytest.raises(CreditPackError):
        parse_credit_packs({"packs": [pack]})


def test_duplicate_ids_are_refused() -> None:
    pack = {"id": "x", "name": "X", "credits": 1, "price": {"amount": 1, "currency": "usd"}}
    with pytest.raises(CreditPackError, match="duplicate"):
        parse_credit_packs({"packs": [pack, pack]})
