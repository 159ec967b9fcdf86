"""The SQLite store's statements (``queries.sql``), numbered for sqlite3 once at import."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from conveyor.store.sqlfile import load_parts, load_statements

Q = load_statements(__package__, "?")
"""Every statement by name; ``Q[name].sql`` binds ``Q[name].args(values)``."""

PARTS = load_parts(__package__)
"""The pieces lists are assembled from (:mod:`conveyor.store.filters`)."""


def ordered(name: str, *params: str) -> str:
    """The SQL of statement ``name``, checked to take exactly ``params`` in that order:
    for statements bound once per row, whose arguments are built as tuples directly."""
    if Q[name].params != params:
        raise ValueError(
            f"statement {name!r} takes {Q[name].params}, not {params}: "
            "write its arguments in the order of its parameters"
        )
    return Q[name].sql


def execute(conn: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> sqlite3.Cursor:
    """Run statement ``name`` with its parameters taken from ``values`` by name."""
    statement = Q[name]
    return conn.execute(statement.sql, statement.args(values))
