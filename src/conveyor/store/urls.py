"""Database URLs as they may be shown: in messages and logs, never with a password."""

from __future__ import annotations


def redact(url: str) -> str:
    """The URL without its password (``postgresql://user:***@host/db``)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
