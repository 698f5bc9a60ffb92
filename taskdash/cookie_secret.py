"""The secret that signs session cookies: configured, else generated once under the data dir.

The generated file is written whole under a temporary name (created ``O_CREAT|O_EXCL``, mode
0600 from the start, never wider) and then hard-linked to its final name: ``link`` fails if the
name exists, so of several daemons starting at once exactly one secret is published and every
daemon reads that one; nobody ever reads a half-written file. A file that group or others may
read is refused, as ssh refuses such a key: the secret would let anyone reading it forge a
cookie for a stolen session id.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from taskdash.errors import ConfigError
from taskdash.settings import COOKIE_SECRET_MIN, Settings

FILE_NAME = "cookie_secret"


def _refuse_if_shared(path: Path, mode: int) -> None:
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable or writable by group or others (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod 600 {path}, or delete it to have a new secret generated (every "
            "session then ends)"
        )


def read_secret(path: Path) -> str:
    """The secret kept in ``path``; ConfigError if the file is shared or unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the cookie secret {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        _refuse_if_shared(path, os.fstat(fd).st_mode)
        raw = file.read(4096)
    secret = raw.decode("ascii", errors="replace").strip()
    if len(secret) < COOKIE_SECRET_MIN:
        raise ConfigError(
            f"{path} holds no usable cookie secret (at least {COOKIE_SECRET_MIN} characters): "
            "delete it to have one generated"
        )
    return secret


def _publish(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` unless it exists; the file appears complete or not at all."""
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secret + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another daemon was first: keep its secret
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cookie_secret(settings: Settings) -> str:
    """``[web] cookie_secret``, else the one kept in ``<data_dir>/cookie_secret`` (made once)."""
    if settings.web.cookie_secret:
        return settings.web.cookie_secret
    path = settings.data_path(FILE_NAME).absolute()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _publish(path, secrets.token_urlsafe(48))
        except OSError as exc:
            raise ConfigError(f"cannot create the cookie secret {path}: {exc}") from None
    return read_secret(path)
