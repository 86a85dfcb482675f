"""Run imagegen services as real processes in tests, their output in a log file per process."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from imagegen_cli.processes import ChildProcess, grpc_serving, http_ok, imagegen_command

__all__ = ["ServiceProcess", "grpc_serving", "http_ok"]


class ServiceProcess(ChildProcess):
    """``imagegen <args>`` with readable text logs in ``log_dir/<name>.log``."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        super().__init__(
            name,
            imagegen_command(*args),
            env={"IMAGEGEN_LOG_FORMAT": "text", **env},
            log_path=log_dir / f"{name}.log",
        )
