"""The NATS users of every service against a real nats-server: each does its own work, and no more."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError

from imagegen_cli.nats_embedded import nats_server_binary
from imagegen_common import nats_names as n
from imagegen_common.ids import new_job_id
from imagegen_common.images import NatsImageStore
from imagegen_common.jetstream import ensure_key_value, ensure_stream
from imagegen_common.nats_auth import ROLES, Role, authorization_block, password_variable
from imagegen_testing.net import free_port, wait_for_port

PASSWORDS = {role: f"secret-{role.value}-0123456789" for role in Role}


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + authorization_block(PASSWORDS)
    )
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, 15)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class Violations:
    """Collects the permission violations the server reports to one client."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.event = asyncio.Event()

    async def record(self, error: Exception) -> None:
        self.seen.append(str(error))
        self.event.set()

    async def wait(self) -> str:
        await asyncio.wait_for(self.event.wait(), timeout=5)
        return self.seen[-1]


async def _connect(url: str, role: Role, violations: Violations | None = None) -> Client:
    return await nats.connect(
        url,
        user=role.value,
        password=PASSWORDS[role],
        error_cb=(violations or Violations()).record,
        allow_reconnect=False,
    )


@pytest.fixture
async def clients(secured_nats: str) -> AsyncIterator[dict[Role, tuple[Client, Violations]]]:
    opened: dict[Role, tuple[Client, Violations]] = {}
    for role in Role:
        violations = Violations()
        opened[role] = (await _connect(secured_nats, role, violations), violations)
    try:
        yield opened
    finally:
        for client, _ in opened.values():
            await client.close()


async def test_the_block_names_every_role_and_reads_passwords_from_the_environment() -> None:
    block = authorization_block()
    for role in Role:
        assert f"user: {role.value}" in block
        assert f"$IMAGEGEN_NATS_{role.name}_PASSWORD" in block
    assert set(ROLES) == set(Role)


async def test_a_client_without_credentials_is_refused(secured_nats: str) -> None:
    anonymous = Client()
    try:
        with pytest.raises(nats.errors.Error, match="(?i)authorization"):
            await anonymous.connect(secured_nats, allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        await anonymous.close()


async def test_each_service_does_its_own_work(clients: dict[Role, tuple[Client, Violations]]) -> None:
    gateway, generator, billing = (clients[role][0] for role in (Role.GATEWAY, Role.GENERATOR, Role.BILLING))
    gjs, wjs, bjs = gateway.jetstream(), generator.jetstream(), billing.jetstream()

    # Start-up: each service ensures the streams and buckets it uses.
    for js in (gjs, wjs):
        await ensure_stream(js, n.jobs_stream_config())
        await ensure_stream(js, n.events_stream_config())
        await ensure_key_value(js, n.cancelled_jobs_kv_config())
        await ensure_key_value(js, n.generators_kv_config())
    await ensure_stream(bjs, n.events_stream_config())
    idempotency = await ensure_key_value(gjs, n.idempotency_kv_config())
    rate_limits = await ensure_key_value(gjs, n.rate_limits_kv_config())
    generator_images = await NatsImageStore.open(generator)
    gateway_images = await NatsImageStore.open(gateway)

    # The gateway queues a job, waits on its reply subject, uses its buckets.
    replies = await gateway.subscribe(n.reply_wildcard("gw1"))
    await gjs.publish(n.JOBS_SUBJECT, b"job-1", headers={"Nats-Msg-Id": "job-1"})
    await gateway.publish(n.CANCEL_SUBJECT, b"cancel")
    await idempotency.create("key", b"claim")
    await idempotency.update("key", b"answer", last=(await idempotency.get("key")).revision)
    await rate_limits.put("tok", b"1")
    cancelled = await gjs.key_value(n.CANCELLED_JOBS_BUCKET)
    await cancelled.put("job-0", b"")

    # A generator takes the job, reports on the reply subject, stores the image, publishes the outcome.
    await wjs.add_consumer(
        n.JOBS_STREAM, ConsumerConfig(durable_name=n.GENERATOR_CONSUMER, ack_policy=AckPolicy.EXPLICIT)
    )
    jobs = await wjs.pull_subscribe_bind(n.GENERATOR_CONSUMER, n.JOBS_STREAM)
    [job] = await jobs.fetch(1, timeout=5)
    await job.in_progress()
    await generator.subscribe(n.CANCEL_SUBJECT)
    await (await wjs.key_value(n.GENERATORS_BUCKET)).put("replica-1", b'{"provider": "local"}')
    assert await (await wjs.key_value(n.CANCELLED_JOBS_BUCKET)).get("job-0")
    stored = await generator_images.put(new_job_id(), b"\x89PNG-bytes", "image/png")
    await generator.publish(n.reply_subject("gw1", "job-1"), b"progress")
    await wjs.publish(n.OUTCOME_SUBJECT, b"outcome", headers={"Nats-Msg-Id": "outcome-job-1"})
    await wjs.publish(n.STARTED_SUBJECT, b"started")
    await job.ack()
    assert (await replies.next_msg(timeout=5)).data == b"progress"

    # The gateway serves the image and reads the live generators; its webhook consumer reads outcomes.
    try:
        image = await gateway_images.get(stored.filename)
    except TimeoutError:
        raise AssertionError(clients[Role.GATEWAY][1].seen) from None
    assert image is not None
    assert image.data == b"\x89PNG-bytes"
    assert await (await gjs.key_value(n.GENERATORS_BUCKET)).get("replica-1")
    await gjs.add_consumer(
        n.EVENTS_STREAM, ConsumerConfig(durable_name=n.WEBHOOKS_CONSUMER, ack_policy=AckPolicy.EXPLICIT)
    )
    webhooks = await gjs.pull_subscribe_bind(n.WEBHOOKS_CONSUMER, n.EVENTS_STREAM)
    await (await webhooks.fetch(1, timeout=5))[0].ack()

    # Billing tells every gateway at once that a token was revoked.
    revocations = await gateway.subscribe(n.REVOCATIONS_SUBJECT)
    await gateway.flush()
    await billing.publish(n.REVOCATIONS_SUBJECT, b"revoked")
    assert (await revocations.next_msg(timeout=5)).data == b"revoked"

    # Billing settles from the outcome events.
    await bjs.add_consumer(
        n.EVENTS_STREAM,
        ConsumerConfig(durable_name=n.BILLING_SETTLEMENT_CONSUMER, ack_policy=AckPolicy.EXPLICIT),
    )
    settlement = await bjs.pull_subscribe_bind(n.BILLING_SETTLEMENT_CONSUMER, n.EVENTS_STREAM)
    [event] = await settlement.fetch(1, timeout=5)
    assert event.data == b"outcome"
    await event.ack()

    for role, (_, violations) in clients.items():
        assert violations.seen == [], role


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        (Role.GATEWAY, n.OUTCOME_SUBJECT),  # an outcome settles credits: only a generator's counts
        (Role.BILLING, n.OUTCOME_SUBJECT),
        (Role.GATEWAY, n.STARTED_SUBJECT),
        (Role.GENERATOR, n.JOBS_SUBJECT),  # only a gateway queues (and so pays for) a job
        (Role.BILLING, n.JOBS_SUBJECT),
        (Role.BILLING, n.CANCEL_SUBJECT),
        (Role.GATEWAY, f"$JS.API.STREAM.DELETE.{n.EVENTS_STREAM}"),
        (Role.GENERATOR, f"$JS.API.STREAM.PURGE.{n.JOBS_STREAM}"),
        (Role.GATEWAY, f"$JS.API.CONSUMER.DELETE.{n.EVENTS_STREAM}.{n.BILLING_SETTLEMENT_CONSUMER}"),
        (Role.BILLING, f"$KV.{n.IDEMPOTENCY_BUCKET}.key"),
        (Role.GATEWAY, n.REVOCATIONS_SUBJECT),  # a forged revocation would lock users out
        (Role.GENERATOR, n.REVOCATIONS_SUBJECT),
    ],
)
async def test_a_service_cannot_publish_what_is_not_its_own(
    clients: dict[Role, tuple[Client, Violations]], role: Role, subject: str
) -> None:
    client, violations = clients[role]
    await client.publish(subject, b"forged")
    await client.flush()
    message = await violations.wait()
    assert "permissions violation" in message.lower()
    assert subject.lower() in message.lower()


async def test_a_forged_outcome_never_reaches_the_events_stream(
    clients: dict[Role, tuple[Client, Violations]],
) -> None:
    gateway = clients[Role.GATEWAY][0]
    billing_js = clients[Role.BILLING][0].jetstream()
    await ensure_stream(billing_js, n.events_stream_config())
    with pytest.raises((TimeoutError, nats.errors.Error, APIError)):
        await gateway.jetstream().publish(n.OUTCOME_SUBJECT, b"forged", timeout=1)
    assert (await billing_js.stream_info(n.EVENTS_STREAM)).state.messages == 0


@pytest.mark.parametrize(
    ("role", "subject"), [(Role.BILLING, n.REPLY_PREFIX + ".gw.job"), (Role.GENERATOR, "x")]
)
async def test_a_service_cannot_listen_to_what_is_not_its_own(
    clients: dict[Role, tuple[Client, Violations]], role: Role, subject: str
) -> None:
    client, violations = clients[role]
    await client.subscribe(subject)
    await client.flush()
    assert "permissions violation" in (await violations.wait()).lower()


async def test_the_shipped_block_takes_the_passwords_from_the_environment(tmp_path: Path) -> None:
    """compose and Kubernetes ship the block with ``$IMAGEGEN_NATS_<ROLE>_PASSWORD`` references; the
    server expands them from its environment, and each service connects with its own."""
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\n" + authorization_block())
    # Values as the docs say to make them: random, starting with a letter (a value that looks like a
    # number or starts with "-" is not read as a string by nats-server).
    passwords = {role: "s" + secrets.token_hex(24) for role in Role}
    env = {**os.environ, **{password_variable(role): passwords[role] for role in Role}}
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=log, stderr=log, env=env)
    try:
        wait_for_port("127.0.0.1", port, 15)
        for role in Role:
            client = await nats.connect(
                f"nats://127.0.0.1:{port}", user=role.value, password=passwords[role], allow_reconnect=False
            )
            await client.close()
        wrong = Client()
        try:
            with pytest.raises(nats.errors.Error, match="(?i)authorization"):
                await wrong.connect(
                    f"nats://127.0.0.1:{port}",
                    user="billing",
                    password=passwords[Role.GATEWAY],
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                )
        finally:
            await wrong.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
