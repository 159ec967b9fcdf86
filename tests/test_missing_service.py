"""The rule of ``missing_service``, run as a developer runs it: pytest in a subprocess, with
a PostgreSQL or Redis that does not answer (port 1), fails naming the service and the
opt-out, unless the service is opted out; under ``CI=true`` the opt-out does not count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from missing_service import SKIP_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
PG_TEST = "tests/store/test_contract_enqueue.py::test_migrate_is_idempotent[postgresql]"
REDIS_TEST = "tests/api/test_ratelimit.py::test_redis_counters_are_shared_by_two_api_instances"
NO_PG = "postgresql://postgres@127.0.0.1:1/postgres"
NO_REDIS = "redis://127.0.0.1:1/0"


def run_pytest(test: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``pytest test`` with no server at the test URLs, ``CI`` and the opt-out unset
    unless given in ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", SKIP_VARIABLE)}
    base |= {"CONVEYOR_TEST_POSTGRES_URL": NO_PG, "CONVEYOR_TEST_REDIS_URL": NO_REDIS}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("test", "service", "says"),
    [
        (PG_TEST, "postgresql", f"PostgreSQL at {NO_PG} is unreachable"),
        (REDIS_TEST, "redis", f"Redis at {NO_REDIS} is unreachable"),
    ],
    ids=["postgresql", "redis"],
)
def test_a_missing_service_fails_the_run_naming_it_and_the_opt_out(
    test: str, service: str, says: str
) -> None:
    result = run_pytest(test)
    assert result.returncode == 1, result.stdout
    assert says in result.stdout
    assert f"set {SKIP_VARIABLE}={service} to skip" in result.stdout


def test_an_opted_out_service_is_skipped_with_the_reason() -> None:
    result = run_pytest(PG_TEST, **{SKIP_VARIABLE: "redis, postgresql"})
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert f"PostgreSQL at {NO_PG} is unreachable" in result.stdout


def test_under_ci_the_opt_out_does_not_count() -> None:
    result = run_pytest(PG_TEST, CI="true", **{SKIP_VARIABLE: "postgresql"})
    assert result.returncode == 1, result.stdout
    assert f"CI=true ignores {SKIP_VARIABLE}" in result.stdout


def test_a_misspelt_opt_out_is_refused_before_any_test_runs() -> None:
    result = run_pytest(PG_TEST, **{SKIP_VARIABLE: "postgres"})
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "names no service ['postgres']" in result.stderr
