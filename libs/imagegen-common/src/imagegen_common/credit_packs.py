"""Credit packs on sale: plain data loaded from ``credit_packs.toml`` (beside the model catalog) or a
file a setting names. Billing grants a paid pack's credits from here, and only from here."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CREDIT_PACKS_PATH = Path(__file__).with_name("credit_packs.toml")
_PACK_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CURRENCY = re.compile(r"^[a-z]{3}$")


class CreditPackError(ValueError):
    """A packs file that cannot be used; the message says which pack and why."""


@dataclass(frozen=True, slots=True)
class CreditPack:
    id: str
    name: str
    credits: int
    #: Price in the currency's minor unit (cents).
    amount: int
    #: ISO 4217, lower case.
    currency: str
    stripe_price_id: str = ""

    def price_per_100_credits(self) -> float:
        """The price of 100 credits in the minor unit (for comparing packs)."""
        return self.amount * 100 / self.credits


@dataclass(frozen=True, slots=True)
class CreditPacks:
    packs: tuple[CreditPack, ...]

    def get(self, pack_id: str) -> CreditPack | None:
        return next((p for p in self.packs if p.id == pack_id), None)


def parse_credit_packs(data: Mapping[str, Any]) -> CreditPacks:
    """Checks and builds the packs of a parsed TOML document; raises CreditPackError."""
    packs: list[CreditPack] = []
    for index, raw in enumerate(data.get("packs", [])):
        where = f"packs[{index}]"
        try:
            pack = CreditPack(
                id=str(raw["id"]),
                name=str(raw["name"]),
                credits=int(raw["credits"]),
                amount=int(raw["price"]["amount"]),
                currency=str(raw["price"]["currency"]).lower(),
                stripe_price_id=str(raw.get("stripe_price_id", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CreditPackError(f"{where}: missing or malformed field {exc}") from exc
        if not _PACK_ID.match(pack.id):
            raise CreditPackError(f"{where}: id {pack.id!r} must be lower-case letters, digits, - or _")
        if pack.credits <= 0 or pack.amount <= 0:
            raise CreditPackError(f"{where}: credits and price must be positive")
        if not _CURRENCY.match(pack.currency):
            raise CreditPackError(f"{where}: currency {pack.currency!r} is not an ISO 4217 code")
        if any(p.id == pack.id for p in packs):
            raise CreditPackError(f"{where}: duplicate id {pack.id!r}")
        packs.append(pack)
    return CreditPacks(tuple(packs))


def load_credit_packs(path: Path | None = None) -> CreditPacks:
    with (path or DEFAULT_CREDIT_PACKS_PATH).open("rb") as fh:
        return parse_credit_packs(tomllib.load(fh))
