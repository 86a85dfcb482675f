"""The input of a Replicate prediction for each catalog model (pure: no network)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen_common.catalog import Catalog, load_catalog
from imagegen_generator.providers.base import GenerationRequest, InputImage
from imagegen_generator.replicate_input import build_input, nearest_aspect_ratio, scaled_size

CATALOG: Catalog = load_catalog()
PNG = InputImage(b"\x89PNG fake", "image/png")


def request(key: str, width: int, height: int, **extra: Any) -> GenerationRequest:
    return GenerationRequest(
        job_id="img_test", model=CATALOG.get(key), prompt="a red fox", width=width, height=height, **extra
    )


@pytest.mark.parametrize(
    ("width", "height", "ratios", "expected"),
    [
        (1024, 1024, ("1:1", "16:9"), "1:1"),
        (1920, 1080, ("1:1", "16:9", "4:3"), "16:9"),
        (1000, 1500, ("1:1", "2:3", "9:16"), "2:3"),
        (4096, 512, ("21:9", "16:9", "1:1"), "21:9"),
        (512, 4096, ("9:21", "9:16", "1:1"), "9:21"),
        (1100, 1000, ("1:1", "5:4"), "1:1"),
    ],
)
def test_nearest_aspect_ratio(width: int, height: int, ratios: tuple[str, ...], expected: str) -> None:
    assert nearest_aspect_ratio(width, height, ratios) == expected


@pytest.mark.parametrize(
    ("size", "max_side", "multiple", "expected"),
    [
        ((1024, 768), 1440, 32, (1024, 768)),
        ((4096, 2048), 1440, 32, (1440, 736)),
        ((1000, 1000), 1024, 8, (1000, 1000)),
        ((2048, 1536), 1024, 8, (1024, 768)),
        ((1001, 999), 4096, 1, (1001, 999)),
        ((4096, 512), 1440, 32, (1440, 192)),
    ],
)
def test_scaled_size_fits_max_side_in_multiples(
    size: tuple[int, int], max_side: int, multiple: int, expected: tuple[int, int]
) -> None:
    width, height = scaled_size(*size, max_side, multiple)
    assert (width, height) == expected
    assert max(width, height) <= max_side
    assert width % multiple == 0
    assert height % multiple == 0


def test_every_catalog_model_gets_a_prompt_a_size_and_its_fixed_inputs() -> None:
    for model in CATALOG:
        payload = build_input(model, request(model.key, 1536, 1024))
        assert payload["prompt"] == "a red fox"
        for key, value in model.replicate.input.items():
            assert payload[key] == value
        if model.replicate.size == "aspect_ratio":
            assert payload["aspect_ratio"] in model.replicate.aspect_ratios
            if "3:2" in model.replicate.aspect_ratios:
                assert payload["aspect_ratio"] == "3:2"
        else:
            assert {"width", "height"} <= payload.keys()


def test_nano_banana() -> None:
    payload = build_input(
        CATALOG.get("nano-banana"), request("nano-banana", 1920, 1080, input_images=(PNG, PNG))
    )
    assert payload == {
        "output_format": "png",
        "prompt": "a red fox",
        "aspect_ratio": "16:9",
        "image_input": [PNG.data_uri(), PNG.data_uri()],
    }


def test_flux_dev_takes_one_image_not_a_list() -> None:
    payload = build_input(CATALOG.get("flux-1"), request("flux-1", 1024, 1024, input_images=(PNG,)))
    assert payload["image"] == PNG.data_uri()
    assert payload["num_outputs"] == 1


def test_flux_pro_custom_size_within_1440_in_multiples_of_32() -> None:
    payload = build_input(CATALOG.get("flux-1.1-pro"), request("flux-1.1-pro", 4096, 2304))
    assert payload["aspect_ratio"] == "custom"
    assert (payload["width"], payload["height"]) == (1440, 800)
    payload = build_input(
        CATALOG.get("flux-1.1-pro"), request("flux-1.1-pro", 1024, 1024, input_images=(PNG,))
    )
    assert payload["image_prompt"] == PNG.data_uri()


def test_seedream_sends_custom_width_and_height() -> None:
    payload = build_input(CATALOG.get("seedream-4"), request("seedream-4", 3000, 2000))
    assert (payload["size"], payload["width"], payload["height"]) == ("custom", 3000, 2000)
    assert payload["max_images"] == 1


def test_sdxl_negative_prompt_and_size_in_multiples_of_8() -> None:
    payload = build_input(CATALOG.get("sdxl"), request("sdxl", 2048, 1152, negative_prompt="blurry"))
    assert payload["negative_prompt"] == "blurry"
    assert (payload["width"], payload["height"]) == (1024, 576)


def test_a_negative_prompt_is_dropped_for_a_model_without_one() -> None:
    payload = build_input(CATALOG.get("imagen-4"), request("imagen-4", 1024, 1024, negative_prompt="blurry"))
    assert "blurry" not in payload.values()
    assert payload["safety_filter_level"] == "block_only_high"


def test_kontext_and_recraft() -> None:
    payload = build_input(
        CATALOG.get("flux-kontext-pro"), request("flux-kontext-pro", 1024, 2048, input_images=(PNG,))
    )
    assert (payload["aspect_ratio"], payload["input_image"]) == ("1:2", PNG.data_uri())
    assert build_input(CATALOG.get("recraft-v3"), request("recraft-v3", 1400, 1000))["aspect_ratio"] == "7:5"


def test_an_input_image_for_a_model_without_image_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="takes no input image"):
        build_input(CATALOG.get("flux-schnell"), request("flux-schnell", 1024, 1024, input_images=(PNG,)))
