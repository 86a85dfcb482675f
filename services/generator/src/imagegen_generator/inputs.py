"""Input images of image-to-image jobs: our own stored images are read from the store; any other
URL is fetched through the SSRF guard and must decode as an image."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from imagegen_common.images import ImageStore, parse_image_url
from imagegen_common.safe_fetch import FetchError, SafeFetcher
from imagegen_generator.cpu import CpuPool
from imagegen_generator.errors import InputImageRefused
from imagegen_generator.normalize import UnreadableImage, verify_image
from imagegen_generator.providers.base import InputImage

#: Formats every provider model accepts as input.
ACCEPTED_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


class InputImageLoader:
    def __init__(
        self, fetcher: SafeFetcher, store: ImageStore, public_base_url: str, cpu: CpuPool | None = None
    ) -> None:
        self._cpu = cpu or CpuPool()
        self._fetcher = fetcher
        self._store = store
        self._public_base_url = public_base_url

    async def load_all(self, urls: Sequence[str]) -> tuple[InputImage, ...]:
        """Every input image, in order; raises InputImageRefused naming the first one refused."""
        if not urls:
            return ()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.load(url, number)) for number, url in enumerate(urls, 1)]
        except* InputImageRefused as refused:
            raise refused.exceptions[0] from None
        return tuple(task.result() for task in tasks)

    async def load(self, url: str, number: int = 1) -> InputImage:
        own = parse_image_url(url, self._public_base_url)
        if own is not None:
            stored = await self._store.get(own)
            if stored is None:
                raise InputImageRefused(f"Input image {number} does not exist (no stored image at that URL).")
            return InputImage(stored.data, stored.info.mime_type)
        try:
            fetched = await self._fetcher.fetch(url)
        except FetchError as exc:
            raise InputImageRefused(f"Input image {number} was refused: {exc}.") from None
        try:
            mime, _, _ = await self._cpu.run(verify_image, fetched.data)
        except UnreadableImage:
            raise InputImageRefused(f"Input image {number} is not a readable image.") from None
        if mime not in ACCEPTED_MIME_TYPES:
            raise InputImageRefused(
                f"Input image {number} is a {mime or 'file of an unknown type'}; use PNG, JPEG, WebP or GIF."
            )
        return InputImage(fetched.data, mime)
