"""The checks of what a person types: emails, names, ids, rate limits. Each refuses
with :class:`Invalid` naming the field, before anything reaches a store."""

from __future__ import annotations

import re
import unicodedata

from limits import parse

from conveyor.accounts.errors import Invalid
from conveyor.store.accounts import TENANT_ID_PATTERN

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ID = re.compile(TENANT_ID_PATTERN)


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


def check_id(field: str, ident: str) -> str:
    """An id the service made (``tnt_…``, ``usr_…``, ``key_…``, ``inv_…``) or a tenant
    id given at creation: 1 to 64 letters, digits, ``-`` and ``_``."""
    if not _ID.fullmatch(ident):
        raise Invalid(field, "must be an id: 1 to 64 letters, digits, - and _")
    return ident


MAX_RATE_AMOUNT = 1_000_000_000


def check_rate_limit(text: str) -> str:
    """One rate such as ``1000/minute`` or ``200/15minutes``, of 1 to a billion calls;
    :class:`Invalid` otherwise."""
    problem = "write N/PERIOD with N from 1 to 1000000000, e.g. 1000/minute or 200/15minutes"
    if len(text) > 64 or any(sep in text for sep in ";,|"):
        raise Invalid("rate_limit", problem)
    try:
        rate = parse(text)
    except ValueError:
        raise Invalid("rate_limit", problem) from None
    if not 1 <= rate.amount <= MAX_RATE_AMOUNT:
        raise Invalid("rate_limit", problem)
    return text.strip()
