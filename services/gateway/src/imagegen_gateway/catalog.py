"""Billing's model catalog as the gateway sees it: fetched over gRPC, cached for a short while."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Protocol

from imagegen_common.catalog import CatalogError, ReplicateMapping, check_input_images
from imagegen_gateway.domain import Model, ModelListing
from imagegen_gateway.errors import InvalidInputError

CACHE_SECONDS = 30.0


class ModelSource(Protocol):
    async def list_models(self) -> ModelListing: ...


class ModelCatalog:
    def __init__(self, billing: ModelSource) -> None:
        self.billing = billing
        self._cached: ModelListing | None = None
        self._fetched_at = 0.0
        #: The fetch under way, shared by every request that finds the cache stale meanwhile.
        self._fetching: asyncio.Task[ModelListing] | None = None

    async def listing(self) -> ModelListing:
        if self._cached is not None and time.monotonic() - self._fetched_at <= CACHE_SECONDS:
            return self._cached
        if self._fetching is None or self._fetching.done():
            # A task of its own: a request that goes away does not fail the others waiting on it.
            self._fetching = asyncio.ensure_future(self._fetch())
            # retrieved here: every request may have gone before the fetch ended
            self._fetching.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(self._fetching)

    async def _fetch(self) -> ModelListing:
        listing = await self.billing.list_models()
        self._cached, self._fetched_at = listing, time.monotonic()
        return listing

    async def get(self, key: str) -> Model:
        """The model of ``key`` (the default one when empty); the error names the valid keys."""
        listing = await self.listing()
        wanted = key or listing.default_model
        for model in listing.models:
            if model.key == wanted:
                return model
        keys = ", ".join(m.key for m in listing.models)
        raise InvalidInputError(f"unknown model {wanted!r}; available models: {keys}", field="model")


def provider_reference(model: Model) -> str:
    """``owner/name`` or ``owner/name:version``, as the generator passes it to Replicate."""
    return ReplicateMapping(model=model.provider_model, version=model.provider_version).reference


def check_request(model: Model, width: int, height: int, input_images: int) -> None:
    """The checks of billing's Quote, made here too so that a refusal names its field.

    Raises InvalidInputError with ``field`` ``width``, ``height`` or ``input_images``.
    """
    dims = model.dimensions
    try:
        # a step of 0 (unset) means any size in range
        replace(dims, step=dims.step or 1).check(model.key, width, height)
        check_input_images(
            model.key,
            input_images,
            supports_text_to_image=model.supports_text_to_image,
            supports_image_to_image=model.supports_image_to_image,
            max_input_images=model.max_input_images,
        )
    except CatalogError as exc:
        raise InvalidInputError(str(exc), field=exc.field) from None


def price(model: Model, width: int, height: int, input_images: int) -> int:
    """Credits of one image: the request checked against the model, then billing's own price rule
    (the shared pure function), so that no Quote round trip is needed on the hot path."""
    check_request(model, width, height, input_images)
    return model.price_rule.credits(width, height)
