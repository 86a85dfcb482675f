"""Storage of generated images, so that their URLs never expire.

The generator writes (``put``); the gateway serves ``GET /images/{image_id}.{ext}`` by calling ``get``.
Two backends: the NATS JetStream object store (default, bucket ``imagegen_images``) and any
S3-compatible storage. An image id is the id of the job that made it; the file name adds the
extension of its format, and the public URL is ``{public_base_url}/images/{image_id}.{ext}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen_common import nats_names
from imagegen_common.settings import ENV_PREFIX
from imagegen_common.tracing import traced

StorageBackend = Literal["nats", "s3"]

#: Formats the service stores, by file extension.
MIME_BY_EXTENSION: dict[str, str] = {"png": "image/png", "webp": "image/webp"}
EXTENSION_BY_MIME: dict[str, str] = {mime: ext for ext, mime in MIME_BY_EXTENSION.items()}

# Ids come from imagegen_common.ids.random_id: a short lowercase prefix, "_", lowercase base32.
# Anything else (dots, slashes, percent signs, upper case, "..") is refused before it reaches a backend.
_IMAGE_ID = re.compile(r"[a-z]{1,16}_[a-z2-7]{16,64}")
_FILENAME = re.compile(rf"(?P<image_id>{_IMAGE_ID.pattern})\.(?P<ext>png|webp)")
IMAGES_PATH = "/images/"

#: Longest read of one image from the NATS object store (a stored image is at most some tens of MB).
NATS_READ_TIMEOUT_SECONDS = 30.0


class ImageStorageSettings(BaseSettings):
    """Where images are kept (a part of a service's settings)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    storage_backend: StorageBackend = Field(
        "nats",
        description="`nats` (the JetStream object store `imagegen_images`) or `s3` (S3-compatible storage).",
    )
    s3_bucket: str = Field("", description="S3 bucket of the images (required when storage_backend=s3).")
    s3_endpoint_url: str = Field(
        "", description="Endpoint of an S3-compatible service (MinIO, R2, …); empty for AWS S3."
    )
    s3_region: str = Field("us-east-1", description="Region of the S3 bucket.")
    s3_access_key_id: SecretStr = Field(
        SecretStr(""), description="S3 access key id; empty to use the default AWS credential chain."
    )
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret access key; empty to use the default AWS credential chain."
    )
    s3_key_prefix: str = Field("images/", description="Prefix of the object keys in the S3 bucket.")

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> ImageStorageSettings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("IMAGEGEN_S3_BUCKET must be set when IMAGEGEN_STORAGE_BACKEND=s3")
        return self


class InvalidImageName(ValueError):
    """A file name or id that is not one of ours (path tricks, unknown extension)."""


@dataclass(frozen=True, slots=True)
class StoredImage:
    """What the store knows about an image."""

    image_id: str
    filename: str
    mime_type: str
    size_bytes: int
    #: Strong ETag (quoted), from the SHA-256 of the bytes.
    etag: str


@dataclass(frozen=True, slots=True)
class ImageFile:
    """A stored image with its bytes, as ``get`` returns it."""

    info: StoredImage
    data: bytes


class ImageStore(Protocol):
    async def put(self, image_id: str, data: bytes, mime_type: str) -> StoredImage:
        """Stores (or replaces) the image; returns its description."""
        ...

    async def get(self, filename: str) -> ImageFile | None:
        """The image of a file name ``{image_id}.{ext}``; None when there is none.

        Raises InvalidImageName for a name that cannot be one of ours (serve it as 404).
        """
        ...

    async def info(self, filename: str) -> StoredImage | None:
        """What the store knows about the image of a file name, without its bytes; None when there
        is none. Raises InvalidImageName like ``get``."""
        ...

    async def ready(self) -> bool:
        """Whether the backend answers (for readiness probes)."""
        ...


def check_image_id(image_id: str) -> str:
    if not _IMAGE_ID.fullmatch(image_id):
        raise InvalidImageName(f"not an image id: {image_id[:80]!r}")
    return image_id


def image_filename(image_id: str, mime_type: str) -> str:
    """``{image_id}.{ext}`` for an image id and a stored mime type."""
    ext = EXTENSION_BY_MIME.get(mime_type)
    if ext is None:
        raise InvalidImageName(f"images are stored as PNG or WebP, not {mime_type!r}")
    return f"{check_image_id(image_id)}.{ext}"


def parse_image_filename(filename: str) -> tuple[str, str]:
    """(image_id, mime_type) of ``{image_id}.{ext}``; raises InvalidImageName for anything else."""
    match = _FILENAME.fullmatch(filename)
    if match is None:
        raise InvalidImageName(f"not an image file name: {filename[:80]!r}")
    return match["image_id"], MIME_BY_EXTENSION[match["ext"]]


def image_url(public_base_url: str, filename: str) -> str:
    """The permanent URL of a stored image."""
    parse_image_filename(filename)
    return f"{public_base_url.rstrip('/')}{IMAGES_PATH}{filename}"


def parse_image_url(url: str, public_base_url: str) -> str | None:
    """The file name when ``url`` is the URL of one of our stored images, otherwise None."""
    base = urlsplit(public_base_url.rstrip("/"))
    try:
        target = urlsplit(url)
        same_origin = (
            target.scheme.lower() == base.scheme.lower()
            and (target.hostname or "") == (base.hostname or "")
            and _port(target.scheme, target.port) == _port(base.scheme, base.port)
        )
    except ValueError:  # an invalid port or IPv6 literal
        return None
    prefix = base.path + IMAGES_PATH
    if not same_origin or target.query or target.fragment or not target.path.startswith(prefix):
        return None
    filename = target.path.removeprefix(prefix)
    try:
        parse_image_filename(filename)
    except InvalidImageName:
        return None
    return filename


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else {"http": 80, "https": 443}.get(scheme.lower())


def strong_etag(data: bytes) -> str:
    return _etag_from_digest(hashlib.sha256(data).digest())


def _etag_from_digest(digest: bytes) -> str:
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'


class NatsImageStore:
    """Images in a JetStream object store: one object per file name."""

    def __init__(self, store: ObjectStore, read_timeout: float = NATS_READ_TIMEOUT_SECONDS) -> None:
        self._store = store
        self._read_timeout = read_timeout

    @classmethod
    async def open(
        cls, connection: NatsClient, replicas: int = 1, read_timeout: float = NATS_READ_TIMEOUT_SECONDS
    ) -> NatsImageStore:
        """Binds to the bucket, creating it when it does not exist yet."""
        js = connection.jetstream()
        try:
            store = await js.object_store(nats_names.IMAGES_BUCKET)
        except BucketNotFoundError:
            store = await js.create_object_store(
                nats_names.IMAGES_BUCKET,
                config=ObjectStoreConfig(
                    description="Generated images (imagegen)",
                    storage=StorageType.FILE,
                    replicas=replicas,
                ),
            )
        return cls(store, read_timeout)

    @traced("image_store.put")
    async def put(self, image_id: str, data: bytes, mime_type: str) -> StoredImage:
        filename = image_filename(image_id, mime_type)
        info = await self._store.put(
            filename, data, meta=ObjectMeta(name=filename, headers={"Content-Type": [mime_type]})
        )
        return StoredImage(image_id, filename, mime_type, len(data), _nats_etag(info.digest, data))

    async def get(self, filename: str) -> ImageFile | None:
        """Raises TimeoutError when the object's chunks do not all arrive within the read timeout."""
        image_id, mime_type = parse_image_filename(filename)
        # Without ``writeinto`` nats-py appends chunk by chunk to an immutable bytes (quadratic in the
        # size), and it waits for chunks without a timeout of its own.
        buffer = io.BytesIO()
        try:
            async with asyncio.timeout(self._read_timeout):
                result = await self._store.get(filename, writeinto=buffer)
        except ObjectNotFoundError:
            return None
        data = buffer.getvalue()
        info = StoredImage(image_id, filename, mime_type, len(data), _nats_etag(result.info.digest, data))
        return ImageFile(info, data)

    async def info(self, filename: str) -> StoredImage | None:
        """One read of the object's meta message: no consumer (``get`` makes one per call, and a
        burst of them reaches JetStream's consumer limit) and no chunks."""
        image_id, mime_type = parse_image_filename(filename)
        try:
            async with asyncio.timeout(self._read_timeout):
                found = await self._store.get_info(filename)
        except ObjectNotFoundError:
            return None
        etag = _digest_etag(found.digest)
        if etag is None:  # not written by us: hash the bytes themselves
            image = await self.get(filename)
            return image.info if image is not None else None
        return StoredImage(image_id, filename, mime_type, found.size or 0, etag)

    async def ready(self) -> bool:
        await self._store.status()
        return True


def _nats_etag(digest: str | None, data: bytes) -> str:
    # The object store keeps "SHA-256=<urlsafe base64>" of the bytes: reuse it rather than hash again.
    return _digest_etag(digest) or strong_etag(data)


def _digest_etag(digest: str | None) -> str | None:
    """The ETag of an object store digest ("SHA-256=<urlsafe base64>"); None for any other."""
    if digest and digest.upper().startswith("SHA-256="):
        encoded = digest.split("=", 1)[1]
        with contextlib.suppress(ValueError):
            return _etag_from_digest(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    return None


class S3ImageStore:
    """Images in an S3-compatible bucket, under ``s3_key_prefix``; the ETag is kept as object metadata."""

    def __init__(self, client: Any, bucket: str, key_prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = key_prefix

    @traced("image_store.put")
    async def put(self, image_id: str, data: bytes, mime_type: str) -> StoredImage:
        filename = image_filename(image_id, mime_type)
        etag = strong_etag(data)
        await self._client.put_object(
            Bucket=self._bucket,
            Key=self._prefix + filename,
            Body=data,
            ContentType=mime_type,
            Metadata={"etag": etag.strip('"')},
        )
        return StoredImage(image_id, filename, mime_type, len(data), etag)

    async def get(self, filename: str) -> ImageFile | None:
        image_id, mime_type = parse_image_filename(filename)
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=self._prefix + filename)
        except self._client.exceptions.NoSuchKey:
            return None
        async with response["Body"] as body:
            data: bytes = await body.read()
        stored_etag = response.get("Metadata", {}).get("etag")
        etag = f'"{stored_etag}"' if stored_etag else strong_etag(data)
        return ImageFile(StoredImage(image_id, filename, mime_type, len(data), etag), data)

    async def info(self, filename: str) -> StoredImage | None:
        image_id, mime_type = parse_image_filename(filename)
        try:
            head = await self._client.head_object(Bucket=self._bucket, Key=self._prefix + filename)
        except self._client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        stored_etag = head.get("Metadata", {}).get("etag")
        if not stored_etag:  # not written by us: hash the bytes themselves
            image = await self.get(filename)
            return image.info if image is not None else None
        return StoredImage(image_id, filename, mime_type, int(head["ContentLength"]), f'"{stored_etag}"')

    async def ready(self) -> bool:
        await self._client.head_bucket(Bucket=self._bucket)
        return True


@contextlib.asynccontextmanager
async def open_image_store(
    settings: ImageStorageSettings, nats_connection: NatsClient | None, *, replicas: int = 1
) -> AsyncIterator[ImageStore]:
    """The configured store for the duration of the block.

    ``nats_connection`` is required for the NATS backend (the caller owns it); ``replicas`` is the
    replica count of the object-store bucket when it has to be created.
    """
    if settings.storage_backend == "nats":
        if nats_connection is None:
            raise ValueError("the NATS image store needs a NATS connection")
        yield await NatsImageStore.open(nats_connection, replicas=replicas)
        return

    import aioboto3  # noqa: PLC0415 (here: a NATS-only deployment never loads botocore)

    session = aioboto3.Session()
    options: dict[str, Any] = {"region_name": settings.s3_region}
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id.get_secret_value():
        options["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        options["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    async with session.client("s3", **options) as client:
        yield S3ImageStore(client, settings.s3_bucket, settings.s3_key_prefix)
