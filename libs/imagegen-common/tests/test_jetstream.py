from __future__ import annotations

import nats
from nats.js.api import KeyValueConfig, StorageType

from imagegen_common.jetstream import ensure_key_value, ensure_stream
from imagegen_common.nats_names import jobs_stream_config
from imagegen_testing.nats_server import NatsServer


async def test_a_bucket_is_created_then_brought_to_a_changed_config(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        first = KeyValueConfig(bucket="things", history=1, ttl=60.0, storage=StorageType.FILE)
        bucket = await ensure_key_value(js, first)
        await bucket.put("a", b"1")
        assert (await (await ensure_key_value(js, first)).get("a")).value == b"1"  # a repeat changes nothing

        changed = KeyValueConfig(bucket="things", history=3, ttl=3600.0, storage=StorageType.FILE)
        again = await ensure_key_value(js, changed)
        config = (await js.stream_info("KV_things")).config
        assert (config.max_age, config.max_msgs_per_subject) == (3600.0, 3)
        assert (await again.get("a")).value == b"1"  # kept its data
    finally:
        await nc.close()


async def test_a_stream_is_created_once_and_updated_in_place(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, jobs_stream_config())
        await js.publish("imagegen.jobs.generate", b"job")
        await ensure_stream(js, jobs_stream_config())
        assert (await js.stream_info("IMAGEGEN_JOBS")).state.messages == 1
    finally:
        await nc.close()
