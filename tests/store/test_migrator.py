"""The migration runner both stores use: versions in order, each recorded, a newer
database refused, the jobs table's columns checked."""

from __future__ import annotations

import pytest

from conveyor.store.base import StoreError
from conveyor.store.migrator import SCHEMA_STATEMENTS, Migrator, Step
from conveyor.store.records import JOB_COLUMNS
from conveyor.store.sqlfile import compile_sql, load_migrations

PACKAGE = "conveyor.store.sqlite"
STATEMENTS = {
    "schema_table": compile_sql("schema_table", "CREATE TABLE IF NOT EXISTS s (v int)", "?"),
    "schema_exists": compile_sql("schema_exists", "SELECT 1", "?"),
    "schema_version": compile_sql("schema_version", "SELECT max(v) FROM s", "?"),
    "schema_record": compile_sql("schema_record", "INSERT INTO s VALUES (:version, :now)", "?"),
    "job_columns": compile_sql("job_columns", "SELECT name FROM c", "?"),
}
URL = "postgresql://conveyor:secret@db.example/prod"


def _migrator() -> Migrator:
    return Migrator(PACKAGE, STATEMENTS, split=lambda sql: [f"<{sql[:10]}>", "<next>"])


def test_a_new_database_gets_every_migration_in_order_each_followed_by_its_record() -> None:
    migrations = load_migrations(PACKAGE)
    upgrade = _migrator().upgrade(0, URL, now=12.5)
    assert upgrade.versions == [v for v, _ in migrations]
    expected: list[Step] = []
    for version, sql in migrations:
        expected += [Step(f"<{sql[:10]}>"), Step("<next>")]
        expected.append(Step("INSERT INTO s VALUES (?1, ?2)", (version, 12.5)))
    assert upgrade.steps == expected


def test_only_the_missing_migrations_run() -> None:
    migrator = _migrator()
    upgrade = migrator.upgrade(migrator.latest - 1, URL, now=1.0)
    assert upgrade.versions == [migrator.latest]
    assert migrator.upgrade(migrator.latest, URL).steps == []


def test_a_database_newer_than_the_code_is_refused_naming_both_versions_not_the_password() -> None:
    migrator = _migrator()
    with pytest.raises(StoreError) as caught:
        migrator.upgrade(migrator.latest + 3, URL)
    message = str(caught.value)
    assert f"schema version {migrator.latest + 3}" in message
    assert f"version {migrator.latest} that this Conveyor knows" in message
    assert "secret" not in message
    assert "conveyor:***@db.example" in message


def test_the_record_takes_only_the_parameters_its_dialect_names() -> None:
    statements = {
        **STATEMENTS,
        "schema_record": compile_sql("r", "INSERT INTO s VALUES (:version, now())", "$"),
    }
    upgrade = Migrator(PACKAGE, statements).upgrade(0, URL)
    assert upgrade.steps[1] == Step("INSERT INTO s VALUES ($1, now())", (1,))
    # Without a split, a migration is one step: its whole script.
    assert upgrade.steps[0].sql == load_migrations(PACKAGE)[0][1]


def test_columns_other_than_the_stores_read_are_refused() -> None:
    migrator = _migrator()
    migrator.check_columns(list(JOB_COLUMNS), URL)
    with pytest.raises(StoreError, match=r"conveyor_jobs columns .* differ"):
        migrator.check_columns([*JOB_COLUMNS, "extra"], URL)


def test_a_dialect_without_a_schema_statement_is_refused_at_load() -> None:
    for name in SCHEMA_STATEMENTS:
        statements = {k: v for k, v in STATEMENTS.items() if k != name}
        with pytest.raises(ValueError, match=name):
            Migrator(PACKAGE, statements)
