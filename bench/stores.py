"""The stores under test.

A :class:`Backend` knows how to make a fresh, empty database and hand out its URL, how to
read the jobs a run completed straight from the database, what to do after a bulk fill
(PostgreSQL: ``ANALYZE``) and which setting variants to measure (for SQLite:
``synchronous=FULL``, the durable default, and ``NORMAL``, the opt-in). A
:class:`StoreConfig` is one such variant; every benchmark takes one and asks it for a fresh
database per run.

- SQLite: a new file in a new temporary directory per run (``--tmpdir`` picks the disk).
- PostgreSQL: ``CREATE DATABASE conveyor_bench_<random>`` per run on the server of
  ``--postgres-url`` (an admin URL: its user must be allowed to create databases), dropped
  ``WITH (FORCE)`` afterwards. Nothing else on the server is read or changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from conveyor.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
STORES = ("sqlite", "postgresql")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB_PREFIX = "conveyor_bench_"


class Watcher(Protocol):
    async def first_queued_id(self) -> int:
        """The lowest id of a queued job (0 if none)."""
        ...

    async def finished(self, job_id: int) -> bool:
        """Whether job ``job_id`` has finished: one primary-key look-up."""
        ...


class BenchError(Exception):
    """A benchmark could not run or produced an invalid result."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One completed job as the database recorded it."""

    worker: str
    started_at: float
    """Set by the claim (PostgreSQL: ``now()``, the start of the claim's transaction)."""
    finished_at: float
    """Set by the transaction that recorded the completion."""


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


def span_of(completions: Sequence[Completion], first_n: int | None = None) -> JobSpan:
    """First claim of the run to the ``first_n``-th completion (default: the last)."""
    if not completions:
        return JobSpan(0, 0.0, 0.0)
    finished = sorted(c.finished_at for c in completions)
    n = len(finished) if first_n is None else min(first_n, len(finished))
    return JobSpan(n, min(c.started_at for c in completions), finished[n - 1])


def overlap_rate(completions: Sequence[Completion]) -> tuple[float, float]:
    """For several workers: completions per second while all of them were working (from
    the last worker's first claim to the first worker's last completion), and the share
    of the jobs the least busy worker ran. NaN rate if the workers never overlapped."""
    by_worker: dict[str, list[Completion]] = {}
    for c in completions:
        by_worker.setdefault(c.worker, []).append(c)
    if len(by_worker) < 2:
        return float("nan"), 0.0
    start = max(min(c.started_at for c in cs) for cs in by_worker.values())
    end = min(max(c.finished_at for c in cs) for cs in by_worker.values())
    share = min(len(cs) for cs in by_worker.values()) / len(completions)
    if end <= start:
        return float("nan"), share
    inside = sum(1 for c in completions if start < c.finished_at <= end)
    return inside / (end - start), share


class Backend(Protocol):
    name: str
    local_folder: str | None
    """A folder on the disk the database writes to, if that disk is on this machine (the
    latency benchmark measures its fsync time beside each run), else None."""
    default_concurrency: tuple[int, ...]
    """Worker concurrency rows of the throughput benchmark; the first is the headline."""
    polls_across_processes: bool
    """True if a worker in another process hears of new jobs by polling (SQLite)."""

    def variants(self, opt_in: bool) -> list[StoreConfig]:
        """The configurations to measure; the first is the default (durable) one."""
        ...

    def fresh_database(
        self, settings: dict[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """An empty database for one run; yields its URL and removes it afterwards.
        ``settings``: server settings for the database (PostgreSQL only)."""
        ...

    async def completions(self, url: str, min_id: int = 0) -> list[Completion]:
        """The completed jobs (with ``id >= min_id``)."""
        ...

    async def after_fill(self, url: str) -> None:
        """Run after a bulk fill, outside the timing (PostgreSQL: ``ANALYZE``)."""
        ...

    async def checkpoint(self) -> None:
        """Write out what the fills left in memory, so that a measurement does not pay for
        the write-back of a fill (PostgreSQL: ``CHECKPOINT``; SQLite commits durably)."""
        ...

    def watcher(self, url: str) -> contextlib.AbstractAsyncContextManager[Watcher]:
        """A connection for cheap repeated looks at single jobs."""
        ...

    def describe(self) -> dict[str, str]:
        """Versions and where the databases live, for the report."""
        ...


EVENTS_OFF_BENCHMARKS = frozenset({"enqueue", "throughput", "latency"})
"""Where the event log's cost is measured: the same figures with ``CONVEYOR_EVENTS=false``,
in the same run (docs/benchmarks.md)."""


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
    database_settings: dict[str, str] = field(default_factory=dict)
    """PostgreSQL: ``ALTER DATABASE ... SET`` for each fresh database of this variant."""
    benchmarks: frozenset[str] | None = None
    """The benchmarks this variant runs in (None: all of them)."""
    worker_settings: dict[str, str] = field(default_factory=dict)
    """PostgreSQL: server settings for ``conveyor worker`` subprocesses only, passed as
    query parameters of their database URL (asyncpg sends them at connect). For
    experiments (``--pg-worker-setting``); the bench's own enqueues are not affected."""

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``: which targets apply."""
        return self.backend.name

    def fresh_database(self) -> contextlib.AbstractAsyncContextManager[str]:
        return self.backend.fresh_database(self.database_settings)

    async def job_span(self, url: str, first_n: int | None = None) -> JobSpan:
        return span_of(await self.backend.completions(url), first_n)

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
        if self.worker_settings:
            query = "&".join(f"{k}={v}" for k, v in self.worker_settings.items())
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        env["CONVEYOR_DATABASE_URL"] = url
        env["CONVEYOR_LOG_LEVEL"] = "WARNING"
        env["CONVEYOR_LOG_FORMAT"] = "json"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return env


# -- SQLite ---------------------------------------------------------------------------------
class SqliteBackend:
    """A new file in a new temporary directory per run (``--tmpdir`` picks the disk)."""

    name = "sqlite"
    default_concurrency: tuple[int, ...] = (100, 10)
    polls_across_processes = True

    def __init__(self, tmpdir: str | None = None) -> None:
        # Resolved once, so the database paths under it are absolute and free of links.
        self.tmpdir = os.path.realpath(tmpdir or tempfile.gettempdir())
        self.local_folder: str | None = self.tmpdir

    def variants(self, opt_in: bool) -> list[StoreConfig]:
        configs = [
            StoreConfig(self, "sqlite synchronous=FULL", {"CONVEYOR_SQLITE_SYNCHRONOUS": "FULL"}),
            StoreConfig(
                self,
                "sqlite synchronous=FULL events off",
                {"CONVEYOR_SQLITE_SYNCHRONOUS": "FULL", "CONVEYOR_EVENTS": "false"},
                default=False,
                benchmarks=EVENTS_OFF_BENCHMARKS,
            ),
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

    @contextlib.asynccontextmanager
    async def fresh_database(self, settings: dict[str, str] | None = None) -> AsyncIterator[str]:
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=self.tmpdir) as folder:
            yield f"sqlite:///{folder}/bench.db"

    async def completions(self, url: str, min_id: int = 0) -> list[Completion]:
        from conveyor.store.sqlite import sqlite_path

        def read() -> list[Completion]:
            with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn:
                rows = conn.execute(
                    "SELECT coalesce(locked_by, ''), started_at, finished_at FROM conveyor_jobs "
                    "WHERE state = 'completed' AND id >= ?",
                    (min_id,),
                ).fetchall()
            return [Completion(str(w), float(s), float(f)) for w, s, f in rows]

        return await asyncio.to_thread(read)

    async def after_fill(self, url: str) -> None:
        return None

    async def checkpoint(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def watcher(self, url: str) -> AsyncIterator[Watcher]:
        from conveyor.store.sqlite import sqlite_path

        conn = sqlite3.connect(sqlite_path(url), check_same_thread=False)
        try:
            yield _SqliteWatcher(conn)
        finally:
            conn.close()

    def describe(self) -> dict[str, str]:
        return {
            "store": self.name,
            "sqlite_version": sqlite3.sqlite_version,
            "database_folder": self.tmpdir,
            "filesystem": _filesystem(self.tmpdir),
        }


class _SqliteWatcher:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _first_queued_id(self) -> int:
        row = self.conn.execute("SELECT min(id) FROM conveyor_jobs WHERE state = 'queued'")
        return int(row.fetchone()[0] or 0)

    def _finished(self, job_id: int) -> bool:
        sql = "SELECT finished_at IS NOT NULL FROM conveyor_jobs WHERE id = ?"
        row = self.conn.execute(sql, (job_id,)).fetchone()
        return bool(row and row[0])

    async def first_queued_id(self) -> int:
        return await asyncio.to_thread(self._first_queued_id)

    async def finished(self, job_id: int) -> bool:
        return await asyncio.to_thread(self._finished, job_id)


# -- PostgreSQL -----------------------------------------------------------------------------
class PostgresBackend:
    """A ``CREATE DATABASE conveyor_bench_<random>`` per run on the server of the admin
    URL, dropped ``WITH (FORCE)`` afterwards."""

    name = "postgresql"
    default_concurrency: tuple[int, ...] = (100, 500)
    polls_across_processes = False

    def __init__(self, admin_url: str) -> None:
        parts = urlsplit(admin_url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise BenchError(
                f"--postgres-url {admin_url!r}: give postgresql://USER@HOST:PORT/DATABASE"
            )
        self.admin_url = admin_url
        self.local_folder: str | None = None
        self.info: dict[str, str] = {}

    async def check(self) -> None:
        """Connect once: fail early with a clear message, and note the server's settings."""
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise BenchError(
                f"cannot connect to PostgreSQL at {_safe(self.admin_url)} ({exc}); start a "
                "server or give --postgres-url (a user that may CREATE DATABASE)"
            ) from exc
        try:
            version = await conn.fetchval("SHOW server_version")
            self.info = {"store": self.name, "server_version": str(version)}
            for setting in (
                "synchronous_commit",
                "fsync",
                "shared_buffers",
                "max_connections",
                "autovacuum",
                "jit",
            ):
                self.info[setting] = str(await conn.fetchval(f"SHOW {setting}"))
            try:
                data_dir = str(await conn.fetchval("SHOW data_directory"))
            except asyncpg.PostgresError:
                data_dir = ""
        finally:
            await conn.close()
        self.info["server"] = _safe(self.admin_url).rsplit("/", 1)[0]
        if data_dir:
            self.info["data_directory"] = data_dir
            # The fsync probe writes to the system temporary folder when it is on the same
            # device as the server's data (never into the data directory itself).
            tmp = tempfile.gettempdir()
            with contextlib.suppress(OSError):
                if os.stat(tmp).st_dev == os.stat(data_dir).st_dev:
                    self.local_folder = tmp
                    self.info["filesystem"] = _filesystem(data_dir)

    def variants(self, opt_in: bool) -> list[StoreConfig]:
        return [
            StoreConfig(self, "postgresql"),
            StoreConfig(
                self,
                "postgresql events off",
                {"CONVEYOR_EVENTS": "false"},
                default=False,
                benchmarks=EVENTS_OFF_BENCHMARKS,
            ),
        ]

    @contextlib.asynccontextmanager
    async def fresh_database(self, settings: dict[str, str] | None = None) -> AsyncIterator[str]:
        name = f"{BENCH_DB_PREFIX}{secrets.token_hex(6)}"
        admin = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                for key, value in (settings or {}).items():
                    await admin.execute(f'ALTER DATABASE "{name}" SET {key} = {value}')
                yield urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{name}"))
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def completions(self, url: str, min_id: int = 0) -> list[Completion]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT coalesce(locked_by, ''), extract(epoch FROM started_at)::float8, "
                "extract(epoch FROM finished_at)::float8 FROM conveyor_jobs "
                "WHERE state = 'completed' AND id >= $1",
                min_id,
            )
        finally:
            await conn.close()
        return [Completion(r[0], r[1], r[2]) for r in rows]

    async def after_fill(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ANALYZE conveyor_jobs")
        finally:
            await conn.close()

    async def checkpoint(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            pass  # needs superuser or pg_checkpoint; the measurement then pays the write-back
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def watcher(self, url: str) -> AsyncIterator[Watcher]:
        conn = await asyncpg.connect(url)
        try:
            yield _PostgresWatcher(conn)
        finally:
            await conn.close()

    def describe(self) -> dict[str, str]:
        return dict(self.info)


class _PostgresWatcher:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def first_queued_id(self) -> int:
        value = await self.conn.fetchval(
            "SELECT id FROM conveyor_jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
        )
        return int(value or 0)

    async def finished(self, job_id: int) -> bool:
        value = await self.conn.fetchval(
            "SELECT finished_at IS NOT NULL FROM conveyor_jobs WHERE id = $1", job_id
        )
        return bool(value)


async def make_backend(
    name: str, *, tmpdir: str | None = None, postgres_url: str = DEFAULT_POSTGRES_URL
) -> Backend:
    if name == "sqlite":
        return SqliteBackend(tmpdir)
    if name == "postgresql":
        backend = PostgresBackend(postgres_url)
        await backend.check()
        return backend
    raise BenchError(f"--store {name!r}: use one of {', '.join(STORES)}")


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
