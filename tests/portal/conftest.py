"""Fixtures of the portal's browser tests: a whole stack whose gateway mails sign-in links to a real
SMTP server (aiosmtpd) in the test, Debian's Chromium driven by Playwright, and axe-core from npm.

Without Chromium or axe-core these tests skip with the reason, except under ``CI=true`` where they
fail: ``make setup`` installs both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, NoReturn

import pytest

from imagegen_testing.net import free_port, wait_for_port
from imagegen_testing.stack import RunningStack, start_stack

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LINK = re.compile(r"(https?://\S+/signin/link\?token=\S+)")


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true the browser tests must run (make setup installs it)")
    pytest.skip(message)


@dataclass
class Mailbox:
    """What the SMTP server received: (recipient, text body) pairs."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.messages.append((rcpt, text))
        return "250 Message accepted for delivery"

    def link_for(self, email: str, after: int = 0, timeout: float = 30.0) -> str:
        """The sign-in link in the newest mail to ``email`` past the first ``after`` mails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for to, text in reversed(self.messages[after:]):
                    found = LINK.search(text)
                    if to == email and found:
                        return found.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no sign-in mail to {email} within {timeout:.0f}s")

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


#: People the OpenID Connect provider knows (oidc-provider-mock's predefined users).
OIDC_USERS = [
    {"sub": "oidc-ada", "email": "oidc-ada@example.test", "email_verified": True},
    {"sub": "oidc-eve", "email": "oidc-eve@example.test", "email_verified": True},
    {"sub": "oidc-unverified", "email": "oidc-ada@example.test", "email_verified": False},
]
OIDC_CLIENT_ID = "imagegen-portal-test"


@pytest.fixture(scope="module")
def oidc_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenID Connect provider (oidc-provider-mock) in a process of its own."""
    port = free_port()
    binary = Path(sysconfig.get_path("scripts")) / "oidc-provider-mock"
    args = [str(binary), "-p", str(port), "-n", "true"]
    for user in OIDC_USERS:
        args += ["--user-claims", json.dumps(user)]
    log = tmp_path_factory.mktemp("oidc") / "oidc.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def portal_stack(
    tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox, oidc_issuer: str
) -> Iterator[RunningStack]:
    """NATS, billing, a generator and a gateway that mails through the test's SMTP server and signs
    in through the test's OpenID Connect provider."""
    running = start_stack(
        tmp_path_factory.mktemp("portal-stack"),
        gateway_env={
            "IMAGEGEN_AUTH_CACHE_SECONDS": "0.5",
            "IMAGEGEN_SMTP_HOST": "127.0.0.1",
            "IMAGEGEN_SMTP_PORT": str(mailbox.port),  # type: ignore[attr-defined]
            "IMAGEGEN_SMTP_SECURITY": "none",
            "IMAGEGEN_OIDC_ISSUER": oidc_issuer,
            "IMAGEGEN_OIDC_CLIENT_ID": OIDC_CLIENT_ID,
            "IMAGEGEN_OIDC_CLIENT_SECRET": "oidc-test-secret",
            "IMAGEGEN_OIDC_NAME": "Test ID",
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.exists():
        unavailable(f"{AXE} is missing (run make setup: npm ci in tests/portal/js)")
    return AXE.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the tests save their screenshots: ``docs/screenshots`` when IMAGEGEN_UPDATE_SCREENSHOTS=1
    (to refresh the README's pictures), a temporary directory otherwise."""
    if os.environ.get("IMAGEGEN_UPDATE_SCREENSHOTS") == "1":
        target = Path(__file__).parents[2] / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path
