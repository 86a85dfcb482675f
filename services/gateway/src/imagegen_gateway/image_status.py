"""Where an image stands, read from billing's reservation of its job (no transport here).

HELD without a start time is queued, HELD with one is processing (a generator took it), CAPTURED is
completed and RELEASED is failed, with the job's error or the reason its credits were released.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from imagegen_gateway.domain import ErrorCode, ReleaseReason, Reservation, ReservationState


class ImageStatus(enum.IntEnum):
    QUEUED = 0
    PROCESSING = 1
    COMPLETED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class ImageFailure:
    code: str
    message: str


def status_of(reservation: Reservation) -> ImageStatus:
    if reservation.state is ReservationState.CAPTURED:
        return ImageStatus.COMPLETED
    if reservation.state is ReservationState.RELEASED:
        return ImageStatus.FAILED
    return ImageStatus.PROCESSING if reservation.start_time is not None else ImageStatus.QUEUED


_NOT_IN_TIME = ImageFailure("expired", "The image was not generated in time; its credits were released.")
_NOT_GENERATED = "The image could not be generated."
#: Releases that did not come from a job's outcome, as error codes and sentences.
_RELEASES: dict[ReleaseReason, ImageFailure] = {
    ReleaseReason.EXPIRED: _NOT_IN_TIME,
    ReleaseReason.TIMEOUT: _NOT_IN_TIME,
    ReleaseReason.CANCELLED: ImageFailure(
        "cancelled", "The generation was cancelled; its credits were released."
    ),
    ReleaseReason.NOT_QUEUED: ImageFailure(
        "unavailable", "The job queue was unavailable; no credits were charged."
    ),
    ReleaseReason.OPERATOR: ImageFailure("failed", "The image was not generated (released by an operator)."),
    ReleaseReason.FAILED: ImageFailure(ErrorCode.UNSPECIFIED.value, _NOT_GENERATED),
}


def failure_of(reservation: Reservation) -> ImageFailure | None:
    """Why an image failed (None unless it did): the job's error, or why its credits were released."""
    if status_of(reservation) is not ImageStatus.FAILED:
        return None
    result = reservation.result
    if result is not None and result.error is not None:
        return ImageFailure(result.error.value, result.error_message or _NOT_GENERATED)
    return _RELEASES.get(
        reservation.release_reason, ImageFailure("failed", "The image was not generated (released).")
    )
