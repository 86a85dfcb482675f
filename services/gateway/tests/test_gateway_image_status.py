"""Image status and errors as the REST API reads them from billing's reservation (mapped by ``wire``)."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_gateway import domain, wire
from imagegen_gateway.image_status import ImageFailure, ImageStatus, failure_of, status_of
from imagegen_gateway.presentation import image

Reservation = resources_pb2.Reservation


def _reservation(state: Reservation.State.ValueType, **fields: object) -> domain.Reservation:
    reservation = Reservation(job_id="img_1", account_id="acc_1", amount=3, state=state, **fields)  # type: ignore[arg-type]
    reservation.create_time.FromSeconds(1_800_000_000)
    return wire.reservation(reservation)


def _stamp(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(seconds)
    return stamp


def test_the_status_follows_the_reservation() -> None:
    assert status_of(_reservation(Reservation.STATE_HELD)) is ImageStatus.QUEUED
    assert status_of(_reservation(Reservation.STATE_HELD, start_time=_stamp(1))) is ImageStatus.PROCESSING
    assert status_of(_reservation(Reservation.STATE_CAPTURED)) is ImageStatus.COMPLETED
    assert status_of(_reservation(Reservation.STATE_RELEASED)) is ImageStatus.FAILED
    assert [s.value for s in ImageStatus] == [0, 1, 2, 3]


LATE = "The image was not generated in time; its credits were released."
REJECTED = resources_pb2.JobResult(error=jobs_pb2.ERROR_CODE_CONTENT_REJECTED, error_message="No.")
PROVIDER_ERROR = resources_pb2.JobResult(error=jobs_pb2.ERROR_CODE_PROVIDER_ERROR)


@pytest.mark.parametrize(
    ("reason", "result", "failure"),
    [
        (resources_pb2.RELEASE_REASON_FAILED, REJECTED, ImageFailure("content_rejected", "No.")),
        (resources_pb2.RELEASE_REASON_EXPIRED, None, ImageFailure("expired", LATE)),
        (resources_pb2.RELEASE_REASON_TIMEOUT, None, ImageFailure("expired", LATE)),
        (
            resources_pb2.RELEASE_REASON_CANCELLED,
            None,
            ImageFailure("cancelled", "The generation was cancelled; its credits were released."),
        ),
        (
            resources_pb2.RELEASE_REASON_NOT_QUEUED,
            None,
            ImageFailure("unavailable", "The job queue was unavailable; no credits were charged."),
        ),
        (
            resources_pb2.RELEASE_REASON_FAILED,
            PROVIDER_ERROR,
            ImageFailure("provider_error", "The image could not be generated."),
        ),
        (
            resources_pb2.RELEASE_REASON_OPERATOR,
            None,
            ImageFailure("failed", "The image was not generated (released by an operator)."),
        ),
    ],
)
def test_a_failure_says_why(
    reason: resources_pb2.ReleaseReason.ValueType,
    result: resources_pb2.JobResult | None,
    failure: ImageFailure,
) -> None:
    reservation = _reservation(
        Reservation.STATE_RELEASED, release_reason=reason, release_detail="text is never read", result=result
    )
    assert failure_of(reservation) == failure
    assert failure_of(_reservation(Reservation.STATE_CAPTURED)) is None


def test_the_image_object() -> None:
    reservation = _reservation(
        Reservation.STATE_CAPTURED,
        start_time=_stamp(1_800_000_001),
        details=resources_pb2.JobDetails(model="flux-1", width=768, height=512),
        result=resources_pb2.JobResult(
            image_url="http://x/images/img_1.png", finish_time=_stamp(1_800_000_003)
        ),
    )
    shown = image(reservation).model_dump(mode="json")
    assert shown == {
        "id": "img_1",
        "status": 2,
        "status_name": "completed",
        "model": "flux-1",
        "width": 768,
        "height": 512,
        "url": "http://x/images/img_1.png",
        "credits_used": 3,
        "error": None,
        "created_at": "2027-01-15T08:00:00.000000Z",
        "started_at": "2027-01-15T08:00:01.000000Z",
        "completed_at": "2027-01-15T08:00:03.000000Z",
        "webhook": None,
    }
    failed = image(
        _reservation(Reservation.STATE_RELEASED, release_reason=resources_pb2.RELEASE_REASON_EXPIRED)
    )
    assert (failed.url, failed.credits_used, failed.status_name) == (None, 0, "failed")
