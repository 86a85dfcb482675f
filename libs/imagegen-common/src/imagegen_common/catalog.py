"""The model catalog and its price rule: plain data and pure functions, no transport.

Billing serves the catalog and quotes prices from it; the generator reads the same file for the
upstream call of each model. The file is ``catalog.toml`` beside this module unless a setting
points at another one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_CATALOG_PATH = Path(__file__).with_name("catalog.toml")

#: Pixels in one megapixel of the price rule: a 1024x1024 image is exactly one.
MEGAPIXEL = 1024 * 1024

#: Bounds of the public API, whatever a model allows.
API_MIN_SIDE = 512
API_MAX_SIDE = 4096

SizeMode = Literal["aspect_ratio", "width_height", "aspect_ratio_custom"]


class CatalogError(ValueError):
    """A request the catalog cannot serve; the message is fit to show a user, and ``field`` names the
    part of the request it is about (``model``, ``width``, ``height``, ``input_images``) when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownModelError(CatalogError):
    def __init__(self, key: str, known: list[str]) -> None:
        super().__init__(f"unknown model {key!r}; available models: {', '.join(known)}", field="model")
        self.key = key
        self.known = known


class SizeOutOfRangeError(CatalogError):
    pass


class ImageToImageUnsupportedError(CatalogError):
    pass


@dataclass(frozen=True, slots=True)
class Dimensions:
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    step: int = 1

    def check(self, model: str, width: int, height: int) -> None:
        """Raises SizeOutOfRangeError with a sentence naming the allowed range."""
        for side, value, low, high in (
            ("width", width, self.min_width, self.max_width),
            ("height", height, self.min_height, self.max_height),
        ):
            if not low <= value <= high:
                raise SizeOutOfRangeError(
                    f"{side} {value} is out of range for {model}: it must be between {low} and {high} pixels",
                    field=side,
                )
            if value % self.step:
                raise SizeOutOfRangeError(
                    f"{side} {value} must be a multiple of {self.step} for {model}", field=side
                )


@dataclass(frozen=True, slots=True)
class PriceRule:
    credits_per_megapixel: int
    minimum_credits: int = 1

    def credits(self, width: int, height: int) -> int:
        """ceil(credits_per_megapixel * width * height / 2^20), at least minimum_credits.

        Integer arithmetic, so that no float rounding ever changes a price.
        """
        rounded_up = -(-self.credits_per_megapixel * width * height // MEGAPIXEL)
        return max(self.minimum_credits, rounded_up)

    def describe(self) -> str:
        return (
            f"{self.credits_per_megapixel} credits per megapixel (1024x1024 = 1 MP), rounded up, "
            f"minimum {self.minimum_credits}"
        )


@dataclass(frozen=True, slots=True)
class ReplicateMapping:
    """How a catalog model is called on Replicate."""

    model: str
    version: str = ""
    size: SizeMode = "aspect_ratio"
    aspect_ratios: tuple[str, ...] = ()
    max_side: int = 1440
    multiple: int = 1
    size_input: Mapping[str, Any] = field(default_factory=dict)
    image_input: str = ""
    image_input_list: bool = False
    negative_prompt: str = ""
    input: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """``owner/name`` or ``owner/name:version``, as the replicate client takes it."""
        return f"{self.model}:{self.version}" if self.version else self.model


@dataclass(frozen=True, slots=True)
class Model:
    key: str
    name: str
    description: str
    provider: str
    quality_rating: int
    pricing_rating: int
    supports_text_to_image: bool
    supports_image_to_image: bool
    max_input_images: int
    dimensions: Dimensions
    price: PriceRule
    replicate: ReplicateMapping

    def quote(self, width: int, height: int) -> int:
        """Credits for one image at this size; raises SizeOutOfRangeError when the size is not allowed."""
        self.dimensions.check(self.key, width, height)
        return self.price.credits(width, height)

    @property
    def default_cost(self) -> int:
        return self.price.credits(1024, 1024)

    def check_inputs(self, input_image_count: int) -> None:
        check_input_images(
            self.key,
            input_image_count,
            supports_text_to_image=self.supports_text_to_image,
            supports_image_to_image=self.supports_image_to_image,
            max_input_images=self.max_input_images,
        )


def check_input_images(
    key: str,
    count: int,
    *,
    supports_text_to_image: bool,
    supports_image_to_image: bool,
    max_input_images: int,
) -> None:
    """Raises CatalogError (field ``input_images``) when a model cannot take ``count`` input images."""
    if count and not supports_image_to_image:
        raise ImageToImageUnsupportedError(
            f"{key} does not support image-to-image; "
            "choose a model whose supports_image_to_image is true (see list_models)",
            field="input_images",
        )
    if count > max_input_images:
        raise CatalogError(f"{key} takes at most {max_input_images} input image(s)", field="input_images")
    if not count and not supports_text_to_image:
        raise CatalogError(f"{key} needs an input image", field="input_images")


@dataclass(frozen=True, slots=True)
class Catalog:
    models: Mapping[str, Model]
    default_model: str

    def get(self, key: str | None) -> Model:
        """The model of a key, the default one for an empty key."""
        model = self.models.get(key or self.default_model)
        if model is None:
            raise UnknownModelError(key or "", sorted(self.models))
        return model

    def quote(self, key: str | None, width: int, height: int) -> tuple[Model, int]:
        model = self.get(key)
        return model, model.quote(width, height)

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models.values())


def _check_rating(key: str, name: str, value: int) -> int:
    if not 1 <= value <= 5:
        raise ValueError(f"catalog: {key}.{name} must be between 1 and 5, not {value}")
    return value


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Builds a Catalog from the parsed TOML document; raises ValueError on a malformed one."""
    models: dict[str, Model] = {}
    for key, raw in data["models"].items():
        dims = Dimensions(**raw["dimensions"])
        if dims.min_width < API_MIN_SIDE or dims.min_height < API_MIN_SIDE:
            raise ValueError(f"catalog: {key} allows sizes below the API minimum of {API_MIN_SIDE}")
        if dims.max_width > API_MAX_SIDE or dims.max_height > API_MAX_SIDE:
            raise ValueError(f"catalog: {key} allows sizes above the API maximum of {API_MAX_SIDE}")
        upstream = dict(raw["replicate"])
        upstream["aspect_ratios"] = tuple(upstream.get("aspect_ratios", ()))
        models[key] = Model(
            key=key,
            name=raw["name"],
            description=raw["description"],
            provider=raw.get("provider", "replicate"),
            quality_rating=_check_rating(key, "quality_rating", raw["quality_rating"]),
            pricing_rating=_check_rating(key, "pricing_rating", raw["pricing_rating"]),
            supports_text_to_image=raw["supports_text_to_image"],
            supports_image_to_image=raw["supports_image_to_image"],
            max_input_images=raw.get("max_input_images", 0),
            dimensions=dims,
            price=PriceRule(**raw["price"]),
            replicate=ReplicateMapping(**upstream),
        )
    default = data["default_model"]
    if default not in models:
        raise ValueError(f"catalog: default_model {default!r} is not in the catalog")
    return Catalog(models=models, default_model=default)


def load_catalog(path: Path | None = None) -> Catalog:
    with (path or DEFAULT_CATALOG_PATH).open("rb") as fh:
        return parse_catalog(tomllib.load(fh))
