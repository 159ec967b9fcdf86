"""What the routers share: the documented error answers and the list filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Header, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator

from conveyor.api.errors import validation_detail
from conveyor.api.pagination import MAX_LIMIT
from conveyor.api.schemas import Problem
from conveyor.store.records import JobState

MAX_ID = 2**63 - 1
"""Ids are 64-bit: larger ones are refused (422) before they reach the database."""


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


READ_ERRORS: dict[int | str, dict[str, Any]] = {
    429: _problem("Rate limit exceeded; see Retry-After."),
    503: _problem("The database is unavailable; see Retry-After."),
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _problem("No valid credential (the same message whatever was wrong).")
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: _problem("The credential lacks the scope or role this needs.")
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("No such resource for this caller.")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _problem("Not possible in the resource's current state.")
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS,
    400: _problem("The body could not be read (not UTF-8 JSON, bad Content-Length)."),
    413: _problem("Body larger than CONVEYOR_MAX_BODY_BYTES."),
    503: _problem("Overloaded (backlog or memory) or database unavailable; see Retry-After."),
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Repeat a submission safely: the same key returns the request it "
        "created first, with 200. A key is the tenant's: whichever of its users or API keys "
        "sends it gets that request; another tenant's same key names another request.",
    ),
]
AccountId = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="The id."),
]
ResourceId = Annotated[int, Path(ge=1, le=MAX_ID, description="The id.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="next_cursor of the previous page.")
]
StatusFilter = Annotated[JobState | None, Query(description="Only this status.")]
StateFilter = Annotated[JobState | None, Query(description="Only jobs in this state.")]
StateAlias = Annotated[
    JobState | None,
    Query(alias="status", description="The same as state (kept for earlier clients)."),
]
KindFilter = Annotated[str | None, Query(max_length=200, description="Only this kind.")]
_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _iso_only(value: Any) -> Any:
    """Refuse a number where an ISO 8601 time is documented: pydantic would read it as
    Unix seconds, which the OpenAPI document does not promise."""
    if isinstance(value, str) and _NUMBER.match(value):
        raise ValueError("give an ISO 8601 time such as 2026-12-03T10:00:00Z, not a number")
    return value


CreatedAfter = Annotated[
    datetime | None,
    BeforeValidator(_iso_only),
    Query(description="Only those created at or after this time (ISO 8601; UTC if no zone)."),
]
CreatedBefore = Annotated[
    datetime | None,
    BeforeValidator(_iso_only),
    Query(description="Only those created before this time (ISO 8601; UTC if no zone)."),
]


def epoch(value: datetime | None, name: str) -> float | None:
    """A query datetime as Unix seconds; a naive one is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.timestamp()
    except (OverflowError, ValueError):
        # A zone offset can push year 1 or 9999 out of datetime's range.
        raise RequestValidationError(
            validation_detail("time out of range", loc=("query", name))
        ) from None
