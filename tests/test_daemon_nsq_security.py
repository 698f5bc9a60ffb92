"""The whole daemon against an nsqd run with TLS required, client certificates, AUTH and
deflate: ``taskdash nsqd`` with nsqd's flags, a real auth server, ``taskdash run``."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nsq_tls import make_pki
from support import (
    VENV_BIN,
    daemon_env,
    daemon_token,
    free_ports,
    http_get,
    running_daemon,
    wait_for,
)

SECRET = "daemon-auth-secret-0451"


class _Auth(BaseHTTPRequestHandler):
    calls: list[dict[str, str]] = []

    def do_GET(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        self.calls.append(query)
        if query.get("secret") != SECRET:
            self.send_response(403)
            self.end_headers()
            return
        body = {
            "ttl": 3600,
            "identity": "taskdash-prod",
            "identity_url": "",
            "authorizations": [
                {"topic": r"^taskdash\.", "channels": [".*"], "permissions": ["subscribe"]}
            ],
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # the secret is in the query string
        pass


@pytest.fixture
def auth_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Auth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_daemon_reads_and_publishes_through_a_secured_nsqd(
    tmp_path: Path, auth_server: str
) -> None:
    pki = make_pki(tmp_path / "pki")
    tcp, http, https = free_ports(3)
    broker_env = daemon_env(
        tmp_path / "broker",
        TASKDASH_NSQ__EMBEDDED_TCP_PORT=tcp,
        TASKDASH_NSQ__EMBEDDED_HTTP_PORT=http,
        TASKDASH_NSQ__EMBEDDED_LOOKUPD_PORT=0,
    )
    (tmp_path / "broker").mkdir()
    broker_log = tmp_path / "broker.log"
    with open(broker_log, "wb") as out:
        broker = subprocess.Popen(
            [str(VENV_BIN / "taskdash"), "nsqd", "--tls-cert", str(pki.server_cert),
             "--tls-key", str(pki.server_key), "--tls-required=tcp-https",
             "--tls-client-auth-policy", "require-verify", "--tls-root-ca-file", str(pki.ca),
             "--https-address", f"127.0.0.1:{https}", "--auth-http-address", auth_server,
             "--max-deflate-level", "4"],
            env=broker_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{http}/ping")[0] == 200)
        secret_file = tmp_path / "nsq-secret"
        secret_file.write_text(SECRET + "\n")
        secret_file.chmod(0o600)
        env = daemon_env(
            tmp_path,
            TASKDASH_NSQ__NSQD_TCP_ADDRESSES=f'["127.0.0.1:{tcp}"]',
            TASKDASH_NSQ__NSQD_HTTP_ADDRESS=f"https://127.0.0.1:{https}",
            TASKDASH_NSQ__TLS="true",
            TASKDASH_NSQ__TLS_CA_FILE=str(pki.ca),
            TASKDASH_NSQ__TLS_CERT_FILE=str(pki.client_cert),
            TASKDASH_NSQ__TLS_KEY_FILE=str(pki.client_key),
            TASKDASH_NSQ__AUTH_SECRET_FILE=str(secret_file),
            TASKDASH_NSQ__COMPRESSION="deflate",
            TASKDASH_NSQ__DEFLATE_LEVEL=9,
            TASKDASH_NSQ__HEARTBEAT_FLUSH_INTERVAL=0.05,
        )
        with running_daemon(tmp_path, env) as daemon:

            def negotiated() -> dict[str, Any]:
                parts = http_get(f"{daemon.web}/readyz")[1]["components"]
                return parts["reader:taskdash.service"]["negotiated"].get(f"127.0.0.1:{tcp}", {})

            wait_for(lambda: negotiated().get("ready"))
            conn = negotiated()
            assert conn["tls"] is True and conn["tls_version"] in ("TLSv1.2", "TLSv1.3")
            assert conn["compression"] == "deflate (level 4)"  # capped by --max-deflate-level
            assert conn["auth_identity"] == "taskdash-prod" and conn["auth_permissions"] == 1

            # a task service publishes over plain HTTP (tcp-https leaves HTTP open)
            body = json.dumps({"id": "svc-sec", "name": "n", "type": "t",
                               "url": "http://127.0.0.1:9/tasks"}).encode()  # fmt: skip
            request = urllib.request.Request(
                f"http://127.0.0.1:{http}/pub?topic=taskdash.service", data=body, method="POST"
            )
            assert urllib.request.urlopen(request, timeout=5).status == 200
            url = f"{daemon.web}/api/v1/services/svc-sec"
            token = daemon_token(env)  # the API needs a login or a token
            wait_for(lambda: http_get(url, token=token)[0] == 200)

            # status changes go out through HTTPS /mpub with the client certificate
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))

            def status_messages() -> int:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{https}/stats?format=json", context=ctx, timeout=5
                ) as reply:
                    topics = {t["topic_name"]: t for t in json.load(reply)["topics"]}
                topic = topics.get("taskdash.service_status")
                return topic["message_count"] if topic else 0

            out = subprocess.run(
                [str(VENV_BIN / "taskdash"), "publish", "heartbeat", "--id", "svc-sec",
                 "--nsqd-http", f"http://127.0.0.1:{http}"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            wait_for(lambda: status_messages() >= 1, timeout=20)
            logs = daemon.logs()
        assert _Auth.calls and all(c["tls"] == "true" for c in _Auth.calls)
        assert {c["common_name"] for c in _Auth.calls} == {"taskdash-client"}
    finally:
        broker.terminate()
        broker.wait(20)
    broker_logs = broker_log.read_text()
    assert "client_authenticated" in broker_logs
    assert SECRET not in logs and SECRET not in broker_logs
