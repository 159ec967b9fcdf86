"""Real ``conveyor worker`` processes on one database, and ways to watch them.

:class:`Harness` starts workers (JSON logs to a file each), enqueues jobs through the
Python client, reads the database and waits on conditions with deadlines. Its
:meth:`Harness.close` kills every worker still alive, so no test leaves one behind.

The database is a temporary SQLite file unless the harness is given a ``postgresql://``
URL; :meth:`Harness.query` then takes PostgreSQL's ``$1`` placeholders instead of ``?``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
from proc_kinds import KINDS

from conveyor import Client

T = TypeVar("T")

HERE = Path(__file__).resolve().parent

FAST_LEASES = {
    "CONVEYOR_LEASE_SECONDS": "2",
    "CONVEYOR_HEARTBEAT_INTERVAL": "0.5",
    "CONVEYOR_RESCUE_INTERVAL": "0.5",
}


def conveyor_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "conveyor"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "conveyor.cli.main"]


class WorkerProcess:
    """One ``conveyor worker`` subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def logs(self) -> list[dict[str, Any]]:
        """The log lines so far, parsed; a line that is not JSON (a traceback, say) comes
        back as ``{"level": "raw", "event": line}`` so no output goes unseen."""
        entries: list[dict[str, Any]] = []
        for line in self.log_path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                entry = {"level": "raw", "event": line.decode(errors="replace")}
            entries.append(entry)
        return entries

    def find_log(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((e for e in self.logs() if predicate(e)), None)

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


READER = "conveyor-test-harness"
"""The ``application_name`` of the harness's own PostgreSQL connection."""


class PgReader:
    """A connection of the test process to a PostgreSQL database, on a private event
    loop so that sync tests can use it. Reconnects once if its connection was dropped (a
    test that terminates the database's backends may drop this one too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[asyncpg.Record]:
        for last_try in (False, True):
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = self._loop.run_until_complete(
                        asyncpg.connect(self.url, server_settings={"application_name": READER})
                    )
                return self._loop.run_until_complete(self._conn.fetch(sql, *params))
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                self._drop()
                if last_try:
                    raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            self._loop.run_until_complete(conn.close())
        self._loop.close()


class Harness:
    """Workers, a database and an output folder under one test's ``tmp_path``.

    ``url`` names the database (default: a new SQLite file under ``tmp_path``); a
    PostgreSQL database must exist and be migrated already.
    """

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.db_path = tmp_path / "jobs.db"
        self.url = url if url is not None else f"sqlite:///{self.db_path}"
        self.dialect = "postgresql" if self.url.startswith("postgres") else "sqlite"
        self._pg = PgReader(self.url) if self.dialect == "postgresql" else None
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.workers: list[WorkerProcess] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        pythonpath = [str(HERE), *filter(None, [env.get("PYTHONPATH")])]
        env.update(
            PYTHONPATH=os.pathsep.join(pythonpath),
            PROC_TEST_DIR=str(self.out),
            CONVEYOR_DATABASE_URL=self.url,
            CONVEYOR_LOG_FORMAT="json",
            CONVEYOR_LOG_LEVEL="INFO",
        )
        self.env = env

    # -- workers ---------------------------------------------------------------------
    def start_worker(self, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        name = f"worker-{len(self.workers) + 1}"
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [*conveyor_command(), "worker", "--import", "proc_worker", *args],
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run does not reach it
            )
        worker = WorkerProcess(name, popen, log_path)
        self.workers.append(worker)
        return worker

    def wait_started(self, worker: WorkerProcess, timeout: float = 15) -> None:
        """Until the worker has registered and logged ``worker started``."""
        self.wait_until(
            lambda: worker.find_log(lambda e: e.get("event") == "worker started"),
            timeout,
            f"{worker.name} to start",
        )

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.popen.kill()
            worker.popen.wait(10)
        if self._pg is not None:
            self._pg.close()

    # -- jobs ------------------------------------------------------------------------
    def enqueue(
        self, kind: str, payload: Any = None, *, count: int = 1, **options: Any
    ) -> list[int]:
        """Enqueue ``count`` jobs in one transaction through the Python client."""

        async def go() -> list[int]:
            async with await Client.connect(self.url, kinds=KINDS) as client:
                new = [client.prepare(kind, payload, **options) for _ in range(count)]
                return [e.id for e in await client.enqueue_many(new)]

        return asyncio.run(go())

    def cancel(self, job_id: int) -> str:
        """Cancel through the Python client, as another process would; the state after."""

        async def go() -> str:
            async with await Client.connect(self.url, kinds=KINDS) as client:
                return (await client.cancel(job_id)).state.value

        return asyncio.run(go())

    def set_queue_limit(self, queue: str, limit: int | None) -> None:
        """Set a cluster-wide limit through the Python client's store."""

        async def go() -> None:
            async with await Client.connect(self.url, kinds=KINDS) as client:
                await client.set_limit(queue, limit)

        asyncio.run(go())

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the database (SQLite: through a read-only connection of this process)."""
        if self._pg is not None:
            return [tuple(row) for row in self._pg.fetch(sql, params)]
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Like :meth:`query`, as dicts by column name; JSON columns decoded and times as
        Unix seconds, whatever the database."""
        if self._pg is not None:
            found = [dict(row) for row in self._pg.fetch(sql, params)]
        else:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
            conn.row_factory = sqlite3.Row
            try:
                found = [dict(row) for row in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        for row in found:
            for column, value in row.items():
                if column in ("payload", "result", "errors", "meta") and isinstance(value, str):
                    row[column] = orjson.loads(value)
                elif isinstance(value, datetime):
                    row[column] = value.timestamp()
        return found

    def job(self, job_id: int) -> dict[str, Any]:
        placeholder = "$1" if self.dialect == "postgresql" else "?"
        found = self.rows(f"SELECT * FROM conveyor_jobs WHERE id = {placeholder}", (job_id,))
        assert found, f"no job {job_id}"
        return found[0]

    def count(self, where: str = "1", params: tuple[Any, ...] = ()) -> int:
        return int(self.query(f"SELECT count(*) FROM conveyor_jobs WHERE {where}", params)[0][0])

    def started_by(self, job_id: int, attempt: int) -> int | None:
        """The pid of the worker that started that attempt (from its marker file)."""
        marker = self.out / f"started-{job_id}-{attempt}"
        text = marker.read_text() if marker.exists() else ""
        return int(text) if text else None

    # -- waiting ---------------------------------------------------------------------
    def wait_until(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """Poll ``condition`` until it returns something truthy, which is returned; fail
        with the workers' recent logs if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self}")
            time.sleep(0.02)

    def __str__(self) -> str:
        parts = []
        for w in self.workers:
            state = "alive" if w.alive() else f"exited {w.popen.returncode}"
            parts.append(f"--- {w.name} (pid {w.pid}, {state}):\n{w.tail()}")
        return "\n".join(parts)
