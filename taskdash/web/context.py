"""What the web handlers share, built once by the daemon and passed to every route.

No handler looks anything up globally: settings, health, the store gate and the cookie secret
all come through one :class:`WebContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskdash.health import Health
from taskdash.settings import Settings
from taskdash.store.times import Clock, utcnow
from taskdash.web.base import StoreGate


@dataclass
class WebContext:
    """The web application's resources.

    ``clock`` is what sessions, tokens, the login throttle and the audit log read as now (a
    test moves its own). ``extra`` carries optional sources a page may show (the pipeline
    page's reader and fetcher figures); a key that is absent means "not running in this
    process".
    """

    settings: Settings
    health: Health
    gate: StoreGate
    cookie_secret: str = ""
    clock: Clock = utcnow
    extra: dict[str, Any] = field(default_factory=dict)
