"""Allow-rules against SSRF: which URLs and which resolved addresses the fetcher may contact.

Pure checks, no I/O except :func:`resolve`. A URL passes in two steps: :meth:`Rules.check_url`
(scheme, host name patterns, literal addresses) before any connection, then
:meth:`Rules.check_addresses` on *every* address the host resolves to, right before connecting
to exactly those addresses (see :class:`taskdash.fetcher.client.RuleResolver`), so a name that
resolves to a refused address is refused, and DNS cannot change the answer in between.

Semantics: refused networks always win. If neither ``allowed_hosts`` nor ``allowed_cidrs`` is
set, every other address is allowed. Otherwise a URL is allowed when its host matches one of the
``allowed_hosts`` patterns (shell-style, case-insensitive), or when every address it resolves to
lies in ``allowed_cidrs``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from taskdash.fetcher.errors import Refused
from taskdash.settings import FetcherSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: NAT64's well-known prefix: its last 32 bits are an IPv4 address that gets reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """A URL that passed :meth:`Rules.check_url`."""

    url: str
    scheme: str
    host: str
    port: int


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (IPv6 zone ids dropped), or None if it is a name."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address really reaches (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.append(address.teredo[1])
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _in_any(address: Address, networks: tuple[Network, ...]) -> Network | None:
    for net in networks:
        if address.version == net.version and address in net:
            return net
    return None


@dataclass(frozen=True)
class Rules:
    """The configured allow-rules, parsed once."""

    schemes: frozenset[str]
    host_patterns: tuple[str, ...] = ()
    allowed_networks: tuple[Network, ...] = ()
    refused_networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: FetcherSettings) -> Rules:
        """Build from ``[fetcher]`` (already validated by settings)."""
        return cls(
            schemes=frozenset(settings.allowed_schemes),
            host_patterns=tuple(p.lower().rstrip(".") for p in settings.allowed_hosts),
            allowed_networks=tuple(
                ipaddress.ip_network(c, strict=False) for c in settings.allowed_cidrs
            ),
            refused_networks=tuple(
                ipaddress.ip_network(c, strict=False) for c in settings.refused_cidrs
            ),
        )

    @property
    def restricted(self) -> bool:
        """Whether an allow-list is configured at all."""
        return bool(self.host_patterns or self.allowed_networks)

    def host_matches(self, host: str) -> bool:
        """Whether ``host`` matches one of ``allowed_hosts``."""
        name = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.host_patterns)

    def check_url(self, url: str) -> Target:
        """Refuse a URL by its scheme and host before anything is resolved or contacted."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Refused(f"URL {url!r} is not valid: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise Refused(f"URL scheme {scheme or '(none)'!r} is not allowed (allowed: {allowed})")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise Refused(f"URL {url!r} has no host")
        if self.restricted and not self.host_matches(host) and not self.allowed_networks:
            raise Refused(f"host {host!r} does not match allowed_hosts")
        literal = parse_address(host)
        if literal is not None:
            self.check_addresses(host, [host])
        return Target(url, scheme, host, port or (443 if scheme == "https" else 80))

    def check_addresses(self, host: str, addresses: list[str]) -> None:
        """Refuse ``host`` unless every address it resolved to is allowed."""
        if not addresses:
            raise Refused(f"host {host!r} resolved to no address")
        need_cidr = self.restricted and not self.host_matches(host)
        for text in addresses:
            address = parse_address(text)
            if address is None:
                raise Refused(f"host {host!r} resolved to {text!r}, not an IP address")
            self._check_address(host, address, need_cidr)

    def _check_address(self, host: str, address: Address, need_cidr: bool) -> None:
        if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
            raise Refused(f"host {host!r}: address {address} cannot be a service")
        for candidate in (address, *embedded_ipv4(address)):
            net = _in_any(candidate, self.refused_networks)
            if net is not None:
                raise Refused(f"host {host!r}: address {candidate} is in refused network {net}")
        if need_cidr and not any(
            _in_any(candidate, self.allowed_networks)
            for candidate in (address, *embedded_ipv4(address))
        ):
            raise Refused(f"host {host!r}: address {address} is not in allowed_cidrs")


async def resolve(
    host: str, port: int, family: int = socket.AF_UNSPEC
) -> list[tuple[int, tuple[Any, ...]]]:
    """Resolve like Tornado's default resolver, skipping DNS for literal addresses."""
    literal = parse_address(host)
    if literal is not None:
        af = socket.AF_INET if literal.version == 4 else socket.AF_INET6
        if family not in (socket.AF_UNSPEC, af):
            raise Refused(f"host {host!r} is not an address of the requested family")
        return [(af, (host, port))]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=family, type=socket.SOCK_STREAM
    )
    return [(fam, addr) for fam, _, _, _, addr in infos]
