"""Allow-rule details that mutation testing (``make mutation``) showed no test held.

Each test pins a behaviour a one-token change of ``taskdash/fetcher/rules.py`` broke while the
rest of the suite stayed green: zone ids, trailing dots, host bits in CIDRs, default ports,
Teredo, the broadcast address and the resolver's family and socket type.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from taskdash.fetcher.errors import Refused
from taskdash.fetcher.rules import Rules, embedded_ipv4, parse_address, resolve
from taskdash.settings import FetcherSettings

DEFAULT = Rules.from_settings(FetcherSettings())
#: No refused networks at all: what is refused then is refused by the rules' own checks.
NOTHING_REFUSED = Rules(schemes=frozenset({"http", "https"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fe80::1%eth0", "fe80::1"),  # the zone id is dropped, not kept as a scope
        ("fe80::1%a%b", "fe80::1"),  # everything after the first %
        ("10.0.0.1", "10.0.0.1"),
        ("svc.example.com", None),
    ],
)
def test_parse_address_drops_the_whole_zone_id(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == ipaddress.ip_address(expected)
        assert str(parsed) == expected


def test_teredo_reaches_its_client_address_which_is_checked() -> None:
    # Teredo keeps the client's IPv4 address inverted in the last 32 bits: 169.254.169.254 here
    teredo = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:5601:5601")
    assert ipaddress.IPv4Address("169.254.169.254") in embedded_ipv4(teredo)
    with pytest.raises(Refused, match=re.escape("address 169.254.169.254 is in refused network")):
        DEFAULT.check_url(f"http://[{teredo}]/")


@pytest.mark.parametrize("setting", ["allowed_cidrs", "refused_cidrs"])
def test_cidrs_with_host_bits_set_are_read_as_their_network(setting: str) -> None:
    # settings accept "10.1.2.3/8" (validated with strict=False); the rules must read it alike
    rules = Rules.from_settings(FetcherSettings(**{setting: ["10.1.2.3/8"]}))  # type: ignore[arg-type]
    networks = rules.allowed_networks if setting == "allowed_cidrs" else rules.refused_networks
    assert networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_trailing_dots_are_ignored_in_patterns_and_hosts() -> None:
    rules = Rules.from_settings(FetcherSettings(allowed_hosts=["Tasks.Example.com."]))
    assert rules.host_patterns == ("tasks.example.com",)
    assert rules.host_matches("tasks.example.com")
    assert rules.host_matches("TASKS.example.com.")
    assert not rules.host_matches(".tasks.example.com")
    target = rules.check_url("http://tasks.example.com./list")
    assert target.host == "tasks.example.com"


@pytest.mark.parametrize(
    ("url", "scheme", "port"),
    [
        ("https://tasks.example.com/", "https", 443),
        ("HTTPS://tasks.example.com/", "https", 443),
        ("http://tasks.example.com/", "http", 80),
        ("https://tasks.example.com:8443/", "https", 8443),
    ],
)
def test_target_has_the_scheme_and_its_default_port(url: str, scheme: str, port: int) -> None:
    target = DEFAULT.check_url(url)
    assert (target.url, target.scheme, target.host, target.port) == (
        url,
        scheme,
        "tasks.example.com",
        port,
    )


def test_the_broadcast_address_is_never_a_service_even_with_no_refused_network() -> None:
    with pytest.raises(Refused, match=re.escape("address 255.255.255.255 cannot be a service")):
        NOTHING_REFUSED.check_url("http://255.255.255.255/")
    NOTHING_REFUSED.check_url("http://255.255.255.254/")  # its neighbour is only an address


@pytest.mark.parametrize(
    ("host", "family"),
    [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
)
async def test_resolve_answers_a_literal_with_its_own_family(host: str, family: int) -> None:
    assert await resolve(host, 8080) == [(family, (host, 8080))]
    assert await resolve(host, 8080, family) == [(family, (host, 8080))]


@pytest.mark.parametrize(
    ("host", "family"),
    [("127.0.0.1", socket.AF_INET6), ("::1", socket.AF_INET)],
)
async def test_resolve_refuses_a_literal_of_the_other_family(host: str, family: int) -> None:
    with pytest.raises(
        Refused, match=re.escape(f"host {host!r} is not an address of the requested")
    ):
        await resolve(host, 80, family)


async def test_resolve_a_name_keeps_the_requested_family_and_one_entry_per_address() -> None:
    found = await resolve("localhost", 80, socket.AF_INET)
    assert found and all(fam == socket.AF_INET for fam, _ in found)
    assert len(found) == len(set(found))  # stream sockets only, not one per socket type
    try:
        found6 = await resolve("localhost", 80, socket.AF_INET6)
    except socket.gaierror:  # this machine's localhost has no IPv6 address
        found6 = []
    assert all(fam == socket.AF_INET6 for fam, _ in found6)
