"""For task services: announce a service and send its heartbeats through nsqd's HTTP ``/pub``.

Uses ``requests`` so that any Python program can embed it, async or not::

    announcer = Announcer("http://127.0.0.1:4151", TaskService(id="svc-1", url="http://..."))
    announcer.start()      # registers, then heartbeats every 5 s in a daemon thread
    ...
    announcer.stop()
"""

from __future__ import annotations

import threading
import time

import msgspec
import requests
import structlog

from taskdash.models import HeartBeat, TaskService

log = structlog.get_logger("taskdash.nsq.announce")

SERVICE_TOPIC = "taskdash.service"
HEARTBEAT_TOPIC = "taskdash.heartbeat"


class PublishError(Exception):
    """nsqd refused the message or could not be reached."""


TIMEOUT = 5.0  # seconds for nsqd to answer one /pub


def _reason(exc: requests.RequestException) -> str:
    """The root cause in a few words (``connection refused``), not urllib3's nested repr."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {TIMEOUT:g} s"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def publish(
    nsqd_http: str, topic: str, body: bytes, *, session: requests.Session | None = None
) -> None:
    """POST one message to ``/pub``; raises PublishError with nsqd's reason."""
    url = f"{nsqd_http.rstrip('/')}/pub"
    try:
        resp = (session or requests).post(url, params={"topic": topic}, data=body, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise PublishError(f"cannot reach nsqd at {nsqd_http}: {_reason(exc)}") from exc
    if resp.status_code != 200:
        reason = " ".join(resp.text.split())[:200]  # one line, whatever the server sent
        raise PublishError(f"nsqd at {nsqd_http} answered {resp.status_code}: {reason}")


def encode(record: TaskService | HeartBeat) -> bytes:
    """The seed's JSON, exactly the keys a Go publisher sends."""
    return msgspec.json.encode(record)


class Announcer:
    """Registers a service, then heartbeats every ``every`` seconds until stopped.

    The registration is published again every ``reregister_every`` seconds (0 = only once):
    a registration lost on the way (or a database restored from an old backup) would
    otherwise leave the service beating as an unknown id forever.
    """

    def __init__(
        self,
        nsqd_http: str,
        service: TaskService,
        *,
        every: float = 5.0,
        reregister_every: float = 300.0,
        service_topic: str = SERVICE_TOPIC,
        heartbeat_topic: str = HEARTBEAT_TOPIC,
    ) -> None:
        self.nsqd_http = nsqd_http
        self.service = service
        self.every = every
        self.reregister_every = reregister_every
        self.topics = (service_topic, heartbeat_topic)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()

    def register(self) -> None:
        """Publish the TaskService message."""
        publish(self.nsqd_http, self.topics[0], encode(self.service), session=self._session)

    def beat(self) -> None:
        """Publish one HeartBeat message."""
        body = encode(HeartBeat(id=self.service.id))
        publish(self.nsqd_http, self.topics[1], body, session=self._session)
        self.sent += 1

    def _run(self) -> None:
        registered_at: float | None = None
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if registered_at is None or (
                    self.reregister_every and now - registered_at >= self.reregister_every
                ):
                    self.register()
                    registered_at = now
                self.beat()
            except PublishError as exc:
                log.warning("announce_failed", service_id=self.service.id, error=str(exc))
            self._stop.wait(self.every)

    def start(self) -> None:
        """Register and heartbeat in a background (daemon) thread; a no-op if running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="taskdash-announcer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating (the checker will notice the silence). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
