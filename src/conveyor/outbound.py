"""Calls out to addresses users give (webhook endpoints, downloads), guarded against
server-side request forgery.

A user who registers ``http://169.254.169.254/…`` or a name that resolves to
``10.0.0.5`` would otherwise make the server call its own network. So every connection
goes through :class:`GuardedBackend`, an httpcore network backend: it resolves the host
name itself, refuses the connection if *any* address it resolves to is not public
(loopback, private, link-local, multicast, unspecified, reserved, CGNAT, the cloud
metadata addresses, and the IPv4-mapped IPv6 forms of them all), and then connects to
the address it checked, never resolving again: a name that answers a public address to
the check and a private one to the connect (DNS rebinding) gets nowhere. Redirects are
followed by hand, at most :data:`MAX_REDIRECTS`, each hop's connection checked the same
way. ``CONVEYOR_WEBHOOK_ALLOW_HOSTS`` names the hosts, addresses and CIDR networks that
may be reached all the same (a receiver on the same host, in tests).

Answers are read up to a byte cap (the rest is never read) under one deadline for the
whole call, redirects included. Environment proxies are ignored: a proxy would make the
connection the guard checks the proxy's, not the target's.

httpx takes no network backend of its own (encode/httpx#3749), so
:class:`GuardedTransport` builds its connection pool with one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
"""Redirects followed at most; one more is an error."""

_METADATA = (
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
)
"""The cloud metadata services (AWS, GCP, Azure; AWS's IPv6 one), named in refusals."""

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
"""Carrier-grade NAT (RFC 6598): not global, yet not ``is_private`` in Python 3.11."""

_ALLOW_SETTING = "CONVEYOR_WEBHOOK_ALLOW_HOSTS"


class OutboundRefused(Exception):
    """A URL the guard will not call: its scheme, or an address its host resolves to."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"refused to call {url!r}: {reason}")
        self.url = url
        self.reason = reason


class _HostRefused(Exception):
    """Raised inside a connection, where the URL is not known; the client names it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be called, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        inner = refusal(address.ipv4_mapped)
        return None if inner is None else f"{inner} (IPv4-mapped)"
    if address in _METADATA:
        return "a cloud metadata address"
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    for matched, reason in checks:
        if matched:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class AllowList:
    """What may be reached although not public (:data:`_ALLOW_SETTING`): host names, and
    addresses or networks."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """The allow-list of the setting's entries (``127.0.0.1``, ``10.0.0.0/8``,
        ``hooks.internal``)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def names(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def holds(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks) or (
            isinstance(address, ipaddress.IPv6Address)
            and address.ipv4_mapped is not None
            and self.holds(address.ipv4_mapped)
        )


async def checked_addresses(host: str, port: int, allow: AllowList) -> list[str]:
    """The addresses ``host`` resolves to, each checked; raises :class:`_HostRefused`
    naming the first refused one (one refused address refuses the host: the resolver may
    hand either out next time), or when the name does not resolve."""
    literal = host.strip("[]")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(literal)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                literal, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise _HostRefused(f"host {host!r} does not resolve ({exc.strerror})") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if allow.names(literal):
        return [str(a) for a in addresses]
    for address in addresses:
        reason = refusal(address)
        if reason is not None and not allow.holds(address):
            shown = literal if str(address) == literal else f"{literal} ({address})"
            raise _HostRefused(
                f"{shown} is {reason}; add the host, address or a network holding it to "
                f"{_ALLOW_SETTING} to allow it"
            )
    return [str(a) for a in addresses]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses (see the
    module docstring), through ``inner`` (AnyIO's)."""

    def __init__(self, allow: AllowList, inner: httpcore.AsyncNetworkBackend | None = None):
        self._allow = allow
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self._allow)
        options = list(socket_options or ())
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # a name resolves to one address at least
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _HostRefused("Unix sockets are never called")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its pool's connections made by :class:`GuardedBackend`."""

    def __init__(self, allow: AllowList) -> None:
        super().__init__(trust_env=False)
        ssl_context = httpx.create_ssl_context(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allow),
        )


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """An answer, its body read up to the cap."""

    url: str
    """Where it came from (the last hop of redirects)."""
    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    """True when the body went on past the cap (the rest was not read)."""
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


def check_scheme(url: str) -> None:
    """Raise :class:`OutboundRefused` unless ``url`` is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundRefused(url, "only absolute http:// and https:// URLs are called")


async def check_url(url: str, allow: AllowList) -> None:
    """Raise :class:`OutboundRefused` unless ``url`` may be called now: its scheme, and
    every address its host resolves to (the check made at registration; every call
    checks again)."""
    check_scheme(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await checked_addresses(host, port, allow)
    except ValueError as exc:
        raise OutboundRefused(url, f"the port is not valid: {exc}") from exc
    except _HostRefused as exc:
        raise OutboundRefused(url, exc.reason) from exc


class OutboundClient:
    """An HTTP client for URLs users give (see the module docstring). One per process
    part that calls out; close it with :meth:`aclose`."""

    def __init__(self, allow_hosts: Sequence[str], *, user_agent: str = "Conveyor") -> None:
        self.allow = AllowList.parse(allow_hosts)
        self._http = httpx.AsyncClient(
            transport=GuardedTransport(self.allow),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": user_agent},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout: float,
        max_bytes: int,
    ) -> OutboundResponse:
        """Call ``url`` and read at most ``max_bytes`` of the answer, all within
        ``timeout`` seconds (redirects included). Raises :class:`OutboundRefused` for a
        URL the guard refuses (a redirect's too), ``TimeoutError`` past the deadline, and
        ``httpx.HTTPError`` for what fails on the way."""
        started = time.monotonic()
        check_scheme(url)
        request = self._http.build_request(
            method, url, headers=dict(headers or {}), content=content, timeout=timeout
        )
        async with asyncio.timeout(timeout):
            for _hop in range(MAX_REDIRECTS + 1):
                response = await self._send(request)
                try:
                    next_request = response.next_request
                    if next_request is None:
                        body, truncated = await _read_capped(response, max_bytes)
                        return OutboundResponse(
                            str(request.url),
                            response.status_code,
                            response.headers,
                            body,
                            truncated,
                            (time.monotonic() - started) * 1000,
                        )
                finally:
                    await response.aclose()
                check_scheme(str(next_request.url))
                request = next_request
        raise OutboundRefused(url, f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except _HostRefused as exc:
            raise OutboundRefused(str(request.url), exc.reason) from exc


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the body, and whether there was more (not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False
