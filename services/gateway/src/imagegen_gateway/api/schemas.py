"""The REST API's request and response bodies: what clients send and get, and what /api/openapi.json
describes. Field names, limits and shapes follow the hosted service's documented API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from imagegen_common.catalog import API_MAX_SIDE, API_MIN_SIDE
from imagegen_gateway.generation import MAX_PROMPT_CHARS

MAX_IMAGES_PER_REQUEST = 10
MAX_INPUT_IMAGES = 10
MAX_URL_CHARS = 2048

#: ISO 8601 in UTC with microseconds, as the hosted API writes its timestamps.
Timestamp = Annotated[
    str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-11-28T09:15:02.123456Z"])
]
StatusCode = Annotated[
    int,
    Field(
        ge=0,
        le=3,
        description="0 queued, 1 processing, 2 completed, 3 failed.",
        json_schema_extra={"enum": [0, 1, 2, 3]},
    ),
]
StatusName = Literal["queued", "processing", "completed", "failed"]
HttpUrl = Annotated[AnyHttpUrl, Field(max_length=MAX_URL_CHARS)]


class GenerateRequest(BaseModel):
    """``POST /api/images/generate``: the hosted API's fields, plus ``webhook_url``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "flux-1", "prompt": "A watercolor fox in the snow", "width": 1024, "height": 1024},
                {
                    "model": "flux-1",
                    "prompt": "A lighthouse at dusk, oil painting",
                    "width": 1536,
                    "height": 1024,
                    "count": 2,
                    "negative_prompt": "people, text",
                    "webhook_url": "https://example.com/hooks/imagegen",
                },
            ]
        },
    )

    model: Annotated[
        str, Field(min_length=1, max_length=128, description="Model key (see `GET /api/models`).")
    ]
    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PROMPT_CHARS,
            description=f"What to draw, at most {MAX_PROMPT_CHARS} characters.",
        ),
    ]
    width: Annotated[
        int,
        Field(
            ge=API_MIN_SIDE, le=API_MAX_SIDE, description="Width in pixels (512–4096; models may allow less)."
        ),
    ]
    height: Annotated[
        int,
        Field(
            ge=API_MIN_SIDE,
            le=API_MAX_SIDE,
            description="Height in pixels (512–4096; models may allow less).",
        ),
    ]
    count: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_IMAGES_PER_REQUEST,
            description="Images to generate (1–10); each is its own image with its own id and price.",
        ),
    ] = 1
    input: Annotated[
        list[HttpUrl] | None,
        Field(
            max_length=MAX_INPUT_IMAGES,
            description=(
                "Input (reference) image URLs for image-to-image, at most 10 (models take fewer: see "
                "`max_input_images`). They are fetched by the generator behind an SSRF guard."
            ),
        ),
    ] = None
    negative_prompt: Annotated[
        str | None,
        Field(
            max_length=MAX_PROMPT_CHARS,
            description=f"What to keep out of the image, at most {MAX_PROMPT_CHARS} characters.",
        ),
    ] = None
    webhook_url: Annotated[
        HttpUrl | None,
        Field(
            description=(
                "Extension: where each image's outcome is POSTed (`image.completed` or `image.failed`, "
                "signed per Standard Webhooks with the account's secret). Defaults to the account's webhook, "
                "if one is set. Private and loopback addresses are refused."
            )
        ),
    ] = None


class QueuedImage(BaseModel):
    id: Annotated[str, Field(description="Image id; also the id of its generation job.")]
    status: StatusCode
    status_name: StatusName
    width: int
    height: int
    created_at: Timestamp


class GenerateResponse(BaseModel):
    success: Literal[True]
    images: list[QueuedImage]
    message: Annotated[str, Field(examples=["1 image(s) queued for generation"])]


class ImageError(BaseModel):
    code: Annotated[
        str,
        Field(
            description=(
                "Stable reason: `content_rejected`, `provider_error`, `provider_unavailable`, "
                "`input_image_refused`, `invalid_input`, `deadline_exceeded`, `expired`, `cancelled`, "
                "`unavailable`, `internal`, `failed`."
            ),
            examples=["content_rejected"],
        ),
    ]
    message: str


class WebhookSummary(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: Annotated[int, Field(ge=0)]
    last_status: Annotated[
        int | None,
        Field(description="HTTP status of the last attempt; null before any or without an answer."),
    ]
    last_error: str | None
    last_attempt_at: Timestamp | None


class Image(BaseModel):
    """An image (the job that makes it), as polling and webhooks show it."""

    id: str
    status: StatusCode
    status_name: StatusName
    model: str
    width: int
    height: int
    url: Annotated[str | None, Field(description="Permanent URL of the image, once completed.")]
    credits_used: Annotated[
        int,
        Field(
            ge=0,
            description=(
                "The image's price: held while queued or processing, spent once completed; 0 once failed."
            ),
        ),
    ]
    error: Annotated[ImageError | None, Field(description="Why it failed, once failed.")]
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Annotated[Timestamp | None, Field(description="When it completed or failed.")]
    webhook: Annotated[
        WebhookSummary | None,
        Field(description="Delivery of its webhook; null without one (absent in webhooks)."),
    ] = None


class ImageResponse(BaseModel):
    success: Literal[True]
    image: Image


class ImageListResponse(BaseModel):
    success: Literal[True]
    images: Annotated[list[Image], Field(description="The caller's images, newest first.")]
    next_cursor: Annotated[
        str | None, Field(description="Pass as `cursor` for the next page; null after the last.")
    ]


class SupportedDimensions(BaseModel):
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    step: int


class PriceRule(BaseModel):
    credits_per_megapixel: int
    minimum_credits: int
    description: str


class ModelInfo(BaseModel):
    """The same model object as MCP's ``list_models``."""

    key: str
    name: str
    description: str
    provider: str
    provider_model: str
    quality_rating: Annotated[int, Field(ge=1, le=5)]
    pricing_rating: Annotated[int, Field(ge=1, le=5)]
    supports_text_to_image: bool
    supports_image_to_image: bool
    max_input_images: int
    supported_dimensions: SupportedDimensions
    credits_for_1024x1024: int
    price_rule: PriceRule
    is_default: bool
    served_by: str


class ModelsResponse(BaseModel):
    success: Literal[True]
    models: list[ModelInfo]
    default_model: str


class TokenInfo(BaseModel):
    """An API token as stored: its label and first characters, never the token."""

    id: str
    label: str
    prefix: Annotated[str, Field(examples=["igk_AbCd"])]
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class AccountInfo(BaseModel):
    id: str
    email: str
    credits: Annotated[int, Field(description="Credits available now (held credits already taken off).")]
    reserved_credits: Annotated[int, Field(description="Credits held by images still queued or processing.")]
    created_at: Timestamp
    webhook_url: Annotated[str | None, Field(description="The account's default webhook, if one is set.")]
    webhook_secret_set: Annotated[
        bool,
        Field(description="Whether the account has a webhook signing secret (an administrator makes it)."),
    ]
    tokens: list[TokenInfo]


class AccountResponse(BaseModel):
    success: Literal[True]
    account: AccountInfo


class ErrorBody(BaseModel):
    """Every error: ``success: false``, a stable ``error`` code and a sentence for people."""

    success: Literal[False]
    error: Annotated[str, Field(examples=["not_found"])]
    message: str


class ValidationErrorBody(ErrorBody):
    errors: Annotated[
        dict[str, list[str]],
        Field(
            description="Messages by field.",
            examples=[{"width": ["Input should be less than or equal to 4096"]}],
        ),
    ]


class InsufficientCreditsBody(ErrorBody):
    required: Annotated[int, Field(description="Credits the request needs (all its images).")]
    available: Annotated[int, Field(description="Credits the account has.")]


class RateLimitedBody(ErrorBody):
    retry_after: Annotated[int, Field(description="Seconds until requests are accepted again.")]
