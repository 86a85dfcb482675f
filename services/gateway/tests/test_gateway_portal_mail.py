"""The portal's sign-in mail through a real SMTP server (aiosmtpd), and what happens without one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.portal.mail import Mailer
from imagegen_testing.net import free_port

URL = "http://portal.test/signin/link?token=igl_secret"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


def mails(result: str) -> float:
    return REGISTRY.get_sample_value("imagegen_gateway_portal_sign_in_mails_total", {"result": result}) or 0.0


async def wait_for(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("never happened")


async def test_a_sign_in_link_is_mailed(inbox: tuple[Inbox, int]) -> None:
    box, port = inbox
    sent = mails("sent")
    mailer = Mailer(GatewaySettings(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none"))
    mailer.send_sign_in_link("ada@example.test", URL, 15)
    await wait_for(lambda: box.messages and mails("sent") == sent + 1)
    [message] = box.messages
    assert message["To"] == "ada@example.test" and "sign-in" in message["Subject"]
    assert URL in message.get_body(preferencelist=("plain",)).get_content()


async def test_an_unreachable_server_is_counted_and_logged_without_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = mails("failed")
    mailer = Mailer(
        GatewaySettings(
            smtp_host="127.0.0.1", smtp_port=free_port(), smtp_security="none", smtp_timeout_seconds=2
        )
    )
    with caplog.at_level(logging.WARNING):
        mailer.send_sign_in_link("ada@example.test", URL, 15)
        await wait_for(lambda: mails("failed") == failed + 1)
    assert "igl_secret" not in caplog.text


def test_without_smtp_the_link_is_logged_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        Mailer(GatewaySettings()).send_sign_in_link("ada@example.test", URL, 15)
        assert "igl_secret" not in caplog.text
        Mailer(GatewaySettings(signin_links_on_console=True)).send_sign_in_link("ada@example.test", URL, 15)
        assert "igl_secret" in caplog.text
