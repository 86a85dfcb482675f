"""Billing's refusals in Google's rich error model, for the server that sends them and the clients that
read them.

A refusal is a ``google.rpc.Status`` carried in the ``grpc-status-details-bin`` trailer (grpcio-status):
a ``google.rpc.ErrorInfo`` whose ``reason`` names an ``imagegen.billing.v1.ErrorReason`` (without its
``ERROR_REASON_`` prefix) and whose ``metadata`` carries the numbers a client acts on, plus a
``google.rpc.BadRequest`` listing invalid fields. Clients switch on :attr:`RpcError.reason`, never on
the status code or the message text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagegen.billing.v1 import billing_service_pb2

ErrorReason = billing_service_pb2.ErrorReason
#: ``ErrorInfo.domain`` of every error billing sends.
ERROR_DOMAIN = "billing.imagegen"
_PREFIX = "ERROR_REASON_"

#: Metadata keys of ERROR_REASON_INSUFFICIENT_CREDITS.
REQUIRED_CREDITS = "required_credits"
AVAILABLE_CREDITS = "available_credits"
#: Metadata key of ERROR_REASON_ALREADY_SETTLED: the reservation's state ("captured", "released").
SETTLED_STATE = "state"


def reason_name(reason: ErrorReason.ValueType) -> str:
    """``ERROR_REASON_INSUFFICIENT_CREDITS`` → ``INSUFFICIENT_CREDITS`` (the ErrorInfo reason)."""
    return ErrorReason.Name(reason).removeprefix(_PREFIX)


def _reason_of(name: str) -> ErrorReason.ValueType:
    try:
        return ErrorReason.Value(_PREFIX + name)
    except ValueError:  # a reason newer than this build
        return ErrorReason.ERROR_REASON_UNSPECIFIED


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class RpcError:
    """What a client needs of a refusal: the status code, the reason, its metadata and bad fields."""

    code: grpc.StatusCode
    message: str
    reason: ErrorReason.ValueType = ErrorReason.ERROR_REASON_UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()

    def number(self, key: str) -> int:
        """An integer of the metadata (0 when missing or not a number)."""
        try:
            return int(self.metadata.get(key, "0"))
        except ValueError:
            return 0


def to_status(
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason.ValueType,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[FieldViolation] = (),
) -> grpc.Status:
    """A ``grpc.Status`` to abort an RPC with (``context.abort_with_status``)."""
    details: list[Any] = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=reason_name(reason), domain=ERROR_DOMAIN, metadata=dict(metadata or {})
        )
    )
    details.append(info)
    if violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in violations
                ]
            )
        )
        details.append(bad_request)
    status = status_pb2.Status(code=_code_number(code), message=message, details=details)
    return rpc_status.to_status(status)


def _code_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number if number in code_pb2.Code.values() else code_pb2.UNKNOWN


def from_error(error: grpc.RpcError) -> RpcError:
    """The rich error of a failed call (a plain one when the server sent no details)."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that contradict the status line: trust the status line
        status = None
    if status is None:
        return RpcError(code=code, message=message)
    reason: ErrorReason.ValueType = ErrorReason.ERROR_REASON_UNSPECIFIED
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            reason = _reason_of(info.reason)
            metadata = dict(info.metadata)
        elif detail.Unpack(bad_request):
            violations.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
    return RpcError(
        code=code, message=message, reason=reason, metadata=metadata, violations=tuple(violations)
    )
