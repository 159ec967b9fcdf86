"""Every limit on what a job may hold, decided once and checked at each edge.

The Client (and so every Python caller), the HTTP API and the CLI check these before
anything reaches a store, so both stores see the same values and refuse the same ones;
nothing that passes can fail to be stored, read back or listed.

=================  =============================================================
what               accepted
=================  =============================================================
ids                integers 1 .. 2**63-1 (a signed 64-bit ``bigint``)
priority           1 (highest) .. 10
max_attempts       1 .. 1000
timeout            seconds, > 0 and <= 7 days, or None for no limit
concurrency        1 .. 10,000 jobs of a queue at once (a worker's, or cluster-wide)
delay              seconds, 0 .. 10 years
run_at             from 1970-01-01 UTC to 10 years from now
payload, meta      JSON: nested at most 64 deep, at most 1 MiB encoded; no NaN or
                   infinity, no lone surrogate, no NUL (``\\x00``) in a string or key;
                   integers within -2**63 .. 2**64-1
queue              1-100 of ``A-Z a-z 0-9 _ . -``
kind               1-200 of ``A-Z a-z 0-9 _ . - : /``
unique_key         1-200 characters, no NUL or lone surrogate
tenant_id          1-100 characters, no NUL or lone surrogate
tenant weight      1 .. 1000 (a tenant's share of a queue's claims)
tenant rate        ``N/[M ]unit``: N 1 .. 10**9 submissions per M (1 .. 1000) seconds,
                   minutes, hours or days (``100/minute``, ``5/10 seconds``)
filters            (queue, kind... of a list): no NUL or lone surrogate, at most 200
=================  =============================================================

The depth is below every parser on the way (orjson's 254, SQLite's JSON functions' 1000,
Python's recursion limit); the NUL rule is PostgreSQL's (``text`` and ``jsonb`` refuse it),
applied on SQLite too so that both stores behave alike.

Each check raises :class:`LimitError` (an :class:`~conveyor.engine.errors.InvalidJob`)
whose message names the field and the accepted range, and whose ``loc`` says where inside
a JSON value (``("payload", "a", 0)``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.engine.errors import InvalidJob

MAX_ID = 2**63 - 1
PRIORITIES = range(1, 11)
"""1 is the highest priority; the seeds use Q&A = 1, video = 2, other = 3."""
MAX_ATTEMPTS = 1000
MAX_TIMEOUT_S = 7 * 86_400.0
MAX_DELAY_S = 10 * 365.25 * 86_400.0
MIN_RUN_AT = 0.0
MAX_DEPTH = 64
MAX_PAYLOAD_BYTES = 1_048_576
"""Matches the API's default CONVEYOR_MAX_BODY_BYTES."""
MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**64 - 1
MAX_CONCURRENCY = 10_000
"""The most jobs of one queue a worker runs at once, and a cluster-wide queue limit."""
MAX_FILTER_LENGTH = 200
MAX_UNIQUE_KEY_LENGTH = 200
MAX_TENANT_LENGTH = 100
MAX_WEIGHT = 1000
"""The most a tenant's weight in a queue's turns may be (the stores' CHECK too)."""
MAX_RATE_AMOUNT = 10**9
MAX_RATE_MULTIPLE = 1000
EXCERPT_CHARS = 60
"""How much of a refused value a message quotes."""

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
KIND_NAME = re.compile(r"[A-Za-z0-9_.\-:/]{1,200}")
RATE = re.compile(
    r"\s*(\d{1,10})\s*(?:/|per)\s*(\d{1,4})?\s*(second|minute|hour|day)s?\s*",
    re.IGNORECASE | re.ASCII,
)

Loc = tuple[str | int, ...]


class LimitError(InvalidJob):
    """A value outside the limits of this module; ``loc`` is where (field, then the path
    inside a JSON value)."""

    def __init__(self, message: str, loc: Loc) -> None:
        super().__init__(message)
        self.loc = loc


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters: safe to print and to encode
    whatever the value holds (a repr escapes lone surrogates and control characters)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def where(loc: Loc) -> str:
    """``("payload", "a", 0, "b")`` as ``payload.a[0].b``."""
    out = str(loc[0]) if loc else "value"
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# -- integers ------------------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, field: str, low: int, high: int) -> int:
    """``value`` if it is an integer from ``low`` to ``high``."""
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise LimitError(
            f"{field} {excerpt(value)} is not valid: use an integer from {low} to {high}",
            (field,),
        )
    return value  # type: ignore[return-value]


def check_id(value: object, field: str = "id") -> int:
    """An id as stored: 1 .. 2**63-1."""
    return check_int(value, field, 1, MAX_ID)


def is_valid_id(value: object) -> bool:
    """Whether ``value`` could name a stored row (an id outside the range names none)."""
    return _is_int(value) and 1 <= value <= MAX_ID  # type: ignore[operator]


def check_priority(priority: object) -> int:
    if not _is_int(priority) or priority not in PRIORITIES:
        raise LimitError(
            f"priority {excerpt(priority)} is not valid: use an integer from 1 (highest) to 10",
            ("priority",),
        )
    return priority  # type: ignore[return-value]


def check_max_attempts(max_attempts: object) -> int:
    return check_int(max_attempts, "max_attempts", 1, MAX_ATTEMPTS)


# -- seconds and times ---------------------------------------------------------------------
def finite_seconds(value: object) -> float | None:
    """``value`` as a finite float, or None if it is no number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def check_timeout(timeout: object) -> float | None:
    """Seconds an attempt may run (> 0, at most 7 days), or None for no limit."""
    if timeout is None:
        return None
    seconds = finite_seconds(timeout)
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT_S:
        raise LimitError(
            f"timeout {excerpt(timeout)} is not valid: use seconds > 0 and at most "
            f"{MAX_TIMEOUT_S:.0f} (7 days), or None for none",
            ("timeout",),
        )
    return seconds


def check_delay(delay: object) -> float:
    """Seconds before a job may run: 0 .. 10 years."""
    seconds = finite_seconds(delay)
    if seconds is None or not 0 <= seconds <= MAX_DELAY_S:
        raise LimitError(
            f"delay {excerpt(delay)} is not valid: use seconds from 0 to {MAX_DELAY_S:.0f} "
            "(10 years)",
            ("delay",),
        )
    return seconds


def check_run_at(run_at: object, now: float | None = None) -> float:
    """A start time in Unix seconds: from 1970-01-01 UTC to 10 years from now."""
    seconds = finite_seconds(run_at)
    latest = (time.time() if now is None else now) + MAX_DELAY_S
    if seconds is None or not MIN_RUN_AT <= seconds <= latest:
        raise LimitError(
            f"run_at {excerpt(run_at)} is not valid: use a time from 1970-01-01 UTC to 10 "
            "years from now",
            ("run_at",),
        )
    return seconds


# -- names and text ------------------------------------------------------------------------
def _clean_text(value: str) -> bool:
    """No NUL and no lone surrogate."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_queue_name(queue: object, field: str = "queue") -> str:
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise LimitError(
            f"{field} name {excerpt(queue)} is not valid: use 1-100 letters, digits, '_', "
            "'.' or '-'",
            (field,),
        )
    return queue


def check_kind_name(kind: object, field: str = "kind") -> str:
    if not isinstance(kind, str) or not KIND_NAME.fullmatch(kind):
        raise LimitError(
            f"{field} name {excerpt(kind)} is not valid: use 1-200 letters, digits or _.-:/",
            (field,),
        )
    return kind


def check_text(value: object, field: str, max_length: int) -> str:
    """A free string of 1 .. ``max_length`` characters, without NUL or lone surrogates."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not _clean_text(value):
        raise LimitError(
            f"{field} {excerpt(value)} is not valid: use 1-{max_length} characters, "
            "without NUL or lone surrogates",
            (field,),
        )
    return value


def check_unique_key(unique_key: object) -> str:
    return check_text(unique_key, "unique_key", MAX_UNIQUE_KEY_LENGTH)


def check_tenant(tenant_id: object) -> str:
    return check_text(tenant_id, "tenant_id", MAX_TENANT_LENGTH)


def check_weight(weight: object) -> int:
    return check_int(weight, "weight", 1, MAX_WEIGHT)


def check_rate(rate: object, field: str = "rate") -> str:
    """A submission rate cap in the rate-limit notation, written the one way the API's
    limiter reads it back: ``"100 per minute"`` and ``"100/minute"`` both give
    ``"100/minute"``, ``"5/10 seconds"`` stays ``"5/10 second"``."""
    match = RATE.fullmatch(rate) if isinstance(rate, str) else None
    amount = int(match.group(1)) if match else 0
    multiple = int(match.group(2) or 1) if match else 0
    if (
        match is None
        or not 1 <= amount <= MAX_RATE_AMOUNT
        or not 1 <= multiple <= MAX_RATE_MULTIPLE
    ):
        raise LimitError(
            f"{field} {excerpt(rate)} is not valid: write N/unit or N/M unit, e.g. "
            f"100/minute or 5/10 seconds, with N from 1 to {MAX_RATE_AMOUNT}, M from 1 to "
            f"{MAX_RATE_MULTIPLE} and unit second, minute, hour or day",
            (field,),
        )
    unit = match.group(3).lower()
    return f"{amount}/{unit}" if multiple == 1 else f"{amount}/{multiple} {unit}"


def check_filter(value: str | None, field: str) -> str | None:
    """A list filter (queue, kind...): any text the stores can compare, or None."""
    return None if value is None else check_text(value, field, MAX_FILTER_LENGTH)


# -- JSON values ---------------------------------------------------------------------------
def check_json(
    value: Any, field: str, *, max_bytes: int = MAX_PAYLOAD_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """``value`` if it is JSON within the limits (depth, size, finite numbers, clean
    strings and keys); raises :class:`LimitError` naming the first place that is not."""
    # Encoding is the fast check (orjson refuses lone surrogates, keys that are not
    # strings, integers past 64 bits and other types, and gives the exact size); what it
    # lets through (NaN and infinity as null, NUL as \u0000, any depth up to 254) is
    # looked for in its output, and only a suspect payload pays for the walk, which
    # finds the place and raises.
    try:
        encoded: bytes | None = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        encoded = None
    if (
        encoded is None
        or b"null" in encoded
        or b"\\u0000" in encoded
        or encoded.count(b"[") + encoded.count(b"{") > max_depth
    ):
        _walk(value, [field], MAX_DEPTH - max_depth)
        if encoded is None:
            raise LimitError(f"{field} is not valid: it cannot be encoded as JSON", (field,))
    if len(encoded) > max_bytes:
        raise LimitError(
            f"{field} is {len(encoded)} bytes encoded as JSON: the limit is {max_bytes}",
            (field,),
        )
    return value


def _walk(value: Any, path: list[str | int], depth: int) -> int:
    """Check ``value`` at ``path``, raising at the first place that breaks a limit; the
    number of characters its strings and scalars hold."""
    if isinstance(value, str):
        if value and not _clean_text(value):
            _refuse(path, "a string holding NUL or a lone surrogate")
        return len(value) + 2
    if value is None or isinstance(value, bool):
        return 4
    if isinstance(value, int):
        if not MIN_JSON_INT <= value <= MAX_JSON_INT:
            _refuse(path, f"an integer outside {MIN_JSON_INT} .. {MAX_JSON_INT}")
        return 8
    if isinstance(value, float):
        if not math.isfinite(value):
            _refuse(path, f"{value!r}: JSON has no NaN or infinity")
        return 8
    if depth >= MAX_DEPTH:
        # A document allowed to nest deeper than a payload (a body around its input)
        # starts below 0, so the payload inside it is held to MAX_DEPTH.
        _refuse(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return _walk_object(value, path, depth)
    if isinstance(value, list | tuple):
        total = 2
        for i, item in enumerate(value):
            path.append(i)
            total += 1 + _walk(item, path, depth + 1)
            path.pop()
        return total
    _refuse(path, f"a {type(value).__name__}, which is not JSON")
    raise AssertionError  # unreachable: _refuse raises


def _walk_object(value: dict[Any, Any], path: list[str | int], depth: int) -> int:
    total = 2
    for key, item in value.items():
        if not isinstance(key, str):
            _refuse(path, f"a key that is not a string ({excerpt(key)}); JSON keys are strings")
        if key and not _clean_text(key):
            _refuse([*path, excerpt(key)], "a key holding NUL or a lone surrogate")
        path.append(key)
        total += len(key) + 3 + _walk(item, path, depth + 1)
        path.pop()
    return total


def _refuse(path: Sequence[str | int], what: str) -> None:
    loc = tuple(path)
    raise LimitError(f"{where(loc)} is not valid: {what}", loc)


def loads(body: bytes | str, field: str = "body", *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text strictly: invalid JSON, NaN or infinity (``1e400`` too), lone
    surrogates, NUL in strings, nesting past :data:`MAX_DEPTH` and integers outside
    :data:`MIN_JSON_INT` .. :data:`MAX_JSON_INT` raise :class:`LimitError`, with ``loc``
    naming the place when it can be found.

    Valid input costs one orjson parse and three byte scans; the walk runs only when a
    scan sees what might be NUL, deep nesting or a long integer.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN, infinity and lone surrogates but does not say where in the
        # document's structure: the lenient stdlib parser finds the place, if it parses.
        _locate(body, field, max_depth)
        raise LimitError(f"{field} is not valid JSON: {exc}", (field,)) from None
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    max_bytes = max(len(raw), MAX_PAYLOAD_BYTES)
    if b"\\u0000" in raw or raw.count(b"[") + raw.count(b"{") > max_depth:
        check_json(value, field, max_bytes=max_bytes, max_depth=max_depth)
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS_AS_ZERO):
        # orjson reads an integer outside 64 bits as the nearest float, silently: a
        # 30-digit id would be stored, or echoed in an error, rounded. Every integer out
        # of range has at least 19 digits, so only a text holding such a run (in a
        # number, or in a string) is parsed again, by the stdlib, which keeps integers
        # exact, and walked.
        exact = json.loads(body, parse_int=_exact_int)
        check_json(exact, field, max_bytes=max_bytes, max_depth=max_depth)
    return value


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * len(str(MIN_JSON_INT).lstrip("-"))
"""As many digits as the shortest integer out of range has (-2**63 - 1: 19)."""


def _exact_int(literal: str) -> int:
    """An integer literal as the integer it names. One longer than any integer in range
    could be written is out of range whatever its digits: it stands for
    ``MAX_JSON_INT + 1``, so no time goes into converting it (the stdlib refuses to past
    4,300 digits, and a body may hold a million)."""
    if len(literal) > len(str(MIN_JSON_INT)) + 1:
        return MAX_JSON_INT + 1
    return int(literal)


class _NonFinite(float):
    """A NaN or infinity as the stdlib parser read it (``NaN``, ``Infinity``)."""


def _locate(body: bytes | str, field: str, max_depth: int) -> None:
    try:
        value = json.loads(
            body,
            parse_constant=lambda name: _NonFinite(name.replace("-", "")),
            parse_int=_exact_int,
        )
    except RecursionError:
        raise LimitError(
            f"{field} is not valid: nested deeper than {max_depth} levels", (field,)
        ) from None
    except (ValueError, TypeError):
        return
    check_json(value, field, max_bytes=2**62, max_depth=max_depth)
