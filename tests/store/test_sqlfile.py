"""The SQL loader: named parameters become the driver's numbered placeholders once."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conveyor.store.sqlfile import compile_sql, load_parts, load_statements


def test_names_number_in_first_use_order_and_repeat() -> None:
    stmt = compile_sql("q", "SELECT :b, :a, :b", "$")
    assert stmt.sql == "SELECT $1, $2, $1"
    assert stmt.params == ("b", "a")
    assert stmt.args({"a": 1, "b": 2, "unused": 3}) == (2, 1)


def test_colons_that_are_not_parameters_are_left_alone() -> None:
    sql = (
        "SELECT x::jsonb, ':lit', \"a:b\", $$d:e$$, doc ? 'key' -- :comment\n"
        "/* :block */ FROM t WHERE y = :y"
    )
    stmt = compile_sql("q", sql, "$")
    assert stmt.params == ("y",)
    assert stmt.sql == sql.replace(":y", "$1")


@pytest.mark.parametrize(("sql", "placeholder"), [("SELECT $1", "$"), ("SELECT ?", "?")])
def test_positional_placeholders_are_refused(sql: str, placeholder: str) -> None:
    with pytest.raises(ValueError, match="positional placeholder"):
        compile_sql("q", sql, placeholder)  # type: ignore[arg-type]


def test_a_missing_parameter_names_itself_and_the_statement() -> None:
    stmt = compile_sql("claim", "SELECT :queue, :limit", "?")
    with pytest.raises(TypeError, match=r"'claim' needs parameter 'limit'"):
        stmt.args({"queue": "q"})


def test_sqlite_binds_the_numbered_form() -> None:
    stmt = compile_sql("q", "SELECT :a, :b, :a", "?")
    conn = sqlite3.connect(":memory:")
    assert conn.execute(stmt.sql, stmt.args({"a": 1, "b": "x"})).fetchone() == (1, "x", 1)


def test_parts_include_parts_and_a_cycle_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    package = tmp_path / "sqlpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "queries.sql").write_text(
        "-- part: cols\na, b\n-- part: head\nSELECT\n-- include: cols\nFROM t\n"
        "-- name: q\n-- include: head\nWHERE a = :a\n"
    )
    (package / "loop.sql").write_text("-- part: x\n-- include: y\n-- part: y\n-- include: x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_parts("sqlpkg")["head"] == "SELECT\na, b\nFROM t"
    assert load_statements("sqlpkg", "?")["q"].sql == "SELECT\na, b\nFROM t\nWHERE a = ?1"
    with pytest.raises(ValueError, match="includes itself"):
        load_parts("sqlpkg", "loop.sql")
