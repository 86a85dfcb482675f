"""The protobuf ↔ domain mapping: every enum value of the contract has its domain twin, and a job's
result survives the trip to billing and back."""

from __future__ import annotations

from datetime import UTC, datetime

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_gateway import wire
from imagegen_gateway.domain import ErrorCode, JobResult, ReleaseReason, SettleOutcome


def test_every_error_code_maps_by_its_enum_not_its_text() -> None:
    codes = [wire.error_code(number) for number in jobs_pb2.ErrorCode.values()]
    assert set(codes) == set(ErrorCode)
    assert [wire.error_code_number(code) for code in codes] == list(jobs_pb2.ErrorCode.values())
    assert wire.error_code(jobs_pb2.ERROR_CODE_PROVIDER_UNAVAILABLE).value == "provider_unavailable"
    assert wire.error_code(999) is ErrorCode.UNSPECIFIED  # a code newer than this build


def test_every_release_reason_and_settle_outcome_maps() -> None:
    assert {wire.release_reason_number(r) for r in ReleaseReason} == set(resources_pb2.ReleaseReason.values())
    outcomes = {wire.settle_outcome(n) for n in billing_service_pb2.SettleOutcome.values()}
    assert outcomes == set(SettleOutcome)


def test_a_job_result_survives_the_trip_to_billing() -> None:
    finished = datetime(2026, 12, 1, 9, 30, 1, 250000, tzinfo=UTC)
    failure = JobResult(error=ErrorCode.CONTENT_REJECTED, error_message="No.", finish_time=finished)
    image = JobResult(image_url="http://x/i.png", mime_type="image/png", width=8, height=8)
    for result in (failure, image):
        assert wire.job_result(wire.job_result_message(result)) == result


def test_an_outcome_from_nats_is_a_result() -> None:
    outcome = jobs_pb2.JobOutcome(
        job_id="img_a", failure=jobs_pb2.JobFailure(code=jobs_pb2.ERROR_CODE_INTERNAL, message="oops")
    )
    assert wire.outcome_result(outcome) == JobResult(error=ErrorCode.INTERNAL, error_message="oops")
