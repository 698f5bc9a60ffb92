"""Password rules and argon2id hashing, with no I/O: the store and (later) API tokens share it.

Hashing is memory-hard on purpose (64 MiB, about 0.1 s of CPU with argon2-cffi's defaults), so
every hash and verification runs in a worker thread: the event loop keeps serving while one
login is checked.
"""

from __future__ import annotations

import asyncio
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from taskdash.errors import ValidationError

MIN_CHARS = 12
#: argon2 takes any length, but a megabyte "password" is a way to make the server work
MAX_BYTES = 1024

#: RFC 9106's second recommended option (argon2id, 64 MiB, 3 passes, 4 lanes)
DEFAULT_HASHER = PasswordHasher()


def normalize(password: str) -> str:
    """NFKC, as NIST SP 800-63B asks: the same password typed on two systems hashes the same."""
    return unicodedata.normalize("NFKC", password)


def password_error(password: str) -> str | None:
    """Why ``password`` may not be used (None if it may): the rules are checked before hashing."""
    text = normalize(password)
    if len(text) < MIN_CHARS:
        return f"password too short: at least {MIN_CHARS} characters"
    if len(text.encode("utf-8")) > MAX_BYTES:
        return f"password too long: at most {MAX_BYTES} bytes"
    return None


def check_password(password: str) -> str:
    """The normalized password, or ValidationError saying which rule it breaks."""
    problem = password_error(password)
    if problem:
        raise ValidationError(problem, field="password")
    return normalize(password)


@dataclass(frozen=True)
class Verdict:
    """What a verification found: whether it matched, and the new hash if it should change."""

    ok: bool
    rehash: str | None = None


class Passwords:
    """Hashes and verifies in a thread; the hasher is passed in, so tests can age a hash."""

    def __init__(self, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
        self.hasher = hasher
        #: what an unknown name is verified against (made at the first such login)
        self.dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash of an already checked (normalized) password."""
        return await asyncio.to_thread(self.hasher.hash, password)

    def _verify(self, encoded: str, password: str) -> Verdict:
        try:
            self.hasher.verify(encoded, normalize(password))
        except (VerificationError, InvalidHashError):
            return Verdict(ok=False)
        if self.hasher.check_needs_rehash(encoded):
            return Verdict(ok=True, rehash=self.hasher.hash(normalize(password)))
        return Verdict(ok=True)

    async def verify(self, encoded: str, password: str) -> Verdict:
        """Whether ``password`` matches ``encoded``; a weaker hash comes back renewed."""
        return await asyncio.to_thread(self._verify, encoded, password)

    async def verify_nobody(self, password: str) -> None:
        """The same work as a real verification, for a name that does not exist.

        An unknown name answered at once would tell an attacker which names exist.
        """
        if self.dummy_hash is None:
            self.dummy_hash = await self.hash("no user has this password, it only costs time")
        await self.verify(self.dummy_hash, password)
