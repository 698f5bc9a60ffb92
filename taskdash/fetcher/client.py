"""One fetch of a service URL with Tornado's HTTP client: the fetcher's only HTTP code.

Redirects are followed here, not by Tornado, so every hop is checked against the allow-rules;
addresses are checked by :class:`RuleResolver` just before Tornado connects to them. The body is
streamed into a buffer that refuses to grow past ``max_body_size`` (after gzip decoding), so a
huge or endless body is cut off instead of buffered.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import msgspec
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPInputError
from tornado.netutil import Resolver
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from taskdash import __version__
from taskdash.fetcher.errors import FetchError, Refused
from taskdash.fetcher.rules import Rules, resolve
from taskdash.settings import FetcherSettings

USER_AGENT = f"TaskDash-fetcher/{__version__}"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_HEADER_SIZE = 64 * 1024


class RuleResolver(Resolver):
    """Resolves a host and refuses it unless every address passes the rules (anti-rebinding)."""

    def initialize(self, rules: Rules) -> None:  # type: ignore[override]
        self.rules = rules

    async def resolve(  # type: ignore[override]
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            found = await resolve(host, port, family)
        except socket.gaierror as exc:
            raise FetchError(f"cannot resolve host {host!r}: {exc}", reason="dns") from None
        self.rules.check_addresses(host, [addr[0] for _, addr in found])
        return found


@dataclass
class Response:
    """A final (non-redirect) answer: 2xx with its body, or 304."""

    status: int
    body: bytes
    url: str
    etag: str
    last_modified: str


class _CappedBody:
    """Collects a streamed body; raises (which makes Tornado drop the connection) past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self.parts: list[bytes] = []
        self.too_large = False
        self._status = 0

    def header(self, line: str) -> None:
        """Refuse a declared Content-Length above the cap before reading any of the body."""
        if line.startswith("HTTP/"):
            fields = line.split(" ", 2)
            self._status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        elif self._status != 304 and line[:15].lower() == "content-length:":
            value = line[15:].strip()
            if value.isdigit() and int(value) > self.cap:
                self._overflow()

    def data(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            self._overflow()
        self.parts.append(chunk)

    def _overflow(self) -> None:
        self.too_large = True
        self.parts.clear()
        raise HTTPInputError(f"response body larger than {self.cap} bytes")


class CheckedHttp:
    """One Tornado client whose every connection goes to an address ``rules`` allow.

    Made on first use, on the running loop (a Tornado client binds the loop it is made on);
    ``options`` are the client's (``max_clients``, ``max_body_size``, ...). Shared by the
    fetcher and the alert webhooks: one place where the SSRF rules meet the network.
    """

    def __init__(self, rules: Rules, **options: Any) -> None:
        self.rules = rules
        self.options = options
        self._client: SimpleAsyncHTTPClient | None = None

    def client(self) -> SimpleAsyncHTTPClient:
        """The client, made now if it was not yet."""
        if self._client is None:
            self._client = SimpleAsyncHTTPClient(
                force_instance=True, resolver=RuleResolver(rules=self.rules), **self.options
            )
        return self._client

    def close(self) -> None:
        """Close the client. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class HttpClient:
    """Owns one rule-checked Tornado client (created on the running loop) for fetches."""

    def __init__(self, settings: FetcherSettings, rules: Rules | None = None) -> None:
        self.settings = settings
        self.rules = rules or Rules.from_settings(settings)
        self._checked = CheckedHttp(
            self.rules,
            max_clients=settings.concurrency,
            max_header_size=MAX_HEADER_SIZE,
            # our streaming callback enforces the cap (on decoded bytes); Tornado's own limit
            # sits above it so that the clearer error is ours
            max_body_size=settings.max_body_size * 4 + 65536,
        )

    def _http(self) -> SimpleAsyncHTTPClient:
        return self._checked.client()

    def close(self) -> None:
        """Close the Tornado client. Idempotent."""
        self._checked.close()

    async def fetch(
        self, url: str, *, service_id: str, etag: str = "", last_modified: str = ""
    ) -> Response:
        """GET (or POST ``{"service_id": ...}``) ``url``, following checked redirects."""
        method = self.settings.method
        for hop in range(self.settings.max_redirects + 1):
            self.rules.check_url(url)
            response, body = await self._once(url, method, service_id, etag, last_modified)
            code = response.code
            if code in REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(
                        f"HTTP {code} redirect without a Location", status=code, reason="redirect"
                    )
                if hop == self.settings.max_redirects:
                    break
                url = urljoin(url, location)
                if code == 303 or (code in (301, 302) and method == "POST"):
                    method = "GET"
                continue
            if code == 304:
                if not (etag or last_modified):
                    raise FetchError("HTTP 304 to a request that was not conditional", status=code)
            elif not 200 <= code < 300:
                raise FetchError(f"HTTP {code} {response.reason}".rstrip(), status=code)
            return Response(
                status=code,
                body=body,
                url=url,
                etag=response.headers.get("ETag", ""),
                last_modified=response.headers.get("Last-Modified", ""),
            )
        raise FetchError(f"more than {self.settings.max_redirects} redirects", reason="redirect")

    async def _once(
        self, url: str, method: str, service_id: str, etag: str, last_modified: str
    ) -> tuple[HTTPResponse, bytes]:
        """One request/response; transport problems become FetchError with a clear message."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        body = None
        if method == "POST":
            headers["Content-Type"] = "application/json"
            body = msgspec.json.encode({"service_id": service_id})
        sink = _CappedBody(self.settings.max_body_size)
        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body,
            follow_redirects=False,
            connect_timeout=self.settings.connect_timeout,
            request_timeout=self.settings.request_timeout,
            header_callback=sink.header,
            streaming_callback=sink.data,
        )
        started = time.monotonic()
        try:
            response = await self._http().fetch(request, raise_error=False)
        except FetchError:
            raise
        except HTTPTimeoutError as exc:
            waited = time.monotonic() - started
            raise FetchError(
                f"timed out after {waited:.1f}s: {exc.message}", reason="timeout"
            ) from None
        except (HTTPClientError, OSError, HTTPInputError) as exc:
            if sink.too_large:
                raise FetchError(
                    f"response body larger than {sink.cap} bytes", reason="too_large"
                ) from None
            if isinstance(exc, ssl.SSLError):
                raise FetchError(f"TLS error: {exc}", reason="tls") from None
            raise FetchError(f"connection failed: {exc}", reason="connection") from None
        return response, b"".join(sink.parts)


__all__ = ["FetchError", "HttpClient", "Refused", "Response", "RuleResolver"]
