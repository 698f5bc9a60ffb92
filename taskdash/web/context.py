"""What the web handlers share, built once by the daemon and passed to every route.

No handler looks anything up globally: settings, health, the store gate and the cookie secret
all come through one :class:`WebContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskdash.health import Health
from taskdash.settings import Settings
from taskdash.web.base import StoreGate


@dataclass
class WebContext:
    """The web application's resources.

    ``extra`` carries optional sources a page may show (the pipeline page's reader and
    fetcher figures); a key that is absent means "not running in this process".
    """

    settings: Settings
    health: Health
    gate: StoreGate
    cookie_secret: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
