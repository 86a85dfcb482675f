"""A provider that needs no network: draws the image with Pillow (development, tests, benchmarks).

The picture is a gradient whose colours come from a hash of the prompt, the model name and the
prompt wrapped over it, at exactly the size asked for. In instant mode (benchmarks) it serves a
pre-encoded gradient per size from memory (the most recently used sizes), so that no drawing or
encoding is on the job's path.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections import OrderedDict

from PIL import Image, ImageChops, ImageDraw, ImageFont

from imagegen_generator.cpu import CpuPool
from imagegen_generator.normalize import MIME_TYPES, ImageFormat, encode_image
from imagegen_generator.providers.base import GenerationRequest, ProviderOutput

Colour = tuple[int, int, int]

#: Sizes whose image instant mode keeps: a benchmark uses a few; any size is allowed in a job.
INSTANT_CACHE_SIZES = 16


def palette(seed_text: str) -> tuple[Colour, Colour]:
    digest = hashlib.sha256(seed_text.encode()).digest()
    return (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])


def gradient(width: int, height: int, start: Colour, end: Colour) -> Image.Image:
    """A diagonal gradient from start (top left) to end (bottom right)."""
    vertical = Image.linear_gradient("L")
    mask = ImageChops.add(vertical, vertical.rotate(90), scale=2.0).resize((width, height))
    return Image.composite(
        Image.new("RGB", (width, height), end), Image.new("RGB", (width, height), start), mask
    )


def draw(prompt: str, model_name: str, width: int, height: int) -> Image.Image:
    start, end = palette(prompt)
    image = gradient(width, height, start, end)
    canvas = ImageDraw.Draw(image)
    size = max(12, min(width, height) // 24)
    font = ImageFont.load_default(size=size)
    margin = size
    chars_per_line = max(8, int((width - 2 * margin) / (size * 0.55)))
    lines = textwrap.wrap(prompt, chars_per_line)[: max(1, (height - 4 * margin) // (size + 4) - 1)]
    text = "\n".join([model_name, "", *lines])
    canvas.multiline_text(
        (margin, margin),
        text,
        font=font,
        fill=(255, 255, 255),
        spacing=4,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    return image


class LocalProvider:
    name = "local"

    def __init__(
        self,
        image_format: ImageFormat = "png",
        *,
        instant: bool = False,
        webp_quality: int = 90,
        cpu: CpuPool | None = None,
    ) -> None:
        self._cpu = cpu or CpuPool()
        self._format = image_format
        self._instant = instant
        self._quality = webp_quality
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    @property
    def cached_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of the images instant mode keeps, least recently used first."""
        return list(self._cache)

    async def generate(self, request: GenerationRequest) -> ProviderOutput:
        mime = MIME_TYPES[self._format]
        if self._instant:
            key = (request.width, request.height)
            cached = self._cache.get(key)
            if cached is None:
                cached = await self._cpu.run(self._encoded_gradient, *key)
                self._cache[key] = cached
                while len(self._cache) > INSTANT_CACHE_SIZES:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return ProviderOutput(cached, mime)
        data = await self._cpu.run(self._render, request)
        return ProviderOutput(data, mime)

    def _render(self, request: GenerationRequest) -> bytes:
        image = draw(request.prompt, request.model.name, request.width, request.height)
        return encode_image(image, self._format, self._quality)

    def _encoded_gradient(self, width: int, height: int) -> bytes:
        return encode_image(
            gradient(width, height, (40, 60, 120), (200, 120, 60)), self._format, self._quality
        )

    async def aclose(self) -> None:
        self._cache.clear()
