"""Which webhook a REST job posts its outcome to: the request's ``webhook_url`` (vetted by the SSRF
guard at once) or else the account's default (vetted when delivered)."""

from __future__ import annotations

import time

from imagegen_gateway.billing_client import BillingClient
from imagegen_gateway.domain import WebhookSettings
from imagegen_gateway.errors import InvalidInputError
from imagegen_gateway.webhooks.sender import WebhookSender

NO_SECRET = (
    "webhooks are signed with the account's signing secret, and this account has none yet: an "
    "administrator makes it with `imagegen admin webhook rotate-secret <account>`"
)


class WebhookTargets:
    def __init__(self, billing: BillingClient, sender: WebhookSender, cache_seconds: float) -> None:
        self.billing = billing
        self.sender = sender
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[WebhookSettings, float]] = {}

    async def settings(self, account_id: str) -> WebhookSettings:
        """The account's webhook settings, cached as briefly as authentication is."""
        now = time.monotonic()
        cached = self._cache.get(account_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        settings = await self.billing.webhook_settings(account_id)
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[account_id] = (settings, now + self.cache_seconds)
        return settings

    async def resolve(self, account_id: str, requested: str | None) -> str:
        """The URL the jobs of a request post to ("" for none); raises InvalidInputError on
        ``webhook_url`` for a URL the guard refuses or an account without a signing secret."""
        settings = await self.settings(account_id)
        if not requested:
            return settings.url
        if not settings.signing_secret:
            raise InvalidInputError(NO_SECRET, field="webhook_url")
        await self.sender.check(requested)
        return requested
