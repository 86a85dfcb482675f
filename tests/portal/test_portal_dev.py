"""`imagegen dev` and the portal: the ready file's portal and sign-in URLs work, and without SMTP a
link asked for on the portal shows up on the console."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from imagegen_cli.processes import ChildProcess, imagegen_command
from imagegen_testing import eventually_blocking
from imagegen_testing.net import free_port

# Starts `imagegen dev`, which prefers well-known ports: one dev stack at a time (see test_dev_stack).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("imagegen-dev")]

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def _csrf(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def test_dev_prints_a_working_sign_in_link_and_logs_new_ones(tmp_path: Path) -> None:
    ready_file, log = tmp_path / "ready.json", tmp_path / "dev.log"
    command = imagegen_command(
        "dev",
        "--port",
        str(free_port()),
        "--any-ports",
        "--data-dir",
        str(tmp_path / "data"),
        "--ready-file",
        str(ready_file),
    )
    dev = ChildProcess("dev", command, log_path=log).start()
    try:
        dev.wait_ready(ready_file.exists, timeout=120)
        ready = json.loads(ready_file.read_text())
        assert ready["portal_url"].endswith("/") and "/signin/link?token=igl_" in ready["login_url"]
        assert ready["login_url"] in log.read_text()
        with httpx.Client(base_url=ready["portal_url"], timeout=30) as client:
            confirm = client.get(ready["login_url"])
            token = re.search(r'name="token" value="([^"]+)"', confirm.text)
            assert token, (confirm.status_code, confirm.url, confirm.text[:3000])
            done = client.post("/signin/link", data={"token": token.group(1), "csrf_token": _csrf(confirm)})
            assert done.status_code == 303 and "imagegen_session" in client.cookies
            tokens = client.get("/account/tokens")
            assert "demo@imagegen.local" in tokens.text
            signout = client.post("/signout", data={"csrf_token": _csrf(tokens)})
            assert signout.status_code == 303
            landing = client.get("/")
            client.post("/signin/email", data={"email": "demo@imagegen.local", "csrf_token": _csrf(landing)})
        eventually_blocking(
            lambda: log.read_text().count("/signin/link?token=") >= 2,
            what="a second sign-in link on the console",
            detail=lambda: log.read_text()[-3000:],
        )
    finally:
        dev.stop()
