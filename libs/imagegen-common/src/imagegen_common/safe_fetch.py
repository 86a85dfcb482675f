"""Fetch a URL that a user gave us without letting it reach our own network (SSRF).

Rules, checked on the first request and again on every redirect:
- http and https only, no credentials in the URL;
- the host is resolved once and every address it resolves to must be public (loopback, private,
  link-local incl. the 169.254.169.254 metadata service, CGNAT, multicast, reserved, unspecified and
  IPv6 forms that embed such an IPv4 address are refused);
- the connection goes to the vetted address itself (the URL is rewritten to the IP, with the
  original Host header and TLS server name), so a second DNS answer cannot swap in another host;
- at most ``max_redirects`` redirects, a size limit and an overall time limit.
- ``allowed_hosts`` names ``host:port`` pairs exempt from the address rule (a test's own receiver);
  nothing else is.

``vet`` gives the vetted address of a URL to callers that make their own request (webhooks POST).

The resolver and the HTTP transport are injectable: tests map a public-looking name to an address of
their choice and route the connection to a local server, since no real network is reachable there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen_common.settings import ENV_PREFIX

#: host, port -> the addresses (as strings) the host resolves to.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "imagegen-fetch/1"

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class SafeFetchSettings(BaseSettings):
    """Limits of fetching user-given URLs (a part of a service's settings)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    fetch_allow_private: bool = Field(
        False,
        description="Allow URLs that resolve to private or loopback addresses. For tests and local "
        "development only: never in production.",
    )
    fetch_max_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest body fetched, in bytes.")
    fetch_timeout_seconds: float = Field(
        15.0, gt=0, description="Time limit of one fetch, redirects included, in seconds."
    )
    fetch_max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed at most.")


class FetchError(Exception):
    """The URL could not be fetched; the message is fit to show a user."""


class FetchRefused(FetchError):
    """The URL is not allowed (scheme, address, size); the message is fit to show a user."""


@dataclass(frozen=True, slots=True)
class FetchedContent:
    url: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_seconds: float = 15.0
    max_redirects: int = 3
    #: ``host:port`` pairs (``[v6]:port`` for IPv6, lower case) that may be reached whatever their address.
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: SafeFetchSettings) -> FetchPolicy:
        return cls(
            allow_private=settings.fetch_allow_private,
            max_bytes=settings.fetch_max_bytes,
            timeout_seconds=settings.fetch_timeout_seconds,
            max_redirects=settings.fetch_max_redirects,
        )


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address must not be contacted, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"embeds an IPv4 address that {reason}" if reason else None
        if address in _IPV4_COMPATIBLE and not (address.is_loopback or address.is_unspecified):
            return "is a deprecated IPv4-compatible address"
        if address.teredo is not None:
            return "is a Teredo tunnel address"
    checks = (
        (address.is_unspecified, "is unspecified"),
        (address.is_loopback, "is a loopback address"),
        (address.is_link_local, "is link-local (this includes cloud metadata services)"),
        (address.is_multicast, "is a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "is a shared (CGNAT) address"),
        (address.is_private, "is a private address"),
        (address.is_reserved, "is a reserved address"),
        (not address.is_global, "is not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class VettedUrl:
    """A URL that may be contacted: connect to ``connect_url`` (the vetted address) and send ``host`` as
    the Host header and TLS server name."""

    url: str
    host: str
    connect_url: str

    @property
    def server_name(self) -> str:
        """The host without its port or IPv6 brackets (the TLS server name)."""
        if self.host.endswith("]"):
            return self.host[1:-1]
        return self.host.rsplit(":", 1)[0].strip("[]")


def host_port(host: str, port: int) -> str:
    """``host:port`` as ``allowed_hosts`` spells it."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SafeFetcher:
    """Fetches user-given URLs under a FetchPolicy. One instance can serve many fetches."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver or system_resolver
        self._transport = transport

    async def fetch(self, url: str) -> FetchedContent:
        """GETs the URL, following redirects under the policy; raises FetchError or FetchRefused."""
        try:
            async with asyncio.timeout(self.policy.timeout_seconds):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchError(
                f"fetching the URL took longer than {self.policy.timeout_seconds:g} seconds"
            ) from None

    async def _fetch(self, url: str) -> FetchedContent:
        # A new client per fetch: no connection (and no TLS session for another name) is ever reused.
        async with httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would connect to the host we did not vet
            timeout=httpx.Timeout(self.policy.timeout_seconds),
            headers={"User-Agent": USER_AGENT},
        ) as client:
            current = url
            for _ in range(self.policy.max_redirects + 1):
                target = await self.vet(current)
                request = client.build_request(
                    "GET",
                    target.connect_url,
                    headers={"Host": target.host},
                    extensions={"sni_hostname": target.server_name},
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise FetchError(f"the URL could not be fetched ({type(exc).__name__})") from None
                try:
                    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                        current = urljoin(current, response.headers["location"])
                        continue
                    return await self._read(response, current)
                finally:
                    await response.aclose()
            raise FetchRefused(f"the URL redirects more than {self.policy.max_redirects} times")

    async def _read(self, response: httpx.Response, url: str) -> FetchedContent:
        if response.status_code != 200:
            raise FetchError(f"the URL answered HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise FetchRefused(self._too_large())
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.policy.max_bytes:
                    raise FetchRefused(self._too_large())
        except httpx.HTTPError as exc:
            raise FetchError(f"the URL could not be read ({type(exc).__name__})") from None
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        return FetchedContent(url=url, content_type=content_type, data=bytes(body))

    def _too_large(self) -> str:
        return f"the file is larger than {self.policy.max_bytes // (1024 * 1024)} MB"

    async def vet(self, url: str) -> VettedUrl:
        """The vetted address of a URL; raises FetchRefused (not allowed) or FetchError (unresolvable)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            raise FetchRefused("the URL is not valid") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchRefused("only http and https URLs are accepted")
        if parts.username is not None or parts.password is not None:
            raise FetchRefused("URLs with credentials are not accepted")
        host = parts.hostname
        if not host:
            raise FetchRefused("the URL has no host")
        address = await self._resolve_vetted(host, port)
        literal = f"[{address}]" if address.version == 6 else str(address)
        netloc_host = f"[{host}]" if ":" in host else host
        host_header = netloc_host if parts.port is None else f"{netloc_host}:{port}"
        connect_url = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        return VettedUrl(url=url, host=host_header, connect_url=connect_url)

    async def _resolve_vetted(self, host: str, port: int) -> IPAddress:
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = await self._resolver(host, port)
            except OSError:
                raise FetchError("the URL's host name could not be resolved") from None
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        if not addresses:
            raise FetchError("the URL's host name could not be resolved")
        if not self.policy.allow_private and host_port(host, port) not in self.policy.allowed_hosts:
            for address in addresses:
                reason = refusal_reason(address)
                if reason is not None:
                    raise FetchRefused(f"the URL's host {reason} and is refused")
        return addresses[0]
