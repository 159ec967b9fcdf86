"""Hypothesis strategies for hostile input, shared by the API, CLI and engine suites:
strings with lone surrogates, NUL and control characters, huge or very long text; numbers
that are NaN, infinite, past 64 bits, negative or -0; JSON nested past every limit or
large; rendered as JSON text the stdlib would write (``NaN``, ``\\ud800`` escapes) or
raw (``1e400``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from conveyor.engine.limits import MAX_DEPTH

SPECIAL_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\ud83d",
    "\n",
    "\r\n\t",
    "\x7f\x1b[31m",
    "\u202e",
    "\ufeff",
    "💥",
    "../../etc/passwd",
    "'; DROP TABLE conveyor_jobs; --",
    "%00",
    "%ED%A0%80",
    "x" * 5000,
    "ü" * 300,
]

hostile_text = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(st.characters(codec=None), max_size=30),
    st.text(st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=5),
    st.text(max_size=5).map(lambda s: s * 1000),
)
"""Text of every kind, surrogates and NUL included."""

SPECIAL_NUMBERS: list[Any] = [
    0,
    -1,
    -0.0,
    1,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**30),
    float("nan"),
    float("inf"),
    float("-inf"),
    1e30,
    1e-320,
    3.5,
]

hostile_numbers = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(),
    st.integers(min_value=10**25, max_value=10**40),
    st.floats(),
)
"""Numbers of every kind, NaN and infinities included."""

number_text = st.one_of(
    hostile_numbers.map(repr),
    st.sampled_from(["1e400", "-1e400", "nan", "NaN", "Infinity", "-0", "1" * 30, "0x10", "1_0"]),
)
"""Numbers as a person would type them on a command line or in a URL."""

argument_text = st.one_of(number_text, hostile_text)
"""Anything as a CLI argument, path segment or query value."""


def nested(depth: int, leaf: Any = 1, as_list: bool = True) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hostile_text, children, max_size=4),
    ),
    max_leaves=12,
)
"""Python values as a JSON parser might produce them, hostile leaves and keys included."""

deep_values = st.builds(nested, st.integers(MAX_DEPTH - 2, 1200), st.just(1), st.booleans())
"""Nesting around the limit and far past it (past orjson's, near the stdlib's)."""


def to_json_text(value: Any) -> str:
    """``value`` as the stdlib writes it: NaN and Infinity as bare words, surrogates as
    ``\\ud800`` escapes, huge integers in full."""
    try:
        return json.dumps(value, allow_nan=True)
    except (ValueError, RecursionError):
        return "[" * 2000 + "]" * 2000


json_texts = st.one_of(
    json_values.map(to_json_text),
    deep_values.map(to_json_text),
    st.sampled_from(["1e400", "-1e400", '"\\ud800"', '{"a": NaN}', "[1,", '"\\u0000"', "{" * 300]),
    st.text(max_size=20),
)
"""JSON documents (and near misses) as text."""


def url_quote(text: str) -> str:
    """``text`` percent-encoded as bytes (lone surrogates as their UTF-8-like bytes), cut
    to 2,000 characters first so that the URL stays under httpx's own length limit."""
    return quote(text[:2000].encode("utf-8", "surrogatepass"), safe="")
