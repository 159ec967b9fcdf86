"""The PostgreSQL server the tests use: found, started if need be, given a fresh database."""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import subprocess
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from conveyor.store.postgres import PostgresStore
from missing_service import unavailable

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO = (
    "start a PostgreSQL 15+ server where the user may create databases, or point "
    "CONVEYOR_TEST_POSTGRES_URL at one, e.g. postgresql://postgres@127.0.0.1:5432/postgres"
)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _reachable(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def _start_local_cluster() -> None:
    """Start the machine's own cluster the way this machine kind starts it."""
    for version_dir in sorted(glob.glob("/etc/postgresql/*")):
        version = os.path.basename(version_dir)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


class PgTestServer:
    """A database of this test session's own on a reachable server."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url = admin_url
        self.database = database
        self.url = _with_database(admin_url, database)

    @classmethod
    def find_or_start(cls) -> PgTestServer:
        """A fresh database on the server the tests were pointed at (started if it is the
        local default); a test fails where there is none (see :mod:`missing_service`)."""
        admin_url = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", DEFAULT_URL)
        error = asyncio.run(_reachable(admin_url))
        if error is not None and admin_url == DEFAULT_URL:
            _start_local_cluster()
            error = asyncio.run(_reachable(admin_url))
        if error is not None:
            unavailable(
                "postgresql", f"PostgreSQL at {admin_url} is unreachable ({error}); {HOW_TO}"
            )
        server = cls(admin_url, f"conveyor_test_{secrets.token_hex(4)}")
        asyncio.run(server._create())
        return server

    async def _create(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()
        store = PostgresStore(self.url)
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    def empty(self) -> None:
        """Remove every row the previous test left."""

        async def truncate() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                tables = await conn.fetchval(
                    "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
                    "WHERE schemaname = current_schema() AND tablename LIKE 'conveyor%' "
                    "AND tablename <> 'conveyor_schema'"
                )
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
            finally:
                await conn.close()

        asyncio.run(truncate())

    def create_database(self) -> str:
        """A further fresh, migrated database (for tests that run processes); its URL."""
        other = PgTestServer(self.admin_url, f"{self.database}_{secrets.token_hex(3)}")
        asyncio.run(other._create())
        return other.url

    def drop(self) -> None:
        async def drop_all() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                names = await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1",
                    f"{self.database}%",
                )
                for row in names:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop_all())
