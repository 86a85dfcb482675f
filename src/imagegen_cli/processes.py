"""Child processes of ``imagegen dev`` (and of the tests): start, wait until ready, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ReadyCheck = Callable[[], bool]


def imagegen_command(*args: str) -> list[str]:
    """The command line of an ``imagegen`` sub-command, run by this interpreter."""
    return [sys.executable, "-m", "imagegen_cli.main", *args]


class ChildProcess:
    """One process; its output goes to ``log_path`` when given, otherwise to ours."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        if self.log_path is None:
            self.process = subprocess.Popen(self.command, env=self.env)
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_ready(self, is_ready: ReadyCheck, timeout: float = 60.0) -> ChildProcess:
        """Polls ``is_ready`` until it holds; raises with the last output if the process dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited during start-up (code {self.returncode()}){self._tail()}"
                )
            if is_ready():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s{self._tail()}")

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Waits for the process to end by itself; returns its exit code."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _tail(self) -> str:
        logs = self.logs()
        return f":\n{logs[-4000:]}" if logs else ""


def http_ok(url: str) -> ReadyCheck:
    """Ready when ``url`` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return check


def grpc_serving(address: str, service: str = "") -> ReadyCheck:
    """Ready when the gRPC health service at ``address`` says SERVING."""

    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check
