"""Who may do what on NATS: one user per service, with the subjects it needs and nothing more.

An outcome event settles credits, so only a generator may publish one; only a gateway queues jobs;
billing only consumes events. Every NATS config we ship (``imagegen dev``'s embedded server, compose,
Kubernetes) renders its ``authorization`` block from :data:`ROLES`, so the permissions are written
once, here, beside the subject names they grant.

JetStream is used through its API subjects (``$JS.API.…``), so each role also gets the API calls of
the streams, consumers and buckets it uses — never deleting or purging another service's stream.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from imagegen_common import nats_names as n


class Role(enum.StrEnum):
    """A service's NATS identity; the value is its user name."""

    GATEWAY = "gateway"
    GENERATOR = "generator"
    BILLING = "billing"


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _stream_admin(stream: str) -> tuple[str, ...]:
    """Creating (or updating to the shipped config) and reading a stream a service ensures at start."""
    return (
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
    )


def _kv_read(bucket: str) -> tuple[str, ...]:
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        # watching keys (the gateway lists live generators) is an ordered consumer of the bucket,
        # whose state nats-py asks for when its heartbeats stop (found by the e2e tests with auth on)
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
    )


def _kv_write(bucket: str) -> tuple[str, ...]:
    return (*_stream_admin(f"KV_{bucket}"), *_kv_read(bucket), f"$KV.{bucket}.>")


def _pull_consumer(stream: str, durable: str) -> tuple[str, ...]:
    return (
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        # ack, nak, in-progress and term are publishes to the message's reply subject
        f"$JS.ACK.{stream}.{durable}.>",
    )


_OBJECTS = f"OBJ_{n.IMAGES_BUCKET}"
_OBJECT_READ = (
    f"$JS.API.STREAM.INFO.{_OBJECTS}",
    f"$JS.API.STREAM.MSG.GET.{_OBJECTS}",
    f"$JS.API.DIRECT.GET.{_OBJECTS}.>",
    f"$JS.API.CONSUMER.CREATE.{_OBJECTS}",
    f"$JS.API.CONSUMER.CREATE.{_OBJECTS}.>",
    f"$JS.API.CONSUMER.DELETE.{_OBJECTS}.>",
    f"$JS.API.CONSUMER.INFO.{_OBJECTS}.>",
    # an object is read through an ordered consumer, whose flow control the reader answers
    f"$JS.FC.{_OBJECTS}.>",
)
_OBJECT_WRITE = (*_stream_admin(_OBJECTS), *_OBJECT_READ, f"$O.{n.IMAGES_BUCKET}.>")
#: Every client: account info, stream lookup by subject, and the replies of its own requests
#: (JetStream acks and API answers).
_EVERYONE_PUBLISH = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")
_EVERYONE_SUBSCRIBE = ("_INBOX.>",)

ROLES: Mapping[Role, Permissions] = {
    Role.GATEWAY: Permissions(
        publish=(
            *_EVERYONE_PUBLISH,
            n.JOBS_SUBJECT,
            n.CANCEL_SUBJECT,
            *_stream_admin(n.JOBS_STREAM),
            *_stream_admin(n.EVENTS_STREAM),
            *_pull_consumer(n.EVENTS_STREAM, n.WEBHOOKS_CONSUMER),
            *_kv_write(n.CANCELLED_JOBS_BUCKET),
            *_kv_write(n.IDEMPOTENCY_BUCKET),
            *_kv_write(n.RATE_LIMITS_BUCKET),
            *_stream_admin(f"KV_{n.GENERATORS_BUCKET}"),
            *_kv_read(n.GENERATORS_BUCKET),
            *_OBJECT_WRITE,  # binds to (or creates) the bucket at start; then only reads
        ),
        subscribe=(*_EVERYONE_SUBSCRIBE, f"{n.REPLY_PREFIX}.>", n.REVOCATIONS_SUBJECT),
    ),
    Role.GENERATOR: Permissions(
        publish=(
            *_EVERYONE_PUBLISH,
            n.OUTCOME_SUBJECT,
            n.STARTED_SUBJECT,
            f"{n.REPLY_PREFIX}.>",
            *_stream_admin(n.JOBS_STREAM),
            *_stream_admin(n.EVENTS_STREAM),
            *_pull_consumer(n.JOBS_STREAM, n.GENERATOR_CONSUMER),
            *_kv_write(n.CANCELLED_JOBS_BUCKET),
            *_kv_write(n.GENERATORS_BUCKET),
            *_OBJECT_WRITE,
            f"$JS.API.STREAM.PURGE.{_OBJECTS}",  # replacing an object purges its old chunks
        ),
        subscribe=(*_EVERYONE_SUBSCRIBE, n.CANCEL_SUBJECT, n.MAX_DELIVERIES_ADVISORY),
    ),
    Role.BILLING: Permissions(
        publish=(
            *_EVERYONE_PUBLISH,
            *_stream_admin(n.EVENTS_STREAM),
            *_pull_consumer(n.EVENTS_STREAM, n.BILLING_SETTLEMENT_CONSUMER),
            n.REVOCATIONS_SUBJECT,  # only billing, which owns tokens, may tell gateways to drop one
        ),
        subscribe=_EVERYONE_SUBSCRIBE,
    ),
}


def password_variable(role: Role) -> str:
    """The environment variable that holds a role's password, in the server's and the service's env."""
    return f"IMAGEGEN_NATS_{role.name}_PASSWORD"


def authorization_block(passwords: Mapping[Role, str] | None = None) -> str:
    """The ``authorization { users = [...] }`` block of a nats-server config.

    With ``passwords`` the values are written in (``imagegen dev``'s generated credentials);
    without, each is the environment variable :func:`password_variable` names, which the server
    expands when it loads the config (compose and Kubernetes take them from secrets).
    """
    users = []
    for role, permissions in ROLES.items():
        password = json.dumps(passwords[role]) if passwords else f"${password_variable(role)}"
        users.append(
            "    {\n"
            f"      user: {role.value}\n"
            f"      password: {password}\n"
            "      permissions: {\n"
            f"        publish: {{ allow: {json.dumps(list(permissions.publish))} }}\n"
            f"        subscribe: {{ allow: {json.dumps(list(permissions.subscribe))} }}\n"
            "      }\n"
            "    }"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"
