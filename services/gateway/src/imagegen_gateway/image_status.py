"""Where an image stands, read from billing's reservation of its job (no transport here).

HELD without a start time is queued, HELD with one is processing (a generator took it), CAPTURED is
completed and RELEASED is failed, with the job's error or the reason its credits were released.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from imagegen.billing.v1 import resources_pb2

Reservation = resources_pb2.Reservation


class ImageStatus(enum.IntEnum):
    QUEUED = 0
    PROCESSING = 1
    COMPLETED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class ImageFailure:
    code: str
    message: str


def status_of(reservation: resources_pb2.Reservation) -> ImageStatus:
    if reservation.state == Reservation.STATE_CAPTURED:
        return ImageStatus.COMPLETED
    if reservation.state == Reservation.STATE_RELEASED:
        return ImageStatus.FAILED
    return ImageStatus.PROCESSING if reservation.HasField("start_time") else ImageStatus.QUEUED


#: Release reasons that did not come from a job's outcome, as error codes and sentences.
_RELEASES = (
    ("expired", "expired", "The image was not generated in time; its credits were released."),
    ("timeout", "expired", "The image was not generated in time; its credits were released."),
    ("cancel", "cancelled", "The generation was cancelled; its credits were released."),
    ("not queued", "unavailable", "The job queue was unavailable; no credits were charged."),
)


def failure_of(reservation: resources_pb2.Reservation) -> ImageFailure | None:
    """Why an image failed (None unless it did): the job's error, or why its credits were released."""
    if status_of(reservation) is not ImageStatus.FAILED:
        return None
    result = reservation.result
    if result.error_code:
        return ImageFailure(result.error_code, result.error_message or "The image could not be generated.")
    reason = reservation.release_reason
    for marker, code, message in _RELEASES:
        if marker in reason.lower():
            return ImageFailure(code, message)
    if reason.startswith("failed: "):
        return ImageFailure(reason.removeprefix("failed: ") or "failed", "The image could not be generated.")
    return ImageFailure("failed", f"The image was not generated ({reason or 'released'}).")
