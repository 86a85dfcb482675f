"""Create-or-update of the JetStream streams and buckets a service needs, from nats_names' configs.

Connecting and consuming are in ``imagegen_common.messaging``."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import KV_STREAM_TEMPLATE
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates the stream, or brings an existing one to ``config`` (idempotent, safe to race)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # another replica created it first: fall through to the update
            await js.stream_info(config.name)
    await js.update_stream(config)


async def ensure_key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket, created on first use; an existing one is brought to ``config``'s replicas, TTL and
    history (a deployment that grows from one NATS server to three, say)."""
    try:
        bucket = await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except BadRequestError:  # another replica created it first
            bucket = await js.key_value(config.bucket)
    stream = (await js.stream_info(KV_STREAM_TEMPLATE.format(bucket=config.bucket))).config
    wanted = {
        "num_replicas": config.replicas,
        "max_age": config.ttl or 0.0,
        "max_msgs_per_subject": config.history,
    }
    if any((getattr(stream, field) or 0) != value for field, value in wanted.items()):
        await js.update_stream(stream.evolve(**wanted))
    return bucket
