"""POSTs a webhook to its URL behind the same SSRF guard as input images.

The URL is vetted (resolved once, every address public unless its ``host:port`` is explicitly allowed)
and the connection goes to the vetted address itself, with the original Host header and TLS server
name, so a second DNS answer cannot point it elsewhere. Redirects are not followed: a 3xx is a failed
attempt, like any answer outside 2xx.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from imagegen_common.safe_fetch import FetchError, FetchRefused, SafeFetcher
from imagegen_gateway.errors import InvalidInputError

USER_AGENT = "imagegen-webhooks/1"


@dataclass(frozen=True, slots=True)
class SendResult:
    #: HTTP status of the answer; 0 when there was none.
    status_code: int
    #: Why there was no (acceptable) answer; empty when delivered.
    error: str
    #: The URL may never be contacted: retrying cannot help.
    refused: bool
    seconds: float

    @property
    def delivered(self) -> bool:
        return 200 <= self.status_code < 300


class WebhookSender:
    def __init__(
        self, fetcher: SafeFetcher, timeout_seconds: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.fetcher = fetcher
        self.timeout_seconds = timeout_seconds
        self._transport = transport

    async def check(self, url: str) -> None:
        """Refuses (InvalidInputError on ``webhook_url``) a URL that the guard would never contact."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.fetcher.vet(url)
        except FetchRefused as exc:
            raise InvalidInputError(f"webhook_url is refused: {exc}", field="webhook_url") from None
        except FetchError as exc:
            raise InvalidInputError(f"webhook_url cannot be used: {exc}", field="webhook_url") from None
        except TimeoutError:
            message = "webhook_url cannot be used: its host name could not be resolved in time"
            raise InvalidInputError(message, field="webhook_url") from None

    async def send(self, url: str, body: str, headers: dict[str, str]) -> SendResult:
        """One attempt, within the time limit all in (resolving, connecting, sending, the answer)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._send(url, body, headers, started)
        except TimeoutError:
            error = f"no answer within {self.timeout_seconds:g} seconds"
            return SendResult(0, error, refused=False, seconds=time.perf_counter() - started)

    async def _send(self, url: str, body: str, headers: dict[str, str], started: float) -> SendResult:
        try:
            target = await self.fetcher.vet(url)
        except FetchRefused as exc:
            return SendResult(0, f"refused: {exc}", refused=True, seconds=time.perf_counter() - started)
        except FetchError as exc:
            return SendResult(0, str(exc), refused=False, seconds=time.perf_counter() - started)
        # A new client per attempt: no connection is ever reused for another vetted address.
        async with httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would connect to an address we did not vet
            timeout=httpx.Timeout(self.timeout_seconds),
        ) as client:
            request = client.build_request(
                "POST",
                target.connect_url,
                content=body.encode(),
                headers={
                    **headers,
                    "Host": target.host,
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                },
                extensions={"sni_hostname": target.server_name},
            )
            try:
                response = await client.send(request)
            except httpx.TimeoutException:
                error = f"no answer within {self.timeout_seconds:g} seconds"
                return SendResult(0, error, refused=False, seconds=time.perf_counter() - started)
            except httpx.HTTPError as exc:
                error = f"could not connect ({type(exc).__name__})"
                return SendResult(0, error, refused=False, seconds=time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        if 200 <= response.status_code < 300:
            return SendResult(response.status_code, "", refused=False, seconds=elapsed)
        return SendResult(
            response.status_code, f"answered HTTP {response.status_code}", refused=False, seconds=elapsed
        )
