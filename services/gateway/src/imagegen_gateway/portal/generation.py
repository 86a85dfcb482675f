"""The portal's Try it through the gateway's own generation path (the one REST uses): the same
catalog, prices, credit holds, queue and errors. The one place where the portal uses the gateway's
internals (``app.state.gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_common.ids import new_job_id
from imagegen_gateway.authentication import Principal
from imagegen_gateway.catalog import price
from imagegen_gateway.errors import GatewayError, InsufficientCreditsError
from imagegen_gateway.generation import ImageRequest

#: Sizes offered on the Try it page (width, height): squares and the common photo ratios.
SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1536, 1024),
    (1024, 1536),
    (1344, 768),
    (768, 1344),
    (512, 512),
)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    key: str
    name: str
    description: str
    #: Credits of one image per size ("1024x1024" → credits), only the sizes the model takes.
    prices: dict[str, int]


class NotEnoughCredits(Exception):
    def __init__(self, required: int, available: int) -> None:
        super().__init__(f"This image costs {required} credits; you have {available}.")
        self.required = required
        self.available = available


class TryRefused(Exception):
    """The request cannot be made (a sentence for people)."""


async def model_choices(request: Request) -> tuple[list[ModelChoice], str]:
    """The catalog's text-to-image models with their prices, and the default model's key."""
    listing = await request.app.state.gateway.catalog.listing()
    choices = []
    for model in listing.models:
        if not model.supports_text_to_image:
            continue
        prices = {}
        for width, height in SIZES:
            try:
                prices[f"{width}x{height}"] = price(model, width, height, 0)
            except GatewayError:
                continue  # a size this model does not take
        if prices:
            choices.append(ModelChoice(model.key, model.name, model.description, prices))
    return choices, listing.default_model


async def submit(request: Request, session: pb.Session, prompt: str, model: str, size: str) -> str:
    """Holds the credits and queues one image for the session's account; its id."""
    try:
        width, height = (int(part) for part in size.split("x", 1))
    except ValueError:
        raise TryRefused("Choose one of the sizes offered.") from None
    account = session.account.account
    principal = Principal(account_id=account.id, email=account.email, token_id="")
    image = ImageRequest(prompt=prompt.strip(), model=model, width=width, height=height)
    try:
        [submission] = await request.app.state.gateway.generations.submit(
            principal, image, [new_job_id()], reply=False, frontend="rest"
        )
    except InsufficientCreditsError as exc:
        raise NotEnoughCredits(exc.required, exc.available) from None
    except GatewayError as exc:
        raise TryRefused(str(exc)) from None
    return str(submission.job_id)
