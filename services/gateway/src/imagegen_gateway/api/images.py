"""``POST /api/images/generate`` (answers at once; the images are made in the background),
``GET /api/images/{id}`` (poll one) and ``GET /api/images`` (the caller's history)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse

from imagegen_common.ids import new_job_id
from imagegen_common.images import InvalidImageName, check_image_id
from imagegen_gateway import presentation
from imagegen_gateway.api.deps import Caller, GatewayDep, GenerateQuota
from imagegen_gateway.api.responses import (
    COMMON_RESPONSES,
    CONFLICT,
    INVALID_JSON,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    PAYMENT_REQUIRED,
    RATE_LIMIT_HEADERS,
    RATE_LIMITED,
    ApiRoute,
)
from imagegen_gateway.api.schemas import (
    GenerateRequest,
    GenerateResponse,
    ImageListResponse,
    ImageResponse,
)
from imagegen_gateway.authentication import Principal
from imagegen_gateway.errors import InvalidInputError, NotFoundError
from imagegen_gateway.generation import ImageRequest, idempotent_job_id
from imagegen_gateway.idempotency import MAX_KEY_CHARS, Answer, fingerprint
from imagegen_gateway.state import Gateway

router = APIRouter(prefix="/api", tags=["images"], route_class=ApiRoute)

STATUS_TABLE = """

| status | status_name | meaning |
| --- | --- | --- |
| 0 | queued | waiting for a generator; credits held |
| 1 | processing | a generator is making it |
| 2 | completed | done: `url` is set; credits spent |
| 3 | failed | not made: `error` says why; credits returned |
"""
NOT_FOUND_MESSAGE = "No image with this id."
MAX_CURSOR_CHARS = 512
#: Longer than any image id (``img_`` and 26 characters); a longer one is refused before any lookup.
MAX_IMAGE_ID_CHARS = 96


@router.post(
    "/images/generate",
    response_model=GenerateResponse,
    operation_id="generateImages",
    summary="Generate images (asynchronously)",
    description=(
        "Holds the credits of every image (all or none: 402 reserves nothing) and queues one job per "
        "image, then answers at once with the images' ids, status 0 (queued). Poll "
        "`GET /api/images/{id}` or pass a `webhook_url` for the outcome.\n\n"
        "Send an `Idempotency-Key` header to retry safely: for 24 hours a repeat with the same key "
        "and body gets the first answer again and is charged once; the same key with another body "
        "is refused (422), and while the first request runs a repeat gets 409. Only successful "
        "answers are kept. Requests are limited per token (429 with `Retry-After`)." + STATUS_TABLE
    ),
    responses={
        200: {
            "description": "The images are queued.",
            "headers": {
                **RATE_LIMIT_HEADERS,
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored answer of an earlier request.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        400: INVALID_JSON,
        402: PAYMENT_REQUIRED,
        409: CONFLICT,
        413: PAYLOAD_TOO_LARGE,
        429: RATE_LIMITED,
        **COMMON_RESPONSES,
    },
)
async def generate(
    body: GenerateRequest,
    gateway: GatewayDep,
    principal: Caller,
    quota: GenerateQuota,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_KEY_CHARS,
            description="Makes a retry safe: the same key and body within 24 hours get the first answer.",
        ),
    ] = None,
) -> JSONResponse:
    if idempotency_key is None:
        answer = Answer(200, await _submit(gateway, principal, body, None))
    else:
        answer = await gateway.idempotency.once(
            principal.account_id,
            idempotency_key,
            fingerprint(body.model_dump(mode="json")),
            lambda: _submit(gateway, principal, body, idempotency_key),
        )
    headers = quota.headers() if quota is not None else {}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


async def _submit(
    gateway: Gateway, principal: Principal, body: GenerateRequest, idempotency_key: str | None
) -> dict[str, Any]:
    """Holds the credits of the request's images and queues them; the answer's body."""
    webhook_url = await gateway.webhook_targets.resolve(
        principal.account_id, str(body.webhook_url) if body.webhook_url else None
    )
    request = ImageRequest(
        prompt=body.prompt,
        model=body.model,
        width=body.width,
        height=body.height,
        input_image_urls=tuple(str(url) for url in body.input or ()),
        negative_prompt=body.negative_prompt or "",
    )
    if idempotency_key is None:
        job_ids = [new_job_id() for _ in range(body.count)]
    else:
        # in a namespace of their own: the same key given to MCP names another job
        rest_key = f"rest\0{idempotency_key}"
        job_ids = [idempotent_job_id(principal.account_id, rest_key, n) for n in range(body.count)]
    submissions = await gateway.generations.submit(
        principal, request, job_ids, reply=False, webhook_url=webhook_url, frontend="rest"
    )
    images = [presentation.queued_image(s.reservation) for s in submissions]
    answer = GenerateResponse(
        success=True, images=images, message=f"{len(images)} image(s) queued for generation"
    )
    return answer.model_dump(mode="json")


@router.get(
    "/images/{image_id}",
    response_model=ImageResponse,
    operation_id="getImage",
    summary="An image and its status",
    description="Poll this until `status` is 2 (completed: `url`) or 3 (failed: `error`)." + STATUS_TABLE,
    responses={404: NOT_FOUND, **COMMON_RESPONSES},
)
async def get_image(
    image_id: Annotated[
        str,
        Path(max_length=MAX_IMAGE_ID_CHARS, description="The image's id, from the generate answer."),
    ],
    gateway: GatewayDep,
    principal: Caller,
) -> ImageResponse:
    try:
        check_image_id(image_id)  # not even the shape of an id: no need to ask billing
    except InvalidImageName:
        raise NotFoundError(NOT_FOUND_MESSAGE) from None
    reservation = await gateway.billing.find_reservation(image_id)
    if reservation is None or reservation.account_id != principal.account_id:
        raise NotFoundError(NOT_FOUND_MESSAGE)  # another account's image is no image at all
    return ImageResponse(success=True, image=presentation.image(reservation))


@router.get(
    "/images",
    response_model=ImageListResponse,
    operation_id="listImages",
    summary="The caller's images, newest first",
    description="A page at a time: pass `next_cursor` as `cursor` until it is null.",
    responses=COMMON_RESPONSES,
)
async def list_images(
    gateway: GatewayDep,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=100, description="Images per page.")] = 20,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=MAX_CURSOR_CHARS, description="`next_cursor` of the last page."),
    ] = None,
) -> ImageListResponse:
    try:
        reservations, next_page = await gateway.billing.list_reservations(
            principal.account_id, limit, cursor or ""
        )
    except InvalidInputError as exc:
        raise InvalidInputError("The cursor is not one this API gave out.", field="cursor") from exc
    return ImageListResponse(
        success=True,
        images=[presentation.image(r) for r in reservations],
        next_cursor=next_page or None,
    )
