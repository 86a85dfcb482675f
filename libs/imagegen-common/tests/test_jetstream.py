from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, KeyValueConfig, StorageType

from imagegen_common.jetstream import SlotPuller, ensure_key_value, ensure_stream
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


async def test_a_slot_puller_holds_only_what_it_works_on_and_hands_back_on_stop(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="WORK", subjects=["work.>"])
        await js.add_consumer("WORK", ConsumerConfig(durable_name="workers", ack_wait=30))
        for i in range(10):
            await js.publish("work.item", str(i).encode())
        started: list[Msg] = []
        finish = asyncio.Event()

        async def handle(msg: Msg) -> None:
            started.append(msg)
            try:
                await finish.wait()
            except asyncio.CancelledError:
                await msg.nak()
                raise
            await msg.ack()

        sub = await js.pull_subscribe_bind(durable="workers", stream="WORK")
        puller = SlotPuller(sub, handle, concurrency=3, fetch_timeout=0.2, name="test")
        puller.start()
        while len(started) < 3:
            await asyncio.sleep(0.01)
        info = await js.consumer_info("WORK", "workers")
        assert info.num_ack_pending == 3  # nothing fetched beyond the three being worked on
        assert await puller.stop(drain_timeout=0.05) == 3
        # handed back, not left to their ack wait: another worker gets all ten at once
        again: list[Msg] = []
        while len(again) < 10:  # a fetch may answer with part of a batch
            again += await sub.fetch(batch=10 - len(again), timeout=5)
        assert sorted(m.metadata.num_delivered for m in again) == [1] * 7 + [2] * 3
    finally:
        await nc.close()
