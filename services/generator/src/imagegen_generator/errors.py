"""Why a job fails, as exceptions that carry a stable ErrorCode and a sentence fit to show a user."""

from __future__ import annotations

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common.outcomes import error_code_name


class JobError(Exception):
    """A failure with a stable code; ``retryable`` ones are tried again while deliveries remain."""

    code: jobs_pb2.ErrorCode.ValueType = jobs_pb2.ERROR_CODE_INTERNAL
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(JobError):
    code = jobs_pb2.ERROR_CODE_INVALID_INPUT


class InputImageRefused(JobError):
    code = jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED


class ContentRejected(JobError):
    code = jobs_pb2.ERROR_CODE_CONTENT_REJECTED


class ProviderError(JobError):
    code = jobs_pb2.ERROR_CODE_PROVIDER_ERROR


class ProviderUnavailable(JobError):
    code = jobs_pb2.ERROR_CODE_PROVIDER_UNAVAILABLE
    retryable = True


class DeadlineExceeded(JobError):
    code = jobs_pb2.ERROR_CODE_DEADLINE_EXCEEDED


class Cancelled(JobError):
    code = jobs_pb2.ERROR_CODE_CANCELLED


class InternalError(JobError):
    """Our side failed (storage, a bug); tried again, and the user is told no more than that."""

    code = jobs_pb2.ERROR_CODE_INTERNAL
    retryable = True


def outcome_label(code: jobs_pb2.ErrorCode.ValueType | None) -> str:
    """The metric label of an outcome: ``succeeded`` or the error code (``provider_error``)."""
    if code is None:
        return "succeeded"
    return error_code_name(code)
