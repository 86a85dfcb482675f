"""The stored image: exactly the size asked for, in the configured format. Pure CPU work on bytes;
callers run it in a thread."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps

ImageFormat = Literal["png", "webp"]

MIME_TYPES: dict[ImageFormat, str] = {"png": "image/png", "webp": "image/webp"}
_PIL_FORMATS: dict[ImageFormat, str] = {"png": "PNG", "webp": "WEBP"}

#: Beyond this a provider output or input image is refused rather than decoded (decompression bombs).
MAX_PIXELS = 64 * 1024 * 1024


class UnreadableImage(ValueError):
    """The bytes are not an image Pillow can read (or one too large to decode)."""


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    data: bytes
    mime_type: str
    width: int
    height: int


def open_image(data: bytes) -> Image.Image:
    """Opens (lazily) an image, refusing what is not one and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(str(exc) or type(exc).__name__) from None
    if image.width * image.height > MAX_PIXELS:
        raise UnreadableImage(f"{image.width}x{image.height} is too many pixels")
    return image


def encode_image(image: Image.Image, fmt: ImageFormat, webp_quality: int = 90) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="WEBP", quality=webp_quality, method=4)
    return out.getvalue()


def normalize_image(
    data: bytes, width: int, height: int, fmt: ImageFormat, webp_quality: int = 90
) -> NormalizedImage:
    """Resizes and centre-crops the image to width x height (keeping its aspect, no distortion) and
    encodes it as PNG or WebP. An image that already has the size and format is kept byte for byte."""
    image = open_image(data)
    mime = MIME_TYPES[fmt]
    if image.size == (width, height) and image.format == _PIL_FORMATS[fmt]:
        return NormalizedImage(data, mime, width, height)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert(
                "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
            )
        if image.size != (width, height):
            image = ImageOps.fit(
                image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
            )
        return NormalizedImage(encode_image(image, fmt, webp_quality), mime, width, height)
    except (OSError, ValueError) as exc:
        raise UnreadableImage(str(exc) or type(exc).__name__) from None


def verify_image(data: bytes) -> tuple[str, int, int]:
    """(mime type, width, height) of an image that fully decodes; raises UnreadableImage."""
    image = open_image(data)
    mime = Image.MIME.get(image.format or "", "")
    try:
        image.verify()
    except Exception as exc:  # Pillow's verify raises many types for a corrupt file
        raise UnreadableImage(str(exc) or type(exc).__name__) from None
    return mime, image.width, image.height
