"""``GET /images/{image_id}.{ext}``: stored images, immutable, with strong ETags."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegen_common.images import InvalidImageName
from imagegen_gateway.deps import gateway_of

router = APIRouter(tags=["images"])

IMMUTABLE = "public, max-age=31536000, immutable"


@router.api_route(
    "/images/{filename}",
    methods=["GET", "HEAD"],
    responses={200: {"content": {"image/png": {}, "image/webp": {}}}, 304: {}, 404: {}},
    summary="A generated image",
)
async def get_image(filename: str, request: Request) -> Response:
    """The bytes of a generated image; its URL never changes and never expires."""
    store = gateway_of(request).images
    try:
        found = await store.get(filename)
    except InvalidImageName:
        found = None
    except TimeoutError:  # the store answers too slowly: say so rather than hold the request
        return Response(
            status_code=503,
            content=b'{"success":false,"message":"image storage is not answering; try again"}',
            media_type="application/json",
            headers={"Retry-After": "5"},
        )
    if found is None:
        return Response(
            status_code=404,
            content=b'{"success":false,"message":"no such image"}',
            media_type="application/json",
        )
    headers = {"ETag": found.info.etag, "Cache-Control": IMMUTABLE}
    if found.info.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else found.data
    headers["Content-Length"] = str(found.info.size_bytes)
    return Response(content=body, media_type=found.info.mime_type, headers=headers)
