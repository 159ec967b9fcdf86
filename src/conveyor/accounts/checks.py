"""The checks of what a person types: emails, names, rate limits."""

from __future__ import annotations

import re
import unicodedata

from limits import parse

from conveyor.accounts.errors import Invalid

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(email: str) -> str:
    """``email`` stripped and lower-cased, as stored; :class:`Invalid` when it is not an
    address (``name@domain.tld``) or is too long."""
    normal = email.strip().lower()
    if len(normal) > MAX_EMAIL_LENGTH or not _EMAIL.match(normal) or not normal.isprintable():
        raise Invalid("email", "must be an address such as name@example.com")
    return normal


def check_name(field: str, name: str) -> str:
    """A display name (a tenant's, a key's) stripped; :class:`Invalid` when empty, too
    long or holding control characters."""
    text = name.strip()
    if not 1 <= len(text) <= MAX_NAME_LENGTH:
        raise Invalid(field, f"must be 1 to {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise Invalid(field, "must not contain control characters")
    return text


def check_rate_limit(text: str) -> str:
    """A rate such as ``1000/minute`` or ``200/15minutes``; :class:`Invalid` otherwise."""
    try:
        parse(text)
    except ValueError:
        raise Invalid("rate_limit", "write N/PERIOD, e.g. 1000/minute or 200/15minutes") from None
    return text.strip()
