"""Create-or-update of the JetStream streams and buckets a service needs, from nats_names' configs."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
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
    """The bucket, created on first use."""
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)
