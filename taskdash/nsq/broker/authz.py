"""nsqd's AUTH: the secret checked against an auth HTTP server, authorizations cached for ttl.

``GET <auth>/auth?common_name=&remote_ip=&secret=&tls=`` answers
``{"ttl", "identity", "identity_url", "authorizations": [{"topic", "channels", "permissions"}]}``.
Topic and channel are regular expressions matched anywhere in the name (Go's MatchString);
``publish`` needs a channel pattern matching the empty name, as in nsqd. The secret is never
logged: errors name the server, never the URL.
"""

from __future__ import annotations

import json
import random
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import tornado.httpclient

PERMISSIONS = frozenset({"subscribe", "publish"})


class AuthError(Exception):
    """The auth server could not be asked, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class Authorization:
    """One grant: topic and channel patterns, and what they allow."""

    topic: re.Pattern[str]
    channels: tuple[re.Pattern[str], ...]
    permissions: frozenset[str]

    def allows(self, topic: str, channel: str) -> bool:
        """nsqd's Authorization.IsAllowed (channel "" = publish)."""
        needed = "subscribe" if channel else "publish"
        if needed not in self.permissions or not self.topic.search(topic):
            return False
        return any(pattern.search(channel) for pattern in self.channels)


@dataclass(slots=True)
class AuthState:
    """What the auth server said about one secret, until ``expires`` (monotonic seconds)."""

    identity: str
    identity_url: str
    authorizations: list[Authorization]
    ttl: int
    expires: float = field(default=0.0)

    def allows(self, topic: str, channel: str) -> bool:
        """Any grant allows it."""
        return any(grant.allows(topic, channel) for grant in self.authorizations)

    @property
    def expired(self) -> bool:
        """Past ttl: ask the auth server again before the next check."""
        return time.monotonic() >= self.expires


def _compile(pattern: Any, what: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise AuthError(f"{what} pattern {pattern!r} is not a string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise AuthError(f"unable to compile {what} {pattern!r} {exc}") from None


def parse_state(body: bytes) -> AuthState:
    """Validate an auth server's answer as nsqd does (permissions, patterns, ttl > 0)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AuthError(f"invalid JSON from auth server: {exc}") from None
    if not isinstance(doc, dict):
        raise AuthError("auth server answered JSON that is not an object")
    grants: list[Authorization] = []
    for raw in doc.get("authorizations") or []:
        if not isinstance(raw, dict):
            raise AuthError("an authorization is not an object")
        permissions = raw.get("permissions") or []
        for permission in permissions:
            if permission not in PERMISSIONS:
                raise AuthError(f"unknown permission {permission}")
        grants.append(
            Authorization(
                topic=_compile(raw.get("topic", ""), "topic"),
                channels=tuple(_compile(c, "channel") for c in raw.get("channels") or []),
                permissions=frozenset(permissions),
            )
        )
    ttl = doc.get("ttl", 0)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise AuthError(f"invalid TTL {ttl} (must be >0)")
    return AuthState(
        identity=str(doc.get("identity") or ""),
        identity_url=str(doc.get("identity_url") or ""),
        authorizations=grants,
        ttl=ttl,
        expires=time.monotonic() + ttl,
    )


class AuthClient:
    """Asks the configured auth servers (a random one first, then the others), as nsqd."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        *,
        connect_timeout: float,
        request_timeout: float,
        ca_file: str = "",
    ) -> None:
        self.addresses = addresses
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._ssl = ssl.create_default_context(cafile=ca_file or None)

    @staticmethod
    def endpoint(address: str) -> str:
        """``host:port`` means ``http://host:port/auth``; a full URL is used as it is."""
        return address if "://" in address else f"http://{address}/auth"

    async def query(self, secret: str, *, remote_ip: str, tls: bool, common_name: str) -> AuthState:
        """The first auth server that answers usably; AuthError naming each failure else."""
        query = urllib.parse.urlencode(
            {
                "common_name": common_name,
                "remote_ip": remote_ip,
                "secret": secret,
                "tls": "true" if tls else "false",
            }
        )
        errors: list[str] = []
        start = random.randrange(len(self.addresses))
        for i in range(len(self.addresses)):
            address = self.addresses[(start + i) % len(self.addresses)]
            try:
                return await self._ask(f"{self.endpoint(address)}?{query}")
            except AuthError as exc:
                errors.append(f"failed to auth against {address} - {exc}")
        raise AuthError("; ".join(errors))

    async def _ask(self, url: str) -> AuthState:
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            response = await client.fetch(
                url,
                headers={"Accept": "application/vnd.nsq; version=1.0"},
                connect_timeout=self.connect_timeout,
                request_timeout=self.request_timeout,
                ssl_options=self._ssl,
                raise_error=False,
                follow_redirects=False,
            )
        except (OSError, tornado.httpclient.HTTPError) as exc:
            # neither carries the URL (nor so the secret): only the reason
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise AuthError(reason) from None
        if response.code == 599:
            raise AuthError(str(response.error))
        if response.code != 200:
            body = response.body[:200]
            raise AuthError(f"got response {response.code} {response.reason} {body!r}")
        return parse_state(response.body)
