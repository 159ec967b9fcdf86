"""Numbered migrations: what a store runs to bring its database to the latest schema.

Both stores do the same thing: in one transaction (held exclusively: SQLite's write
lock, a PostgreSQL advisory lock), make sure the ``conveyor_schema`` table exists, read
the version recorded there, refuse a database newer than this code, run each missing
migration in order and record its version with it; then check that the jobs table has
the columns this code reads. The :class:`Migrator` decides all of that and hands the
store the SQL to run, in order; the store only runs it, with its own driver (sync
sqlite3 on its thread, async asyncpg), so no step is written twice.

Each dialect's ``.sql`` file names the statements on the schema table: ``schema_table``
(create it if missing), ``schema_exists``, ``schema_version`` (the recorded version, 0
for none), ``schema_record`` (record ``:version``, applied at ``:now`` or the server's
clock) and ``job_columns`` (the jobs table's column names in table order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.store.base import StoreError
from conveyor.store.records import JOB_COLUMNS
from conveyor.store.sqlfile import Statement, load_migrations
from conveyor.store.urls import redact

SCHEMA_STATEMENTS = (
    "schema_table",
    "schema_exists",
    "schema_version",
    "schema_record",
    "job_columns",
)


@dataclass(frozen=True, slots=True)
class Step:
    """One statement to run, with its positional arguments."""

    sql: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What bringing a database to the latest version takes."""

    versions: list[int]
    """The versions it applies, in order (empty if the database is current)."""
    steps: list[Step]
    """Each migration's statements, each followed by the one recording its version."""


class Migrator:
    """The migrations of one store's ``migrations`` folder and its schema statements."""

    def __init__(
        self,
        package: str,
        statements: Mapping[str, Statement],
        split: Callable[[str], Sequence[str]] = lambda sql: (sql,),
    ) -> None:
        """``package`` holds the ``migrations`` folder (``NNNN_title.sql``); ``statements``
        has the :data:`SCHEMA_STATEMENTS`; ``split`` cuts a migration into what the
        driver runs in one call (PostgreSQL runs a whole script; sqlite3 one statement)."""
        missing = [name for name in SCHEMA_STATEMENTS if name not in statements]
        if missing:
            raise ValueError(f"{package}: no statement {', '.join(missing)} in its .sql file")
        self._migrations = [(v, tuple(split(sql))) for v, sql in load_migrations(package)]
        self.latest = len(self._migrations)
        """The version the last migration brings a database to."""
        self.create_table = Step(statements["schema_table"].sql)
        self.table_exists = Step(statements["schema_exists"].sql)
        self.read_version = Step(statements["schema_version"].sql)
        self.read_columns = Step(statements["job_columns"].sql)
        self._record = statements["schema_record"]

    def upgrade(self, current: int, url: str, *, now: float | None = None) -> Upgrade:
        """The migrations past ``current`` (the version recorded in the database at
        ``url``) and their version records, applied at ``now`` where the dialect's
        record takes it. Raises :class:`StoreError` if ``current`` is past :attr:`latest`:
        a newer Conveyor migrated that database, and this one would misread it."""
        if current > self.latest:
            raise StoreError(
                f"database {redact(url)!r} is at schema version {current}, newer than "
                f"version {self.latest} that this Conveyor knows: a newer release migrated "
                "it; run that release (or newer) against it, or point "
                "CONVEYOR_DATABASE_URL at another database"
            )
        versions: list[int] = []
        steps: list[Step] = []
        for version, statements in self._migrations[current:]:
            steps.extend(Step(sql) for sql in statements)
            steps.append(
                Step(self._record.sql, self._record.args({"version": version, "now": now}))
            )
            versions.append(version)
        return Upgrade(versions, steps)

    def check_columns(self, columns: Sequence[str], url: str) -> None:
        """Raise :class:`StoreError` unless the jobs table's ``columns`` are the ones
        every store reads (:data:`conveyor.store.records.JOB_COLUMNS`), in order."""
        if tuple(columns) != JOB_COLUMNS:
            raise StoreError(
                f"database {redact(url)!r}: conveyor_jobs columns {tuple(columns)} differ "
                f"from what this version of Conveyor reads {JOB_COLUMNS}"
            )
