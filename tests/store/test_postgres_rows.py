"""PostgreSQL rows are decoded from one column table per record: the table is checked
against the record's fields, and the handoff notice's SQL carries the columns the table
decodes it by."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from conveyor.store.postgres.rows import HANDOFF_COLUMNS, JOBS, Column, Fixed, Table
from conveyor.store.records import JOB_COLUMNS
from conveyor.store.sqlfile import load_parts


@dataclass
class Pair:
    left: int
    right: str


def test_the_job_table_is_the_job_columns() -> None:
    assert tuple(c.name for c in JOBS.columns) == JOB_COLUMNS
    assert JOBS.width == len(JOB_COLUMNS)


def test_the_handoff_notice_carries_the_columns_it_is_decoded_by() -> None:
    part = load_parts("conveyor.store.postgres", "enqueue.sql")["notify_or_hand_off"]
    whole = re.search(r"\(SELECT 'h:' \|\| json_build_array\((.*?)\)::text\) AS h", part, re.DOTALL)
    assert whole is not None, part
    carried = [
        re.sub(r"^extract\(epoch FROM (.*)\)$", r"\1", item.strip()).removeprefix("ins.")
        for item in whole.group(1).split(",")
    ]
    assert carried == list(HANDOFF_COLUMNS)
    short = re.search(r"ELSE 'h:' \|\| json_build_array\((.*?)\)::text", part)
    assert short is not None, part
    assert [c.strip().removeprefix("ins.") for c in short.group(1).split(",")] == list(
        HANDOFF_COLUMNS[:3]
    )


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
