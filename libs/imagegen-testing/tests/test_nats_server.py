"""The nats-server of the tests: a start that fails leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import nats
import nats.aio.client
import nats.errors
import pytest

from imagegen_common.nats_auth import Role
from imagegen_testing.nats_server import NatsServer


def processes_running(program: Path) -> list[int]:
    """Pids of the processes whose command line names program."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(program).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_server_that_never_listens_is_ended_when_its_start_fails(tmp_path: Path) -> None:
    mute = tmp_path / "mute-nats-server"  # runs, but never opens its port
    mute.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    mute.chmod(0o755)
    server = NatsServer(store_dir=tmp_path / "nats", executable=str(mute))
    try:
        with pytest.raises(TimeoutError):
            server.start(timeout=0.5)
        assert server.process is None
        assert processes_running(mute) == []
    finally:
        for pid in processes_running(mute):
            os.kill(pid, signal.SIGKILL)


async def test_with_passwords_the_server_admits_only_the_services_users(tmp_path: Path) -> None:
    passwords = {role: f"pw-{role.value}-0123456789abcdef" for role in Role}
    with NatsServer(store_dir=tmp_path / "nats", passwords=passwords) as server:
        anonymous = nats.aio.client.Client()
        try:
            with pytest.raises(nats.errors.Error, match="(?i)authorization"):
                await anonymous.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
        finally:
            await anonymous.close()
        client = await nats.connect(server.url, allow_reconnect=False, **server.credentials(Role.BILLING))
        await client.close()
        # stop and start keep the users (a fault test brings the same server back)
        server.stop()
        server.start()
        client = await nats.connect(server.url, allow_reconnect=False, **server.credentials(Role.GATEWAY))
        await client.close()
