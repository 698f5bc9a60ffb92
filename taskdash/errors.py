"""The error hierarchy: one root, a few named kinds that boundaries catch."""


class TaskDashError(Exception):
    """Root of every error TaskDash raises on purpose."""


class ConfigError(TaskDashError):
    """The configuration is unusable; the message names the key and where it came from."""


class ValidationError(TaskDashError):
    """A message or record does not match its model; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreError(TaskDashError):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """MongoDB cannot be reached (down, timed out, network error); worth retrying later."""


class EmbeddedServerError(TaskDashError):
    """An embedded child server (the MongoDB stand-in) could not be started."""
