from __future__ import annotations

from collections.abc import Callable

import pytest

from imagegen_common.catalog import (
    CatalogError,
    ImageToImageUnsupportedError,
    PriceRule,
    SizeOutOfRangeError,
    UnknownModelError,
    load_catalog,
    parse_catalog,
)


def test_catalog_lists_real_replicate_models_with_nano_banana_as_default() -> None:
    catalog = load_catalog()
    assert catalog.default_model == "nano-banana"
    assert catalog.get(None).replicate.reference == "google/nano-banana"
    assert len(catalog.models) >= 6
    assert "flux-1" in catalog.models  # the REST docs' example model
    for model in catalog:
        assert 1 <= model.quality_rating <= 5
        assert 1 <= model.pricing_rating <= 5
        assert "/" in model.replicate.model
        assert model.default_cost >= 1


@pytest.mark.parametrize(
    ("rate", "width", "height", "expected"),
    [
        (5, 1024, 1024, 5),  # exactly one megapixel
        (5, 512, 512, 2),  # 1.25 rounded up
        (5, 4096, 4096, 80),
        (1, 512, 512, 1),  # the minimum
        (3, 1024, 1536, 5),  # 4.5 rounded up
        (8, 1025, 1024, 9),  # a pixel over one megapixel is charged as the next credit
    ],
)
def test_price_is_credits_per_megapixel_rounded_up(rate: int, width: int, height: int, expected: int) -> None:
    assert PriceRule(credits_per_megapixel=rate).credits(width, height) == expected


def test_minimum_credits_applies() -> None:
    assert PriceRule(credits_per_megapixel=1, minimum_credits=3).credits(512, 512) == 3


def test_quote_rejects_sizes_outside_the_models_range_with_the_range_in_the_message() -> None:
    catalog = load_catalog()
    with pytest.raises(SizeOutOfRangeError, match="between 512 and 2048"):
        catalog.quote("flux-schnell", 4096, 1024)
    with pytest.raises(SizeOutOfRangeError, match="height 100"):
        catalog.quote("nano-banana", 1024, 100)
    with pytest.raises(SizeOutOfRangeError, match="multiple of 8"):
        catalog.quote("sdxl", 1020, 1024)


def test_unknown_model_names_the_valid_keys() -> None:
    with pytest.raises(UnknownModelError, match="nano-banana") as err:
        load_catalog().get("dall-e-9")
    assert "flux-1" in str(err.value)


def test_image_to_image_on_a_model_without_it_is_refused() -> None:
    catalog = load_catalog()
    with pytest.raises(ImageToImageUnsupportedError, match="does not support image-to-image"):
        catalog.get("flux-schnell").check_inputs(1)
    with pytest.raises(CatalogError, match="at most 1"):
        catalog.get("flux-1").check_inputs(2)
    catalog.get("nano-banana").check_inputs(10)


def test_malformed_catalogs_are_refused() -> None:
    model: dict[str, object] = {
        "name": "M",
        "description": "d",
        "quality_rating": 3,
        "pricing_rating": 3,
        "supports_text_to_image": True,
        "supports_image_to_image": False,
        "dimensions": {"min_width": 512, "max_width": 1024, "min_height": 512, "max_height": 1024},
        "price": {"credits_per_megapixel": 1},
        "replicate": {"model": "o/m"},
    }
    assert parse_catalog({"default_model": "m", "models": {"m": model}}).get("m").quote(512, 512) == 1
    with pytest.raises(ValueError, match="default_model"):
        parse_catalog({"default_model": "x", "models": {"m": model}})
    with pytest.raises(ValueError, match="between 1 and 5"):
        parse_catalog({"default_model": "m", "models": {"m": {**model, "quality_rating": 6}}})
    too_small = {
        **model,
        "dimensions": {"min_width": 64, "max_width": 1024, "min_height": 512, "max_height": 1024},
    }
    with pytest.raises(ValueError, match="below the API minimum"):
        parse_catalog({"default_model": "m", "models": {"m": too_small}})


def test_refusals_name_the_field_they_are_about() -> None:
    catalog = load_catalog()
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: catalog.get("dall-e-9"), "model"),
        (lambda: catalog.quote("flux-schnell", 4096, 1024), "width"),
        (lambda: catalog.quote("flux-schnell", 1024, 4096), "height"),
        (lambda: catalog.get("flux-schnell").check_inputs(1), "input_images"),
        (lambda: catalog.get("flux-1").check_inputs(2), "input_images"),
    ]
    for call, field in cases:
        with pytest.raises(CatalogError) as refused:
            call()
        assert refused.value.field == field
