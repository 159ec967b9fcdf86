"""Rows decoded from one column table, checked against the dataclass it builds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conveyor.store.columns import Column, Fixed, Table, column_list
from conveyor.store.sqlite import rows
from conveyor.store.sqlite.queries import ordered


@dataclass
class Pair:
    left: int
    right: str


def test_a_row_is_decoded_from_its_offset_with_each_columns_decoder() -> None:
    table = Table(Pair, [Column("left", int), Column("right")])
    assert table.decode(("skipped", "7", "x"), 1) == Pair(7, "x")


def test_a_nested_table_reads_the_columns_after_it() -> None:
    @dataclass
    class Outer:
        name: str
        pair: Pair

    outer = Table(
        Outer, [Column("name"), Column("pair", Table(Pair, [Column("left"), Column("right")]))]
    )
    assert outer.width == 3
    assert outer.decode(("n", 1, "r"), 0) == Outer("n", Pair(1, "r"))


def test_a_table_must_list_the_records_fields_in_order() -> None:
    with pytest.raises(ValueError, match="are not the fields of Pair"):
        Table(Pair, [Column("right"), Column("left")])


def test_a_notice_decoder_takes_carried_columns_by_position_and_fixes_the_rest() -> None:
    table = Table(Pair, [Column("left", handed_off=int), Column("right", handed_off=Fixed("-"))])
    assert table.notice_decoder(["left"])(["5"]) == Pair(5, "-")
    with pytest.raises(ValueError, match="'right' is carried but marked Fixed"):
        table.notice_decoder(["left", "right"])
    with pytest.raises(ValueError, match="'left' is neither carried nor Fixed"):
        table.notice_decoder([])


def test_a_column_list_drops_comments_and_prefixes() -> None:
    assert column_list("-- note\nr.id, r.kind,\n  j.* -- the job\n") == ["id", "kind", "*"]


def test_the_sqlite_tables_match_their_statements() -> None:
    # Checked at import too; here so that a failure names itself.
    assert rows.JOB.width == 23
    assert rows.WORKER.names[-1] == "kinds"


def test_a_statement_bound_per_row_must_take_its_parameters_in_the_order_given() -> None:
    assert ordered("count_running", "queue")
    with pytest.raises(ValueError, match=r"'release' takes \('id', 'attempt', 'worker_id'\)"):
        ordered("release", "attempt", "id", "worker_id")
