"""Passwords: argon2id hashes (argon2-cffi), with the settings' costs.

Hashing and verifying take tens of milliseconds of CPU and ``password_memory_kib`` of
memory by design, so they run off the event loop (:func:`asyncio.to_thread`). A login
for an email that has no account verifies a dummy hash all the same, so the time an
answer takes does not tell whether the account exists.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from conveyor.accounts.errors import Invalid
from conveyor.config import Settings

MIN_LENGTH = 8
MAX_LENGTH = 1024
"""Longer passwords are refused before hashing: argon2 would take them, but an attacker
could make every login hash megabytes."""


def check_password(password: str) -> str:
    """``password`` if acceptable as a new password, else :class:`Invalid`."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise Invalid("password", f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long")
    if "\x00" in password:
        raise Invalid("password", "must not contain NUL characters")
    if not _is_unicode(password):
        raise Invalid("password", "must be Unicode text (it holds a lone surrogate)")
    return password


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Passwords:
    """Hashes and verifies passwords with one set of argon2id parameters."""

    def __init__(self, settings: Settings) -> None:
        # argon2 needs 8 KiB per lane; refused now rather than at the first signup.
        if settings.password_memory_kib < 8 * settings.password_parallelism:
            raise ValueError(
                f"CONVEYOR_PASSWORD_MEMORY_KIB ({settings.password_memory_kib}) must be at "
                f"least 8 x CONVEYOR_PASSWORD_PARALLELISM "
                f"({8 * settings.password_parallelism})"
            )
        self.hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            type=Type.ID,
        )
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (encoded, with its salt and parameters)."""
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``. With no hash (an unknown email,
        a user without a password) a dummy hash is verified instead and False returned,
        so both paths cost the same. A password no signup accepts (too long, not
        Unicode) is verified all the same, cut and encoded losslessly, and never matches."""
        acceptable = len(password) <= MAX_LENGTH and _is_unicode(password)
        secret = password[:MAX_LENGTH].encode("utf-8", "surrogatepass")
        if password_hash is None:
            if self._dummy is None:
                # Making the dummy hash costs what verifying one does: the first unknown
                # email takes no longer than the next ones.
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            else:
                await asyncio.to_thread(self._verify, self._dummy, secret)
            return False
        return await asyncio.to_thread(self._verify, password_hash, secret) and acceptable

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True

    def _verify(self, password_hash: str, password: bytes) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
