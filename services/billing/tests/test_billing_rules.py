"""Pure rules: tokens, ledger rules, settings, the catalog as billing serves it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing import convert, tokens
from imagegen_billing.config import BillingSettings, admin_token_problem, normalise_database_url
from imagegen_billing.domain import (
    AlreadySettledError,
    EntryKind,
    ErrorReason,
    FailedPreconditionError,
    InvalidArgumentError,
    JobDetails,
    JobError,
    JobIdReusedError,
    JobResult,
    ReleaseReason,
    Reservation,
    ReservationState,
    ReserveRequest,
    SettleOutcome,
    check_batch,
    check_grant,
    check_job_id,
    check_release_reason,
    check_repeat,
    check_reserve_request,
    failure_release_reason,
    normalise_email,
    settle_outcome,
    settle_target,
    shown,
)
from imagegen_billing.interceptors import status_code
from imagegen_billing.settlement import failure_code, outcome_result
from imagegen_common.catalog import SizeOutOfRangeError, UnknownModelError, load_catalog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _reservation(state: ReservationState = ReservationState.HELD, amount: int = 5) -> Reservation:
    return Reservation(
        job_id="img_1",
        account_id="acc_1",
        amount=amount,
        state=state,
        create_time=T0,
        expire_time=T0,
        settle_time=None,
        details=JobDetails(),
    )


def test_tokens_are_prefixed_random_and_stored_only_as_a_hash() -> None:
    issued = {tokens.generate_token() for _ in range(100)}
    assert len(issued) == 100
    for token in issued:
        assert token.startswith("igk_")
        # base64url of 24 bytes: 32 characters, 192 bits
        assert len(token) == 4 + 32
        stored = tokens.hash_token(token)
        assert len(stored) == 64 and token not in stored
        assert tokens.hashes_match(stored, token)
        assert not tokens.hashes_match(stored, token + "x")
        assert tokens.display_prefix(token) == token[:8]


def test_implausible_tokens_are_refused_before_any_lookup() -> None:
    assert tokens.plausible(tokens.generate_token())
    assert not tokens.plausible("")
    assert not tokens.plausible("sk_live_abc")
    assert not tokens.plausible("igk_" + "a" * 400)


def test_reserve_requests_need_an_account_a_job_and_a_positive_amount() -> None:
    check_reserve_request(ReserveRequest("acc_1", "img_1", 1))
    for bad, words in (
        (ReserveRequest("", "img_1", 1), "account_id"),
        (ReserveRequest("acc_1", "", 1), "job_id"),
        (ReserveRequest("acc_1", "img_1", 0), "amount must be positive, not 0"),
        (ReserveRequest("acc_1", "img_1", -3), "amount must be positive, not -3"),
    ):
        with pytest.raises(InvalidArgumentError, match=words):
            check_reserve_request(bad)


def test_a_batch_is_one_account_distinct_jobs_and_not_empty() -> None:
    assert check_batch([ReserveRequest("acc_1", "a", 1), ReserveRequest("acc_1", "b", 2)]) == "acc_1"
    with pytest.raises(InvalidArgumentError, match="at least one"):
        check_batch([])
    with pytest.raises(InvalidArgumentError, match="same account"):
        check_batch([ReserveRequest("acc_1", "a", 1), ReserveRequest("acc_2", "b", 1)])
    with pytest.raises(InvalidArgumentError, match="distinct"):
        check_batch([ReserveRequest("acc_1", "a", 1), ReserveRequest("acc_1", "a", 1)])
    with pytest.raises(InvalidArgumentError, match="at most 100"):
        check_batch([ReserveRequest("acc_1", f"j{i}", 1) for i in range(101)])


def test_a_repeat_must_ask_for_the_same_account_and_amount() -> None:
    existing = _reservation(amount=5)
    check_repeat(existing, ReserveRequest("acc_1", "img_1", 5))
    with pytest.raises(
        FailedPreconditionError, match="job img_1 already has a reservation for a different request"
    ):
        check_repeat(existing, ReserveRequest("acc_1", "img_1", 6))
    with pytest.raises(JobIdReusedError):
        check_repeat(existing, ReserveRequest("acc_2", "img_1", 5))


def test_settling_is_idempotent_one_way_and_a_conflict_the_other() -> None:
    held, captured, released = ReservationState.HELD, ReservationState.CAPTURED, ReservationState.RELEASED
    assert settle_outcome(held, captured) is SettleOutcome.CAPTURED
    assert settle_outcome(held, released) is SettleOutcome.RELEASED
    assert settle_outcome(captured, captured) is SettleOutcome.DUPLICATE
    assert settle_outcome(released, released) is SettleOutcome.DUPLICATE
    assert settle_outcome(released, captured) is SettleOutcome.CONFLICT
    assert settle_outcome(captured, released) is SettleOutcome.CONFLICT
    assert settle_outcome(None, captured) is SettleOutcome.UNKNOWN_JOB


def test_a_result_decides_capture_or_release() -> None:
    assert settle_target(JobResult(image_url="http://x/i.png")) is ReservationState.CAPTURED
    assert settle_target(JobResult(error=JobError.PROVIDER_ERROR)) is ReservationState.RELEASED


def test_a_job_stopped_for_its_submitter_is_released_as_cancelled_or_timed_out() -> None:
    assert failure_release_reason(JobError.CANCELLED) is ReleaseReason.CANCELLED
    assert failure_release_reason(JobError.DEADLINE_EXCEEDED) is ReleaseReason.TIMEOUT
    assert failure_release_reason(JobError.PROVIDER_ERROR) is ReleaseReason.FAILED
    assert failure_release_reason(None) is ReleaseReason.FAILED
    with pytest.raises(InvalidArgumentError) as refused:
        settle_target(JobResult())
    assert refused.value.field == "result"


def test_release_takes_a_reason_but_not_failed() -> None:
    assert check_release_reason(ReleaseReason.CANCELLED) is ReleaseReason.CANCELLED
    for reason in (None, ReleaseReason.FAILED):
        with pytest.raises(InvalidArgumentError) as refused:
            check_release_reason(reason)
        assert refused.value.field == "reason"


def test_ids_are_bounded_at_the_edge_and_in_messages() -> None:
    assert check_job_id("img_abc") == "img_abc"
    for bad in ("", "x" * 129, "img a", "img_\u00e9"):
        with pytest.raises(InvalidArgumentError) as refused:
            check_job_id(bad)
        assert refused.value.field == "job_id"
    assert shown("x" * 20_000) == "x" * 64 + "…"


def test_domain_enums_mirror_the_contract() -> None:
    """Every domain value has its proto twin (the tables of convert and interceptors are built at
    import) and every proto value but UNSPECIFIED has its domain twin."""
    assert {f"RELEASE_REASON_{r.name}" for r in ReleaseReason} == set(resources_pb2.ReleaseReason.keys()) - {
        "RELEASE_REASON_UNSPECIFIED"
    }
    assert {f"ERROR_CODE_{e.name}" for e in JobError} == set(jobs_pb2.ErrorCode.keys())
    assert {f"ERROR_REASON_{r.name}" for r in ErrorReason} == set(billing_service_pb2.ErrorReason.keys())
    for reason in ReleaseReason:
        assert (
            convert.release_reason(resources_pb2.ReleaseReason.Value(f"RELEASE_REASON_{reason.name}"))
            is reason
        )
    assert convert.release_reason(resources_pb2.RELEASE_REASON_UNSPECIFIED) is None
    assert convert.job_error(99) is JobError.UNSPECIFIED  # type: ignore[arg-type]


def test_a_failure_without_a_code_is_still_a_failure() -> None:
    message = resources_pb2.JobResult(error_message="it broke")
    assert convert.job_result(message).error is JobError.UNSPECIFIED
    assert convert.job_result(resources_pb2.JobResult(image_url="http://x/i.png")).error is None
    failed = JobResult(error=JobError.CONTENT_REJECTED, error_message="no")
    assert convert.job_result(convert.job_result_message(failed)) == failed


def test_grants_add_or_remove_but_never_nothing() -> None:
    assert check_grant(5) is EntryKind.GRANT
    assert check_grant(-5) is EntryKind.DEBIT
    with pytest.raises(InvalidArgumentError, match="must not be zero"):
        check_grant(0)


def test_emails_are_normalised_and_checked() -> None:
    assert normalise_email("  Ada@Example.TEST ") == "ada@example.test"
    for bad in ("", "ada", "ada@", "a b@example.test", "ada@example"):
        with pytest.raises(InvalidArgumentError, match="is not an email address"):
            normalise_email(bad)


def test_domain_errors_have_their_grpc_status() -> None:
    import grpc

    catalog = load_catalog()
    with pytest.raises(UnknownModelError) as unknown:
        catalog.get("nope")
    assert status_code(unknown.value) is grpc.StatusCode.NOT_FOUND
    with pytest.raises(SizeOutOfRangeError) as size:
        catalog.quote(None, 100, 100)
    assert status_code(size.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        status_code(AlreadySettledError("j", ReservationState.CAPTURED))
        is grpc.StatusCode.FAILED_PRECONDITION
    )
    assert status_code(RuntimeError("boom")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/billing", "postgresql+asyncpg://u:p@db:5432/billing"),
        ("postgresql://u@db/billing?sslmode=require", "postgresql+asyncpg://u@db/billing?sslmode=require"),
        ("postgresql+asyncpg://u@db/billing", "postgresql+asyncpg://u@db/billing"),
        ("sqlite:///var/billing.db", "sqlite+aiosqlite:///var/billing.db"),
        ("", ""),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_the_default_database_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = BillingSettings(data_dir=tmp_path / "data", database_url="")
    assert settings.resolved_database_url() == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'billing.db'}"
    assert (
        BillingSettings(database_url="postgres://h/db").resolved_database_url() == "postgresql+asyncpg://h/db"
    )


def test_every_setting_has_a_description() -> None:
    for name, field in BillingSettings.model_fields.items():
        assert field.description, name


def test_admin_tokens_must_be_long_and_not_placeholders() -> None:
    assert admin_token_problem("") == "IMAGEGEN_ADMIN_TOKEN is not set"
    assert "placeholder" in (admin_token_problem("changeme-changeme-changeme-changeme") or "")
    assert "placeholder" in (admin_token_problem("a" * 40) or "")
    assert "too short" in (admin_token_problem("Zx8-kQ2_pL") or "")
    assert admin_token_problem(tokens.generate_token()) is None


def test_models_are_served_with_their_price_rule() -> None:
    catalog = load_catalog()
    served = {m.key: convert.model(m, catalog) for m in catalog}
    default = served[catalog.default_model]
    assert default.is_default
    assert sum(m.is_default for m in served.values()) == 1
    for key, message in served.items():
        model = catalog.get(key)
        assert message.default_cost == model.quote(1024, 1024)
        assert message.price_rule.credits_per_megapixel == model.price.credits_per_megapixel
        assert message.dimensions.max_width == model.dimensions.max_width
        assert message.provider_model == model.replicate.model


def test_outcomes_become_results_and_reasons() -> None:
    failure = jobs_pb2.JobFailure(code=jobs_pb2.ERROR_CODE_CONTENT_REJECTED, message="refused")
    assert failure_code(failure) is JobError.CONTENT_REJECTED
    assert failure_code(jobs_pb2.JobFailure(code=99)) is JobError.UNSPECIFIED  # type: ignore[arg-type]
    outcome = jobs_pb2.JobOutcome(job_id="img_1", failure=failure)
    outcome.finish_time.FromDatetime(T0)
    result = outcome_result(outcome)
    assert (result.error, result.error_message, result.finish_time) == (
        JobError.CONTENT_REJECTED,
        "refused",
        T0,
    )
    image = jobs_pb2.JobOutcome(
        job_id="img_1", image=jobs_pb2.GeneratedImage(url="http://x/images/img_1.png", width=512, height=512)
    )
    assert outcome_result(image).image_url == "http://x/images/img_1.png"
