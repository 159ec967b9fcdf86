"""API key text: ``cvk_<prefix>_<secret>``.

The prefix (12 url-safe characters) is shown in listings and finds the key; the secret
(43 url-safe characters, 256 bits) is stored only as its SHA-256 digest and compared in
constant time. The prefix has a fixed length, so the text parses even though url-safe
characters include ``_``.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.accounts.errors import Invalid
from conveyor.accounts.ids import digest
from conveyor.store.accounts import SCOPES

MARK = "cvk_"
PREFIX_LENGTH = 12
SECRET_LENGTH = 43
TEXT_LENGTH = len(MARK) + PREFIX_LENGTH + 1 + SECRET_LENGTH

# One compiled expression rather than a Python loop over the characters: every call with
# a key parses it (docs/benchmarks.md).
_KEY_TEXT = re.compile(
    rf"{MARK}([A-Za-z0-9_-]{{{PREFIX_LENGTH}}})_([A-Za-z0-9_-]{{{SECRET_LENGTH}}})", re.ASCII
)


@dataclass(frozen=True, slots=True)
class KeyText:
    """An API key's parts."""

    prefix: str
    secret: str

    def __str__(self) -> str:
        return f"{MARK}{self.prefix}_{self.secret}"


def new_key_text() -> KeyText:
    """A fresh key: random prefix and secret."""
    return KeyText(prefix=secrets.token_urlsafe(9), secret=secrets.token_urlsafe(32))


def looks_like_key(text: str) -> bool:
    """Whether a bearer credential is meant as an API key (rather than a JWT)."""
    return text.startswith(MARK)


def parse_key(text: str) -> KeyText | None:
    """The parts of ``text``; None when it is not an API key's shape."""
    match = _KEY_TEXT.fullmatch(text)
    if match is None:
        return None
    return KeyText(prefix=match[1], secret=match[2])


def secret_matches(secret: str, secret_hash: str) -> bool:
    """Whether ``secret`` hashes to ``secret_hash``, compared in constant time."""
    return hmac.compare_digest(digest(secret), secret_hash)


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, sorted and deduplicated; :class:`Invalid` for an empty list or an
    unknown scope."""
    chosen = sorted(set(scopes))
    if not chosen:
        raise Invalid("scopes", f"name at least one of {', '.join(sorted(SCOPES))}")
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise Invalid(
            "scopes",
            f"unknown scope {unknown[0][:64]!r}; the scopes are {', '.join(sorted(SCOPES))}",
        )
    return tuple(chosen)
