"""The real ``conveyor`` command run in a subprocess against one test's database."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from conveyor.accounts import Accounts, Conflict, Principal
from conveyor.config import Settings
from conveyor.store import make_store
from conveyor.store.accounts import SCOPES
from conveyor.store.records import DEFAULT_TENANT


def conveyor_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "conveyor"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "conveyor.cli.main"]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


class Cli:
    """Runs ``conveyor ARGS`` against one test's database."""

    def __init__(self, tmp_path: Path) -> None:
        self.db_path = tmp_path / "c.db"
        self.url = f"sqlite:///{self.db_path}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        self.env.update(
            CONVEYOR_DATABASE_URL=self.url,
            CONVEYOR_IMPORTS="conveyor.workloads.demo",
            CONVEYOR_LOG_FORMAT="json",
        )

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Result:
        proc = subprocess.run(
            [*conveyor_command(), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        """Run and insist on exit code 0."""
        result = self(*args, env=env, cwd=cwd)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}: {result}"
        return result

    def enqueue(self, *args: str) -> int:
        """Enqueue with ``--json`` and return the new job's id."""
        data = self.ok("enqueue", *args, "--json").json()
        return int(data["id"])

    def show(self, job_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self.ok("jobs", "show", str(job_id), "--json").json()
        return data

    def job_count(self) -> int:
        """Rows in the jobs table, read straight from the file."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM conveyor_jobs").fetchone()[0])
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    """A ``conveyor serve`` (or ``api``) process started by the ``launch`` fixture."""

    def __init__(
        self, popen: subprocess.Popen[bytes], url: str, log: Path, database_url: str
    ) -> None:
        self.popen = popen
        self.url = url
        self.log = log
        self.database_url = database_url

    async def api_key(self) -> dict[str, str]:
        """Headers with a new API key of the ``default`` tenant with every scope, made
        on the server's database (the way ``conveyor api-keys`` does)."""
        return {"Authorization": f"Bearer {await provision_api_key(self.database_url)}"}

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                lines.append({"event": line.decode(errors="replace"), "level": "raw"})
        return lines


Launch = Callable[..., Served]
"""The ``launch`` fixture: ``launch("serve", **env)``."""


@contextlib.contextmanager
def launching(folder: Path) -> Iterator[Launch]:
    """``start("serve", **env)`` starts ``conveyor serve`` (or ``api``) on a free port with
    its database and JSON log in ``folder``; every process still alive is killed on exit."""
    started: list[Served] = []

    def start(command: str, **env_overrides: str) -> Served:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            CONVEYOR_DATABASE_URL=f"sqlite:///{folder}/{command}.db",
            CONVEYOR_PORT=str(port),
            CONVEYOR_LOG_FORMAT="json",
        )
        env.update(env_overrides)
        log = folder / f"{command}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*conveyor_command(), command], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        url = env["CONVEYOR_DATABASE_URL"]
        started.append(Served(popen, f"http://127.0.0.1:{port}", log, url))
        return started[-1]

    try:
        yield start
    finally:
        for served in started:
            if served.popen.poll() is None:
                served.popen.kill()
                served.popen.wait(10)


async def provision_api_key(database_url: str) -> str:
    """The text of a new API key of the ``default`` tenant (made if needed) with every
    scope, on the database at ``database_url`` (migrated first)."""
    settings = Settings(database_url=database_url)
    store = make_store(settings)
    await store.open()
    try:
        await store.migrate()
        accounts = Accounts(store, settings)
        with contextlib.suppress(Conflict):
            await accounts.create_tenant("Default", DEFAULT_TENANT)
        _, text = await accounts.create_api_key(
            Principal.console(), "cli tests", sorted(SCOPES), tenant_id=DEFAULT_TENANT
        )
    finally:
        await store.close()
    return text
