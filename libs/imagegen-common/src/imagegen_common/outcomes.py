"""Names of job error codes as clients and metrics see them ("content_rejected", not an enum number)."""

from __future__ import annotations

from imagegen.jobs.v1 import jobs_pb2


def error_code_name(code: jobs_pb2.ErrorCode.ValueType) -> str:
    """``ERROR_CODE_CONTENT_REJECTED`` → ``content_rejected``."""
    return jobs_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()
