"""One HTTP attempt at a webhook: the alerts' only HTTP code.

Tornado's client with the fetcher's SSRF rules: the URL is checked before anything is
resolved, and every address the host resolves to is checked right before connecting
(:class:`~taskdash.fetcher.client.RuleResolver`), so neither a literal nor a name pointing at a
refused network is ever contacted. Redirects are not followed (a webhook URL that moved is a
configuration to fix, and following it would leave the rules to the receiver). At most
``max_response_size`` bytes of an answer are read; the first few are kept for the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPInputError
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from taskdash import __version__
from taskdash.alerts.signing import HEADER, signature
from taskdash.fetcher.client import CheckedHttp
from taskdash.fetcher.errors import FetchError, Refused
from taskdash.fetcher.rules import Rules
from taskdash.settings import AlertsSettings

USER_AGENT = f"TaskDash-alerts/{__version__}"
#: bytes of an error answer kept in the attempt's record
KEEP = 200
#: answers worth another attempt: the receiver may be fine later
RETRIED = frozenset({408, 425, 429})

DELIVERED, RETRY, FAILED, REFUSED = "delivered", "retry", "failed", "refused"


@dataclass(frozen=True)
class Result:
    """How one attempt went: ``outcome`` is delivered, retry, failed (for good) or refused."""

    outcome: str
    code: int | None = None
    error: str = ""
    seconds: float = 0.0


class _Head:
    """Keeps the first :data:`KEEP` bytes of an answer; Tornado bounds the whole."""

    def __init__(self) -> None:
        self.data = b""

    def __call__(self, chunk: bytes) -> None:
        if len(self.data) < KEEP:
            self.data += chunk[: KEEP - len(self.data)]


def classify(code: int) -> str:
    """What an HTTP status means for the delivery."""
    if 200 <= code < 300:
        return DELIVERED
    if code >= 500 or code in RETRIED:
        return RETRY
    return FAILED


class Sender:
    """POSTs deliveries; owns one Tornado client (made on the running loop)."""

    def __init__(self, settings: AlertsSettings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self._checked = CheckedHttp(
            rules, max_clients=settings.concurrency, max_body_size=settings.max_response_size
        )

    def _http(self) -> SimpleAsyncHTTPClient:
        return self._checked.client()

    def close(self) -> None:
        """Close the client. Idempotent."""
        self._checked.close()

    async def post(
        self, url: str, body: bytes, *, secret: str, headers: dict[str, str], now: float
    ) -> Result:
        """One attempt; never raises for what the receiver or the network did."""
        started = time.monotonic()
        try:
            self.rules.check_url(url)
            code, head = await self._post(url, body, secret, headers, now)
        except Refused as exc:
            return Result(REFUSED, error=f"refused by the SSRF rules: {exc}")
        except FetchError as exc:  # the resolver's: a name that does not resolve
            return Result(RETRY, error=str(exc))
        except HTTPTimeoutError as exc:
            waited = time.monotonic() - started
            return Result(
                RETRY, error=f"timed out after {waited:.1f}s: {exc.message}", seconds=waited
            )
        except (HTTPClientError, HTTPInputError, OSError) as exc:
            return Result(
                RETRY, error=f"connection failed: {exc}", seconds=time.monotonic() - started
            )
        seconds = time.monotonic() - started
        outcome = classify(code)
        error = "" if outcome == DELIVERED else _describe(code, head)
        return Result(outcome, code, error, seconds)

    async def _post(
        self, url: str, body: bytes, secret: str, headers: dict[str, str], now: float
    ) -> tuple[int, bytes]:
        sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        if secret:
            sent[HEADER] = signature(secret, int(now), body)
        head = _Head()
        request = HTTPRequest(
            url,
            method="POST",
            headers=sent,
            body=body,
            follow_redirects=False,
            connect_timeout=self.settings.connect_timeout,
            request_timeout=self.settings.request_timeout,
            streaming_callback=head,
        )
        response = await self._http().fetch(request, raise_error=False)
        return response.code, head.data


def _describe(code: int, head: bytes) -> str:
    text = head.decode("utf-8", "replace").strip()
    if 300 <= code < 400:
        return f"HTTP {code}: redirects are not followed (fix the webhook URL)"
    return f"HTTP {code}" + (f": {text}" if text else "")
