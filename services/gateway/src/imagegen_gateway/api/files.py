"""``GET /images/{image_id}.{ext}``: stored images, immutable, with strong ETags.

Conditional and range requests are answered as RFC 9110 says: ``If-None-Match`` (a list of ETags,
weak comparison, or ``*``, which matches any existing image) gives 304; one byte range (``bytes=a-b``,
``a-``, ``-n``) gives 206 with ``Content-Range``, an unsatisfiable one 416 with ``Content-Range:
bytes */size``; ``If-Range`` with another ETag (or a date: we have no Last-Modified) gives the whole
image. Several ranges in one request are answered with the whole image (200), which RFC 9110 allows
(a server may ignore Range): multipart/byteranges buys nothing for images of a few MB. Every 200
says ``Accept-Ranges: bytes``.
"""

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
    206: {"description": "One byte range of the image (`Range: bytes=…`).", "content": {"image/png": {}}},
    304: {"description": "Not modified (`If-None-Match` names the image's ETag, or is `*`)."},
    416: {"description": "The byte range lies outside the image (`Content-Range: bytes */<size>`)."},
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
    etag, size = found.info.etag, len(found.data)
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and none_match_fails(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    wanted = requested_range(request.headers.get("range"), request.headers.get("if-range"), etag)
    status, body = 200, found.data
    if wanted is not None:
        span = byte_span(wanted, size)
        if span is None:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end = span
        status, body = 206, found.data[start : end + 1]
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        body = b""
    return Response(content=body, status_code=status, media_type=found.info.mime_type, headers=headers)


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def none_match_fails(header: str, etag: str) -> bool:
    """Whether ``If-None-Match`` is false for an existing image with ``etag`` (so: 304): ``*``, or
    one of the listed tags equal under weak comparison."""
    tags = [tag.strip() for tag in header.split(",") if tag.strip()]
    return "*" in tags or any(_opaque(tag) == _opaque(etag) for tag in tags)


def requested_range(header: str | None, if_range: str | None, etag: str) -> str | None:
    """The one ``bytes=`` range to serve, or None to serve the whole image: no Range, a unit other
    than bytes, several ranges, or an ``If-Range`` that is not this image's (strong) ETag."""
    if header is None:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    return spec.strip()


def byte_span(spec: str, size: int) -> tuple[int, int] | None:
    """First and last byte (inclusive) of a range spec (``a-b``, ``a-``, ``-n``) in ``size`` bytes, or
    None when it cannot be satisfied (416). A malformed spec is unsatisfiable too."""
    first, dash, last = spec.partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    if start >= size:
        return None
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if end >= start else None
