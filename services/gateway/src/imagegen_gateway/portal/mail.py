"""Sign-in mail: sent through SMTP (aiosmtplib) in the background, so that the page answers at once
and in the same time whether or not a link was made. Without SMTP the link is logged only when the
operator asked for it (``imagegen dev``)."""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

import aiosmtplib
from prometheus_client import Counter

from imagegen_gateway.portal.settings import PortalGatewaySettings

log = logging.getLogger(__name__)

SIGN_IN_MAILS = Counter(
    "imagegen_gateway_portal_sign_in_mails_total",
    "Sign-in links mailed by the portal, by result: sent, failed, console (logged in dev) or not_configured.",
    ["result"],
)


def sign_in_message(sender: str, to: str, url: str, minutes: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Your imagegen sign-in link"
    message.set_content(
        f"Sign in to imagegen with this link:\n\n{url}\n\n"
        f"It works once, for {minutes} minutes. If you did not ask for it, ignore this mail.\n"
    )
    return message


class Mailer:
    def __init__(self, settings: PortalGatewaySettings) -> None:
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    def send_sign_in_link(self, to: str, url: str, minutes: int) -> None:
        """Sends (in the background) or logs the link; never raises."""
        if not self.configured:
            if self.settings.signin_links_on_console:
                # Deliberate: the dev stack's console is how a newcomer signs in without mail.
                log.warning("sign-in link for %s (no SMTP configured): %s", to, url)
                SIGN_IN_MAILS.labels(result="console").inc()
            else:
                log.warning("no SMTP server configured (IMAGEGEN_SMTP_HOST): sign-in mail not sent")
                SIGN_IN_MAILS.labels(result="not_configured").inc()
            return
        task = asyncio.create_task(self._send(sign_in_message(self.settings.smtp_from, to, url, minutes)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: EmailMessage) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username or None,
                password=s.smtp_password.get_secret_value() or None,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.smtp_timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("sign-in mail not sent", extra={"error": type(exc).__name__, "smtp": s.smtp_host})
            SIGN_IN_MAILS.labels(result="failed").inc()
        else:
            SIGN_IN_MAILS.labels(result="sent").inc()
