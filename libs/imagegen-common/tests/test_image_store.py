"""Image storage: names and URLs, the NATS object store on a real nats-server, S3 against moto's
server (a real HTTP S3 fake)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import aioboto3
import nats
import pytest
from moto.server import ThreadedMotoServer
from nats.aio.msg import Msg

from imagegen_common import nats_names
from imagegen_common.ids import new_job_id
from imagegen_common.images import (
    ImageStorageSettings,
    ImageStore,
    InvalidImageName,
    NatsImageStore,
    image_filename,
    image_url,
    open_image_store,
    parse_image_filename,
    parse_image_url,
    strong_etag,
)
from imagegen_testing.nats_server import NatsServer
from imagegen_testing.net import free_port

BASE = "https://img.example.com"


def test_filenames_and_urls() -> None:
    image_id = new_job_id()
    assert image_filename(image_id, "image/png") == f"{image_id}.png"
    assert image_filename(image_id, "image/webp") == f"{image_id}.webp"
    assert parse_image_filename(f"{image_id}.webp") == (image_id, "image/webp")
    url = image_url(BASE + "/", f"{image_id}.png")
    assert url == f"{BASE}/images/{image_id}.png"
    assert parse_image_url(url, BASE) == f"{image_id}.png"
    assert parse_image_url(f"https://img.example.com:443/images/{image_id}.png", BASE) == f"{image_id}.png"
    assert parse_image_url(f"http://img.example.com/images/{image_id}.png", BASE) is None
    assert parse_image_url(f"https://evil.example.com/images/{image_id}.png", BASE) is None
    assert parse_image_url(f"{BASE}/images/{image_id}.png?x=1", BASE) is None
    assert parse_image_url(f"{BASE}/images/../{image_id}.png", BASE) is None
    assert parse_image_url(f"{BASE}/prefix/images/{image_id}.png", BASE + "/prefix") == f"{image_id}.png"


@pytest.mark.parametrize(
    "name",
    [
        "../img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png",
        "img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png/..",
        "img_aaaaaaaaaaaaaaaaaaaaaaaaaa.jpg",
        "img_aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "IMG_AAAAAAAAAAAAAAAAAAAAAAAAAA.png",
        "img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png%00",
        "img_aaaa%2Faaaaaaaaaaaaaaaaaaaaaa.png",
        "img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png\n",
        "/etc/passwd",
        "",
    ],
)
def test_names_that_are_not_ours_are_refused(name: str) -> None:
    with pytest.raises(InvalidImageName):
        parse_image_filename(name)


def test_s3_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="IMAGEGEN_S3_BUCKET"):
        ImageStorageSettings(storage_backend="s3")


async def check_store(store: ImageStore) -> None:
    image_id = new_job_id()
    data = b"\x89PNG fake image bytes " * 1000
    stored = await store.put(image_id, data, "image/png")
    assert (stored.image_id, stored.filename, stored.size_bytes) == (image_id, f"{image_id}.png", len(data))
    assert stored.etag.startswith('"') and stored.etag.endswith('"')

    found = await store.get(f"{image_id}.png")
    assert found is not None
    assert found.data == data
    assert found.info == stored
    assert await store.get(f"{image_id}.webp") is None  # another format: another file
    assert await store.info(f"{image_id}.png") == stored  # without the bytes
    assert await store.info(f"{image_id}.webp") is None
    with pytest.raises(InvalidImageName):
        await store.info("../secrets.png")
    assert await store.get(f"{new_job_id()}.png") is None
    with pytest.raises(InvalidImageName):
        await store.get("../secrets.png")
    with pytest.raises(InvalidImageName):
        await store.put("../x", data, "image/png")

    other = await store.put(new_job_id(), data + b"!", "image/png")
    assert other.etag != stored.etag
    again = await store.put(image_id, data, "image/png")  # a redelivered job stores the same image again
    assert again.etag == stored.etag
    assert await store.ready()


async def test_nats_object_store(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with open_image_store(ImageStorageSettings(), nc) as store:
            await check_store(store)
    finally:
        await nc.close()


async def test_a_burst_of_nats_info_reads_makes_no_consumers(nats_server: NatsServer) -> None:
    """``info`` (the generator asks it of every redelivered job) reads the object's meta message; a
    ``get`` makes a consumer each time, and a burst of those ran into JetStream's consumer limit."""
    nc = await nats.connect(nats_server.url)
    watcher = await nats.connect(nats_server.url)
    created: list[str] = []

    async def seen(msg: Msg) -> None:
        created.append(msg.subject)

    try:
        await watcher.subscribe("$JS.API.CONSUMER.CREATE.>", cb=seen)
        await watcher.flush()
        async with open_image_store(ImageStorageSettings(), nc) as store:
            stored = await store.put("img_cccccccccccccccccccccccccc", b"image bytes", "image/png")
            infos = await asyncio.gather(*(store.info(stored.filename) for _ in range(200)))
            await nc.flush()
            await watcher.flush()
            assert infos == [stored] * 200
            assert created == []
            await store.get(stored.filename)  # the watch does see what a get makes
            await nc.flush()
            await watcher.flush()
            assert len(created) == 1
    finally:
        await watcher.close()
        await nc.close()


async def test_nats_object_store_reads_a_multi_megabyte_image(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with open_image_store(ImageStorageSettings(), nc) as store:
            # 12 MB of distinct 128 KiB chunks, so that a chunk out of order or twice would show.
            big = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(400_000))
            stored = await store.put("img_bbbbbbbbbbbbbbbbbbbbbbbbbb", big, "image/webp")
            found = await store.get("img_bbbbbbbbbbbbbbbbbbbbbbbbbb.webp")
            assert found is not None
            assert found.data == big
            assert found.info.size_bytes == len(big)
            assert found.info.etag == stored.etag == strong_etag(big)
    finally:
        await nc.close()


async def test_a_nats_read_whose_chunks_never_come_times_out(nats_server: NatsServer) -> None:
    """An object whose chunks are gone (lost, or a stream that does not deliver them): nats-py would
    wait for them forever; the store gives up after its read timeout."""
    nc = await nats.connect(nats_server.url)
    try:
        store = await NatsImageStore.open(nc, read_timeout=0.5)
        image_id = new_job_id()
        await store.put(image_id, b"\x89PNG" * 100_000, "image/png")
        js = nc.jetstream()
        info = await (await js.object_store(nats_names.IMAGES_BUCKET)).get_info(f"{image_id}.png")
        bucket = nats_names.IMAGES_BUCKET
        await js.purge_stream(f"OBJ_{bucket}", subject=f"$O.{bucket}.C.{info.nuid}")
        async with asyncio.timeout(10):  # a guard for the test itself, not a measure
            with pytest.raises(TimeoutError):
                await store.get(f"{image_id}.png")
    finally:
        await nc.close()


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free port; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def s3_settings(moto_s3: str) -> AsyncIterator[ImageStorageSettings]:
    settings = ImageStorageSettings(
        storage_backend="s3",
        s3_bucket="imagegen-test",
        s3_endpoint_url=moto_s3,
        s3_region="us-east-1",
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=moto_s3,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ) as client:
        await client.create_bucket(Bucket="imagegen-test")
    yield settings


async def test_s3_store(s3_settings: ImageStorageSettings) -> None:
    async with open_image_store(s3_settings, None) as store:
        await check_store(store)
