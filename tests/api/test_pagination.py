"""Opaque cursors."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from conveyor.api.pagination import decode_cursor, encode_cursor, next_cursor


def test_a_cursor_round_trips() -> None:
    for last_id in (1, 42, 2**63 - 1):
        assert decode_cursor(encode_cursor(last_id)) == last_id
    assert decode_cursor(None) is None


@pytest.mark.parametrize(
    "cursor", ["", "42", "djE6", "djE6MA", "djE6LTE", "djI6NQ", "%%%", "\u00e9"]
)
def test_garbage_is_refused(cursor: str) -> None:
    with pytest.raises(RequestValidationError):
        decode_cursor(cursor)


def test_next_cursor_only_when_more_rows_came_back() -> None:
    assert next_cursor([5, 4, 3], limit=3) is None
    assert decode_cursor(next_cursor([5, 4, 3, 2], limit=3)) == 3
