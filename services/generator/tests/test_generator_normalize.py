"""Normalisation of provider outputs and the local provider (pure: no network)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imagegen_common.catalog import load_catalog
from imagegen_generator.normalize import UnreadableImage, normalize_image, verify_image
from imagegen_generator.providers.base import GenerationRequest
from imagegen_generator.providers.local import INSTANT_CACHE_SIZES, LocalProvider


def encoded(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    colour: tuple[int, ...] = (10, 200, 30, 128)[: len(mode)] if mode != "P" else (3,)
    Image.new(mode, (width, height), colour if len(colour) > 1 else colour[0]).save(out, format=fmt)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((1024, 1024), (1600, 900)),
        ((1440, 800), (4096, 2304)),
        ((768, 1344), (512, 512)),
        ((1000, 500), (600, 1200)),
    ],
)
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_output_has_exactly_the_requested_size_and_format(
    source: tuple[int, int], target: tuple[int, int], fmt: str
) -> None:
    result = normalize_image(encoded(*source, fmt="JPEG"), *target, fmt)  # type: ignore[arg-type]
    image = decode(result.data)
    assert image.size == target == (result.width, result.height)
    assert image.format == fmt.upper()
    assert result.mime_type == f"image/{fmt}"


def test_center_crop_keeps_the_middle() -> None:
    # A wide image, left third red, middle green, right third blue, cropped to a square: only green left.
    source = Image.new("RGB", (300, 100), (0, 255, 0))
    source.paste((255, 0, 0), (0, 0, 100, 100))
    source.paste((0, 0, 255), (200, 0, 300, 100))
    out = io.BytesIO()
    source.save(out, format="PNG")
    image = decode(normalize_image(out.getvalue(), 100, 100, "png").data).convert("RGB")
    assert image.getpixel((5, 50)) == (0, 255, 0)
    assert image.getpixel((95, 50)) == (0, 255, 0)


def test_an_image_that_already_fits_is_kept_byte_for_byte() -> None:
    data = encoded(640, 480)
    assert normalize_image(data, 640, 480, "png").data == data


def test_palette_and_alpha_images_are_converted() -> None:
    assert decode(normalize_image(encoded(64, 64, mode="P"), 32, 32, "png").data).mode in ("RGB", "RGBA")
    assert decode(normalize_image(encoded(64, 64, mode="RGBA"), 32, 32, "webp").data).mode == "RGBA"


def test_garbage_is_unreadable() -> None:
    with pytest.raises(UnreadableImage):
        normalize_image(b"not an image at all", 64, 64, "png")
    with pytest.raises(UnreadableImage):
        verify_image(encoded(64, 64)[:40])


def test_verify_reports_the_true_type() -> None:
    assert verify_image(encoded(20, 10, fmt="JPEG")) == ("image/jpeg", 20, 10)
    assert verify_image(encoded(20, 10, fmt="WEBP"))[0] == "image/webp"


def request(width: int, height: int) -> GenerationRequest:
    return GenerationRequest(
        job_id="img_test",
        model=load_catalog().get("nano-banana"),
        prompt="a cat riding a bicycle through Paris at dawn, watercolour, " * 5,
        width=width,
        height=height,
    )


@pytest.mark.parametrize("size", [(512, 512), (1536, 640), (777, 1999)])
async def test_local_provider_draws_exactly_the_requested_size(size: tuple[int, int]) -> None:
    provider = LocalProvider("png")
    output = await provider.generate(request(*size))
    image = decode(output.data)
    assert (image.size, image.format, output.mime_type) == (size, "PNG", "image/png")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 10  # a drawing, not a blank
    assert normalize_image(output.data, *size, "png").data == output.data  # nothing re-encoded after


async def test_local_provider_instant_mode_serves_cached_images() -> None:
    provider = LocalProvider("webp", instant=True)
    first = await provider.generate(request(800, 600))
    second = await provider.generate(request(800, 600))
    assert first.data is second.data
    assert decode(first.data).size == (800, 600)
    assert first.mime_type == "image/webp"
    await provider.aclose()


async def test_local_provider_instant_mode_keeps_the_most_recently_used_sizes() -> None:
    provider = LocalProvider("png", instant=True)
    sizes = [(64 + n, 64) for n in range(INSTANT_CACHE_SIZES + 5)]
    first = await provider.generate(request(*sizes[0]))
    for size in sizes[1:INSTANT_CACHE_SIZES]:
        await provider.generate(request(*size))
    assert (await provider.generate(request(*sizes[0]))).data is first.data  # used again: kept
    for size in sizes[INSTANT_CACHE_SIZES:]:
        await provider.generate(request(*size))
    assert len(provider.cached_sizes) == INSTANT_CACHE_SIZES
    assert provider.cached_sizes[-1] == sizes[-1]
    assert sizes[0] in provider.cached_sizes
    assert sizes[1] not in provider.cached_sizes  # the least recently used go first
    await provider.aclose()
