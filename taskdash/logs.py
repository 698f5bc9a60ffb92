"""The one structlog pipeline: JSON lines for machines, colour-free console text for people.

Both structlog loggers and the standard library loggers of our dependencies (pynsq, tornado,
pymongo) flow through the same processors, so every line has the same stable keys:
``ts`` (ISO-8601 UTC), ``level``, ``event``, ``logger`` plus bound context.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, TextIO

import structlog
import structlog.tracebacks

from taskdash.settings import LogSettings

#: Keys whose values are never written out, whatever logger emits them.
SECRET_KEYS = re.compile(r"pass(word|wd)?|secret|token|api_?key|cookie|authorization", re.I)
_URI_CREDENTIALS = re.compile(r"(://[^/:@\s]+:)[^@\s/]+@")
REDACTED = "***"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask secret-looking keys and passwords embedded in URIs (``mongodb://u:p@h``)."""
    for key, value in list(event_dict.items()):
        if SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = _URI_CREDENTIALS.sub(rf"\1{REDACTED}@", value)
    return event_dict


_FIRST = ("ts", "level", "logger", "event")


def _order_keys(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put the stable keys first so a line reads the same way every time."""
    head = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
    head["level"] = str(head.get("level", "info")).lower()
    return {**head, **event_dict}


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    redact_secrets,
]


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file; :meth:`reopen` (on SIGHUP) follows a file that logrotate moved away."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        """Close the current file and open ``path`` again."""
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()


def use_json(fmt: str, stream: TextIO) -> bool:
    """``auto`` means JSON unless a person is watching a terminal."""
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


def configure(
    settings: LogSettings, fmt: str | None = None, stream: TextIO | None = None
) -> ReopenableFileHandler | None:
    """Install the pipeline; returns the file handler (to reopen on SIGHUP) when one is used."""
    stream = stream or sys.stdout
    fmt = fmt or settings.format
    renderer: Any
    if use_json(fmt, stream):
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        # never the frames' local variables: they may hold a request with its secret
        exc = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        exc = []
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _order_keys,
            *exc,
            renderer,
        ],
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
    file_handler = ReopenableFileHandler(settings.file) if settings.file else None
    if file_handler:
        handlers.append(file_handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # pynsq logs every closed connection as an error with a traceback; keep it, but not at debug
    logging.getLogger("nsq").setLevel(max(root.level, logging.INFO))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return file_handler


class RateLimitedLog:
    """Logs an event at most once per ``every`` seconds, with how many were suppressed.

    For events an outside party can cause at any rate (poison messages, unknown ids): the log
    stays readable and the disk safe, and the count says what was left out.
    """

    def __init__(self, logger: Any, event: str, every: float = 10.0) -> None:
        self.logger = logger
        self.event = event
        self.every = every
        self._last = -every
        self._suppressed = 0

    def __call__(self, **context: Any) -> bool:
        """Log now (True), or count the event as suppressed (False)."""
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return False
        self.logger.warning(self.event, suppressed=self._suppressed, **context)
        self._last, self._suppressed = now, 0
        return True


def log_each_or_summary(
    logger: Any,
    event: str,
    items: Sequence[Mapping[str, Any]],
    *,
    threshold: int,
    level: str = "info",
    id_key: str = "service_id",
    group_by: str | None = None,
    examples: int = 5,
) -> None:
    """One line per item while there are at most ``threshold``, else one summary line.

    For events that come by the thousand in one pass or sweep (status changes, registrations,
    fetch failures): a handful stay individually readable, a mass event stays one line with
    ``count``, counts per ``group_by`` value and a few example ids. The full record lives in
    the store (``service_events``, ``services``), never only in the log.
    """
    emit = getattr(logger, level)
    if len(items) <= threshold:
        for item in items:
            emit(event, **item)
        return
    summary: dict[str, Any] = {"count": len(items)}
    if group_by is not None:
        summary[f"by_{group_by}"] = dict(Counter(str(i.get(group_by)) for i in items))
    summary["examples"] = [i.get(id_key) for i in items[:examples]]
    emit(f"{event}_summary", **summary)
