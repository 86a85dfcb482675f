"""protobuf Timestamp and Duration values, from and to Python's, in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def from_datetime(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_seconds(seconds: float) -> Timestamp:
    """A Timestamp of a Unix time in (fractional) seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def now() -> Timestamp:
    return from_datetime(datetime.now(UTC))


def seconds_of(stamp: Timestamp) -> float:
    """The Unix time of a Timestamp, in seconds."""
    return stamp.ToNanoseconds() / 1e9


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(max(0, round(seconds * 1e9)))
    return value
