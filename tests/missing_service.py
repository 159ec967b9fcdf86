"""What a test does when a service it needs cannot be reached: it fails, naming the service
and how to provide it, unless the service is listed in ``CONVEYOR_TEST_SKIP_SERVICES``
(comma-separated), where it is skipped with the reason. ``CI=true`` ignores that list, so
CI never passes with tests left out.

The default is to fail so that ``make test`` cannot pass on a machine that ran only part
of the suite; a laptop without PostgreSQL or Redis opts out by name.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

SKIP_VARIABLE = "CONVEYOR_TEST_SKIP_SERVICES"

SERVICES = {
    "postgresql": "PostgreSQL",
    "redis": "Redis",
    "postgresql-log": "PostgreSQL's server log (read by the idle-worker statement count)",
}
"""The names ``CONVEYOR_TEST_SKIP_SERVICES`` accepts, and what each stands for."""


def opted_out() -> frozenset[str]:
    """The services listed in ``CONVEYOR_TEST_SKIP_SERVICES``; an unknown name is refused."""
    listed = {name.strip() for name in os.environ.get(SKIP_VARIABLE, "").split(",")}
    listed.discard("")
    unknown = sorted(listed - SERVICES.keys())
    if unknown:
        raise pytest.UsageError(
            f"{SKIP_VARIABLE}={os.environ[SKIP_VARIABLE]!r} names no service {unknown}; "
            f"it takes a comma-separated list of {', '.join(SERVICES)}"
        )
    return frozenset(listed)


def unavailable(service: str, reason: str) -> NoReturn:
    """Fail the test (or skip it, where ``service`` is opted out) for ``reason``, which
    says what could not be reached and how to provide it."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; add it to SERVICES")
    in_ci = os.environ.get("CI") == "true"
    if service in opted_out() and not in_ci:
        pytest.skip(f"{reason} (skipped: {SKIP_VARIABLE} lists {service})")
    opt_out = (
        f"CI=true ignores {SKIP_VARIABLE}"
        if in_ci
        else f"or, on a machine without {SERVICES[service]}, set {SKIP_VARIABLE}={service} "
        "to skip these tests"
    )
    pytest.fail(f"{reason}; {opt_out}", pytrace=False)
