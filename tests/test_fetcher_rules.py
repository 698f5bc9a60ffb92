"""The SSRF allow-rules: tables of URLs and addresses, and the resolver that enforces them."""

from __future__ import annotations

import re
import socket

import pytest

from taskdash.fetcher.client import RuleResolver
from taskdash.fetcher.errors import FetchError, Refused
from taskdash.fetcher.rules import Rules, embedded_ipv4, parse_address
from taskdash.settings import FetcherSettings

DEFAULT = Rules.from_settings(FetcherSettings())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/tasks",
        "https://tasks.example.com/list",
        "http://10.1.2.3/x",
        "http://[::1]:9000/",
        "HTTP://Example.COM./tasks",
    ],
)
def test_default_rules_allow_ordinary_urls(url: str) -> None:
    assert DEFAULT.check_url(url).url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "URL scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "URL scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:6379/", "URL scheme 'gopher' is not allowed"),
        ("//example.com/x", "URL scheme '(none)' is not allowed"),
        ("http:///nohost", "has no host"),
        ("http://example.com:99999/", "is not valid"),
        ("http://169.254.169.254/latest/meta-data/", "refused network 169.254.0.0/16"),
        ("http://100.100.100.200/latest/", "refused network 100.100.100.200/32"),
        ("http://[fe80::1]/", "refused network fe80::/10"),
        ("http://[fd00:ec2::254]/", "refused network fd00:ec2::254/128"),
        ("http://[::ffff:169.254.169.254]/", "address 169.254.169.254 is in refused network"),
        ("http://[64:ff9b::a9fe:a9fe]/", "address 169.254.169.254 is in refused network"),
        ("http://[2002:a9fe:a9fe::1]/", "address 169.254.169.254 is in refused network"),
        ("http://0.0.0.0:8080/", "cannot be a service"),
        ("http://[::]/", "cannot be a service"),
        ("http://224.0.0.1/", "cannot be a service"),
    ],
)
def test_default_rules_refuse(url: str, message: str) -> None:
    with pytest.raises(Refused, match=re.escape(message)):
        DEFAULT.check_url(url)


def restricted(**values: object) -> Rules:
    return Rules.from_settings(FetcherSettings(**values))  # type: ignore[arg-type]


def test_allowed_hosts_alone_refuse_other_names_before_any_lookup() -> None:
    rules = restricted(allowed_hosts=["*.svc.internal", "tasks.example.com"])
    assert rules.check_url("http://a.b.svc.internal/x").host == "a.b.svc.internal"
    assert rules.check_url("http://TASKS.example.com/").port == 80
    with pytest.raises(Refused, match="does not match allowed_hosts"):
        rules.check_url("http://svc.internal/")
    with pytest.raises(Refused, match="does not match allowed_hosts"):
        rules.check_url("http://10.0.0.1/")


def test_allowed_cidrs_need_every_resolved_address_inside() -> None:
    rules = restricted(allowed_cidrs=["10.0.0.0/8"])
    rules.check_addresses("svc", ["10.1.1.1", "10.2.2.2"])
    with pytest.raises(Refused, match=r"address 192.168.1.1 is not in allowed_cidrs"):
        rules.check_addresses("svc", ["10.1.1.1", "192.168.1.1"])
    with pytest.raises(Refused, match="is not in allowed_cidrs"):
        rules.check_url("http://127.0.0.1/")


def test_host_patterns_and_cidrs_are_a_union_but_refusals_always_win() -> None:
    rules = restricted(allowed_hosts=["*.trusted"], allowed_cidrs=["10.0.0.0/8"])
    rules.check_addresses("api.trusted", ["192.168.1.1"])  # by name
    rules.check_addresses("other", ["10.9.9.9"])  # by address
    with pytest.raises(Refused, match="not in allowed_cidrs"):
        rules.check_addresses("other", ["192.168.1.1"])
    with pytest.raises(Refused, match=re.escape("refused network 169.254.0.0/16")):
        rules.check_addresses("api.trusted", ["169.254.169.254"])


def test_schemes_can_be_narrowed() -> None:
    with pytest.raises(Refused, match="'http' is not allowed"):
        restricted(allowed_schemes=["https"]).check_url("http://example.com/")


def test_a_name_that_resolves_to_nothing_usable_is_refused() -> None:
    with pytest.raises(Refused, match="resolved to no address"):
        DEFAULT.check_addresses("x", [])
    with pytest.raises(Refused, match="not an IP address"):
        DEFAULT.check_addresses("x", ["not-an-ip"])


@pytest.mark.parametrize(
    ("text", "embedded"),
    [
        ("10.0.0.1", []),
        ("2001:db8::1", []),
        ("::ffff:10.0.0.1", ["10.0.0.1"]),
        ("64:ff9b::a00:1", ["10.0.0.1"]),
        ("fe80::1%eth0", []),
    ],
)
def test_embedded_ipv4(text: str, embedded: list[str]) -> None:
    address = parse_address(text)
    assert address is not None
    assert [str(a) for a in embedded_ipv4(address)] == embedded


async def test_the_resolver_checks_what_a_name_resolves_to() -> None:
    resolver = RuleResolver(rules=restricted(refused_cidrs=["127.0.0.0/8", "::1/128"]))
    with pytest.raises(Refused, match=r"host 'localhost': address .* is in refused network"):
        await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    allowed = RuleResolver(rules=DEFAULT)
    assert (socket.AF_INET, ("127.0.0.1", 80)) in await allowed.resolve("localhost", 80)
    assert await allowed.resolve("10.0.0.1", 81) == [(socket.AF_INET, ("10.0.0.1", 81))]
    with pytest.raises(FetchError, match=re.escape("cannot resolve host 'no-such-host.invalid'")):
        await allowed.resolve("no-such-host.invalid", 80)
