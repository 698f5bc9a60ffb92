"""A small real nsq auth server (GET /auth) for the AUTH tests: answers per secret, logs calls."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web


@dataclass
class AuthServer:
    """``grants[secret]`` is the JSON answered for that secret (others get 403)."""

    grants: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    status: int = 200  # forced status for every answer when not 200
    _server: tornado.httpserver.HTTPServer | None = None

    def start(self) -> None:
        """Listen on a free loopback port."""
        server = self

        class Handler(tornado.web.RequestHandler):
            def get(self) -> None:
                query = {k: v[0].decode() for k, v in self.request.query_arguments.items()}
                query["accept"] = self.request.headers.get("Accept", "")
                server.calls.append(query)
                answer = server.grants.get(query.get("secret", ""))
                if server.status != 200 or answer is None:
                    self.set_status(server.status if server.status != 200 else 403)
                    self.finish({"message": "NOT_AUTHORIZED"})
                    return
                self.finish(json.dumps(answer))

        # no access log: the secret is in the query string, and this server is not TaskDash
        app = tornado.web.Application([(r"/auth", Handler)], log_function=lambda h: None)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.port = int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.stop()

    @property
    def address(self) -> str:
        """As nsqd's --auth-http-address takes it."""
        return f"127.0.0.1:{self.port}"


def grant(
    topic: str,
    permissions: list[str],
    channels: list[str] | None = None,
    *,
    ttl: int = 3600,
    identity: str = "svc-reader",
) -> dict[str, Any]:
    """One auth answer with one authorization."""
    return {
        "ttl": ttl,
        "identity": identity,
        "identity_url": f"https://auth.example/{identity}",
        "authorizations": [
            {"topic": topic, "channels": channels or [".*"], "permissions": permissions}
        ],
    }
