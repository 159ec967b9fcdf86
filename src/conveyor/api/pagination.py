"""Cursor pagination, newest first.

A cursor is an opaque string (today: base64url of ``v1:<last id>``); clients pass back the
``next_cursor`` of the previous page and must not build one. A page is fetched with one
row more than asked, so ``next_cursor`` is null exactly on the last page.
"""

from __future__ import annotations

import base64
import binascii

from fastapi.exceptions import RequestValidationError

from conveyor.api.errors import validation_detail

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_PREFIX = "v1:"
_MAX_ID = 2**63 - 1


def encode_cursor(last_id: int) -> str:
    """The cursor of the page after the item ``last_id``."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id a cursor continues below; 422 (``loc: query.cursor``) if it is not one of
    ours."""
    if cursor is None:
        return None
    value = _parse(cursor)
    if value is None:
        raise RequestValidationError(
            validation_detail(
                "cursor is not valid: pass the next_cursor of the previous page",
                loc=("query", "cursor"),
            )
        )
    return value


def _parse(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value = int(text.removeprefix(_PREFIX))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not text.startswith(_PREFIX) or not 1 <= value <= _MAX_ID:
        return None
    return value


def next_cursor(ids: list[int], limit: int) -> str | None:
    """The cursor after a page fetched with ``limit + 1`` rows, or None if it was the last."""
    if len(ids) <= limit:
        return None
    return encode_cursor(ids[limit - 1])
