"""The portal's Try it page: prompt, model and size with the price shown before submitting; the image
is made through the same path as REST (credits, errors) and shown when it is done."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import JSONResponse, Response

from imagegen.billing.v1 import resources_pb2
from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_gateway.portal import generation, security, views
from imagegen_gateway.portal.client import NotFound, NotSignedIn
from imagegen_gateway.portal.context import portal_of, see_other
from imagegen_gateway.portal.routes import CsrfField, check_csrf, require_session

router = APIRouter(include_in_schema=False)
DEFAULT_SIZE = "1024x1024"
MAX_PROMPT_CHARS = 1024


async def _page(
    request: Request,
    session: pb.Session,
    *,
    status_code: int = 200,
    error: str = "",
    short_of_credits: bool = False,
    prompt: str = "",
    model: str = "",
    size: str = DEFAULT_SIZE,
    image_id: str = "",
) -> Response:
    choices, default_model = await generation.model_choices(request)
    chosen = model if any(c.key == model for c in choices) else default_model
    prices = {c.key: c.prices for c in choices}
    return portal_of(request).render(
        request,
        "try.html",
        session,
        status_code=status_code,
        active="try",
        choices=choices,
        chosen_model=chosen,
        chosen_size=size,
        sizes=[f"{w}x{h}" for w, h in generation.SIZES],
        prices_json=json.dumps(prices, separators=(",", ":")),
        price=prices.get(chosen, {}).get(size),
        prompt=prompt,
        error=error,
        short_of_credits=short_of_credits,
        image_id=image_id,
        max_prompt=MAX_PROMPT_CHARS,
    )


@router.get("/account/try")
async def try_it(request: Request, image: str = "", model: str = "", size: str = DEFAULT_SIZE) -> Response:
    session = await require_session(request)
    return await _page(
        request, session, image_id=image if image.startswith("img_") else "", model=model, size=size
    )


@router.post("/account/try")
async def try_submit(
    request: Request,
    csrf: CsrfField = "",
    prompt: Annotated[str, Form(max_length=MAX_PROMPT_CHARS)] = "",
    model: Annotated[str, Form(max_length=128)] = "",
    size: Annotated[str, Form(max_length=16)] = DEFAULT_SIZE,
) -> Response:
    session = await require_session(request)
    check_csrf(request, csrf)
    if not prompt.strip():
        return await _page(
            request,
            session,
            status_code=400,
            error="Describe the image you want.",
            prompt=prompt,
            model=model,
            size=size,
        )
    try:
        image_id = await generation.submit(request, session, prompt, model, size)
    except generation.NotEnoughCredits as exc:
        return await _page(
            request,
            session,
            status_code=402,
            error=str(exc),
            short_of_credits=True,
            prompt=prompt,
            model=model,
            size=size,
        )
    except generation.TryRefused as exc:
        return await _page(
            request, session, status_code=400, error=str(exc), prompt=prompt, model=model, size=size
        )
    return see_other(views.page_link("/account/try", image=image_id, model=model, size=size))


def image_status(image: resources_pb2.Reservation) -> str:
    if image.state == resources_pb2.Reservation.STATE_CAPTURED:
        return "completed"
    if image.state == resources_pb2.Reservation.STATE_RELEASED:
        return "failed"
    return "processing" if image.HasField("start_time") else "queued"


@router.get("/account/images/{image_id}.json")
async def image_json(request: Request, image_id: str) -> Response:
    """An image's state for the Try it page's script (the session's own images only)."""
    portal = portal_of(request)
    headers = {"Cache-Control": "no-store"}
    try:
        reply = await portal.client.call(
            lambda s: s.GetImage,
            pb.GetImageRequest(session_token=security.session_secret(request), image_id=image_id),
        )
    except NotSignedIn:
        return JSONResponse({"error": "not signed in"}, status_code=401, headers=headers)
    except NotFound:
        return JSONResponse({"error": "no such image"}, status_code=404, headers=headers)
    image = reply.image
    return JSONResponse(
        {
            "id": image.job_id,
            "status": image_status(image),
            "url": image.result.image_url,
            "error": image.result.error_message,
            "credits": image.amount,
            "balance": reply.account.credits,
        },
        headers=headers,
    )
