"""``GET /images/{image_id}.{ext}``: stored images, immutable, with strong ETags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegen_common.images import InvalidImageName
from imagegen_gateway.api.deps import GatewayDep
from imagegen_gateway.api.responses import UNAVAILABLE, error_doc, error_response

router = APIRouter(tags=["images"])

IMMUTABLE = "public, max-age=31536000, immutable"


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/webp": {}}},
    304: {"description": "Not modified (`If-None-Match` names the image's ETag)."},
    404: error_doc("No such image."),
    503: UNAVAILABLE,
}


# GET and HEAD as two operations with ids of their own (one api_route would give both the same id)
@router.get(
    "/images/{filename}", operation_id="getImageFile", responses=RESPONSES, summary="A generated image"
)
@router.head(
    "/images/{filename}",
    operation_id="headImageFile",
    responses=RESPONSES,
    summary="A generated image's headers",
)
async def get_image(filename: str, request: Request, gateway: GatewayDep) -> Response:
    """The bytes of a generated image; its URL never changes and never expires."""
    store = gateway.images
    try:
        found = await store.get(filename)
    except InvalidImageName:
        found = None
    except TimeoutError:  # the store answers too slowly: say so rather than hold the request
        message = "image storage is not answering; try again"
        return error_response(503, "unavailable", message, headers={"Retry-After": "5"})
    if found is None:
        return error_response(404, "not_found", "no such image")
    headers = {"ETag": found.info.etag, "Cache-Control": IMMUTABLE}
    if found.info.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else found.data
    headers["Content-Length"] = str(found.info.size_bytes)
    return Response(content=body, media_type=found.info.mime_type, headers=headers)
