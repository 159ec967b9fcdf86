"""Ids and secrets the service makes, and the one digest secrets are stored as."""

from __future__ import annotations

import hashlib
import secrets


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 16 url-safe random characters (96 bits): ``tnt_…``, ``usr_…``."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def new_secret(prefix: str) -> str:
    """A secret a client holds (refresh token, invitation token): ``prefix`` + ``_`` + 43
    url-safe characters (256 bits), high-entropy enough to be stored as a plain SHA-256."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    """The SHA-256 hex digest a secret is stored and looked up as. A slow hash would add
    nothing: the secrets are random 256-bit strings, not guessable passwords."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
