"""A request body over the HTTP server's limit gets a JSON 413 at once, not a bare 400.

Tornado refuses a ``Content-Length`` over ``max_body_size`` by writing ``400 Bad Request``
with no body and closing: a client cannot tell "too large" from "malformed". Here the
announced length is checked as soon as the headers are in. The connection is taken over from
Tornado (``detach``), a ``413`` with the usual ``{"error", "message"}`` body is written, and
whatever body the client is already sending is read and thrown away for a moment (at most
:data:`LINGER` seconds and :data:`DISCARD` bytes) before closing: closing a socket with unread
data resets it, and the client would see the reset instead of the answer. A client that sent
``Expect: 100-continue`` (curl does for bodies over 1 KiB) gets the 413 instead of the
go-ahead and never sends the body. Nothing of the request reaches a handler.

Chunked bodies announce no length: Tornado still cuts those off with its bare 400 once they
pass the limit.
"""

from __future__ import annotations

import asyncio
import json

import structlog
import tornado.http1connection
import tornado.httputil
import tornado.iostream

log = structlog.get_logger("taskdash.http")

#: how long the body of a refused request is read and thrown away before the connection closes
LINGER = 2.0
#: how much of it, at most
DISCARD = 4 << 20


def announced_length(headers: tornado.httputil.HTTPHeaders) -> int | None:
    """The body length the headers announce, or None (absent, repeated or not a number:
    Tornado refuses those itself)."""
    value = headers.get("Content-Length")
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def response(length: int, limit: int, setting: str) -> bytes:
    """The whole 413 answer, headers and body, ``Connection: close``."""
    where = f" ({setting})" if setting else ""
    body = json.dumps(
        {
            "error": "payload_too_large",
            "message": f"the request body ({length} bytes) is over the limit of {limit} "
            f"bytes{where}",
        }
    ).encode()
    head = (
        "HTTP/1.1 413 Payload Too Large\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Refusals:
    """Answers oversized requests; keeps the answers under way so a stop can end them."""

    def __init__(self, limit: int, setting: str = "") -> None:
        self.limit = limit
        self.setting = setting  # the setting that sets the limit, named in the message
        self._answering: set[asyncio.Task[None]] = set()

    def refuse(
        self,
        request_conn: tornado.httputil.HTTPConnection,
        start_line: tornado.httputil.RequestStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> bool:
        """True if the request announced a body over the limit and is being answered 413."""
        length = announced_length(headers)
        if length is None or length <= self.limit:
            return False
        if not isinstance(request_conn, tornado.http1connection.HTTP1Connection):
            return False  # not ours to take over: Tornado's own limit applies
        peer = getattr(request_conn.context, "remote_ip", None)
        log.info(
            "http_body_too_large",
            method=start_line.method,
            path=start_line.path.split("?", 1)[0],
            content_length=length,
            limit=self.limit,
            peer=peer,
        )
        stream = request_conn.detach()
        task = asyncio.ensure_future(_answer(stream, response(length, self.limit, self.setting)))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)
        return True

    @property
    def answering(self) -> int:
        """Refused requests whose answer is still being written or lingering."""
        return len(self._answering)

    async def close(self) -> None:
        """End the answers still lingering (a stop does not wait :data:`LINGER` for them)."""
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)


async def _answer(stream: tornado.iostream.IOStream, payload: bytes) -> None:
    try:
        await stream.write(payload)
        await asyncio.wait_for(_discard(stream), LINGER)
    except (tornado.iostream.StreamClosedError, OSError, TimeoutError):
        pass  # the client went away, or kept sending: either way we are done
    finally:
        stream.close()


async def _discard(stream: tornado.iostream.IOStream) -> None:
    left = DISCARD
    while left > 0:
        left -= len(await stream.read_bytes(min(left, 65536), partial=True))
