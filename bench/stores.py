"""The stores under test.

A :class:`Backend` knows how to make a fresh, empty database and hand out its URL, how to
read the span of the jobs a run completed straight from the database, and which setting
variants to measure (for SQLite: ``synchronous=FULL``, the durable default, and
``NORMAL``, the opt-in). A :class:`StoreConfig` is one such variant; every benchmark takes
one and asks it for a fresh database per run. Adding PostgreSQL means adding a backend here
(``CREATE DATABASE`` per run on a server given on the command line) and listing it in
:func:`make_backend`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from conveyor.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
STORES = ("sqlite", "postgresql")


class BenchError(Exception):
    """A benchmark could not run or produced an invalid result."""


@dataclass(frozen=True, slots=True)
class JobSpan:
    """The completed jobs of a run as the database recorded them: from the first claim
    (``started_at``) to the last recorded completion (``finished_at``), which leaves out
    process start-up and shutdown."""

    completed: int
    first_started_at: float
    last_finished_at: float

    @property
    def seconds(self) -> float:
        return self.last_finished_at - self.first_started_at

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else float("nan")


class Backend(Protocol):
    name: str
    local_folder: str | None
    """A folder on the disk the database writes to, if that disk is on this machine (the
    latency benchmark measures its fsync time beside each run), else None."""

    def variants(self, opt_in: bool) -> list[StoreConfig]:
        """The configurations to measure; the first is the default (durable) one."""
        ...

    def fresh_database(self) -> contextlib.AbstractContextManager[str]:
        """An empty database for one run; yields its URL and removes it afterwards."""
        ...

    def job_span(self, url: str) -> JobSpan: ...

    def describe(self) -> dict[str, str]:
        """Versions and where the databases live, for the report."""
        ...


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """One store and setting variant under test."""

    backend: Backend
    label: str
    """For the report, e.g. ``sqlite synchronous=FULL``."""
    env: dict[str, str] = field(default_factory=dict)
    """``CONVEYOR_*`` settings of this variant besides the database URL."""
    default: bool = True
    """The store's default (durable) setting: the one the targets apply to."""

    def fresh_database(self) -> contextlib.AbstractContextManager[str]:
        return self.backend.fresh_database()

    def job_span(self, url: str) -> JobSpan:
        return self.backend.job_span(url)

    def settings(self, url: str) -> Settings:
        """Settings for code in this process (the bench clears ``CONVEYOR_*`` from its own
        environment at start, so only these values and the defaults apply)."""
        values = {key.removeprefix("CONVEYOR_").lower(): value for key, value in self.env.items()}
        return Settings.model_validate({**values, "database_url": url})

    def process_env(self, url: str) -> dict[str, str]:
        """Environment of a ``conveyor`` subprocess: this process's minus any ``CONVEYOR_*``,
        plus this variant's settings, quiet JSON logs and ``bench`` importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(self.env)
        env["CONVEYOR_DATABASE_URL"] = url
        env["CONVEYOR_LOG_LEVEL"] = "WARNING"
        env["CONVEYOR_LOG_FORMAT"] = "json"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return env


class SqliteBackend:
    """A new file in a new temporary directory per run (``--tmpdir`` picks the disk)."""

    name = "sqlite"

    def __init__(self, tmpdir: str | None = None) -> None:
        self.tmpdir = tmpdir or tempfile.gettempdir()
        self.local_folder: str | None = self.tmpdir

    def variants(self, opt_in: bool) -> list[StoreConfig]:
        configs = [
            StoreConfig(self, "sqlite synchronous=FULL", {"CONVEYOR_SQLITE_SYNCHRONOUS": "FULL"})
        ]
        if opt_in:
            configs.append(
                StoreConfig(
                    self,
                    "sqlite synchronous=NORMAL (opt-in)",
                    {"CONVEYOR_SQLITE_SYNCHRONOUS": "NORMAL"},
                    default=False,
                )
            )
        return configs

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=self.tmpdir) as folder:
            path = Path(folder).resolve() / "bench.db"
            yield f"sqlite:///{path}"

    def job_span(self, url: str) -> JobSpan:
        from conveyor.store.sqlite import sqlite_path

        with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn:
            count, first, last = conn.execute(
                "SELECT count(*), min(started_at), max(finished_at) FROM conveyor_jobs "
                "WHERE state = 'completed'"
            ).fetchone()
        return JobSpan(int(count), float(first or 0.0), float(last or 0.0))

    def describe(self) -> dict[str, str]:
        return {
            "store": self.name,
            "sqlite_version": sqlite3.sqlite_version,
            "database_folder": self.tmpdir,
            "filesystem": _filesystem(self.tmpdir),
        }


def make_backend(name: str, *, tmpdir: str | None = None) -> Backend:
    if name == "sqlite":
        return SqliteBackend(tmpdir)
    if name == "postgresql":
        raise BenchError(
            "--store postgresql: the PostgreSQL benchmarks are the next issue; they plug in "
            "here, in bench/stores.py, as a backend that creates a database per run on a "
            "server given on the command line"
        )
    raise BenchError(f"--store {name!r}: use one of {', '.join(STORES)}")


def _filesystem(path: str) -> str:
    """The file system type and device holding ``path`` (a tmpfs would make fsync free)."""
    target = os.path.realpath(path)
    found = ""
    mount_len = -1
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > mount_len:
            mount_len = len(mount)
            found = f"{part.fstype} ({part.device} on {mount})"
    return found or "unknown"
