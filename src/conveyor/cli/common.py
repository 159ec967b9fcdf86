"""What the commands share: their common options, the settings, the exit codes and how a
command's coroutine runs (see :mod:`conveyor.cli.main` for the contract)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from conveyor.config import Settings
from conveyor.engine.client import Client
from conveyor.engine.errors import ConveyorError, JobConflict, NotFound
from conveyor.engine.kinds import import_modules
from conveyor.logs import get_logger
from conveyor.store import StoreError
from conveyor.store.urls import redact
from conveyor.workloads import MODULES as WORKLOAD_MODULES

T = TypeVar("T")

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_CONFLICT = 3

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="sqlite:///PATH or postgresql://... (overrides CONVEYOR_DATABASE_URL; "
        "default sqlite:///./conveyor.db).",
    ),
]
ImportOption = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        "-i",
        help="Module that defines job kinds, e.g. conveyor.workloads.demo (repeatable; adds "
        "to CONVEYOR_IMPORTS).",
    ),
]


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as the one line ``conveyor: error: ...`` and exit with ``code``."""
    # One line, whatever the message holds (click's usage errors span several; a value
    # quoted back may hold a newline or a lone surrogate).
    line = " ".join(message.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    sys.stderr.write(f"conveyor: error: {line}\n")
    raise SystemExit(code)


def load_settings(database_url: str | None = None) -> Settings:
    """The ``CONVEYOR_*`` settings, with ``--database-url`` over the environment's."""
    try:
        if database_url is not None:
            return Settings(database_url=database_url)
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CONVEYOR_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise CliError(f"bad setting: {problems}") from exc


def log_database(settings: Settings) -> None:
    """Say where a long-running command keeps its jobs, loudly when no URL was given."""
    url = redact(settings.database_url)
    if "database_url" in settings.model_fields_set:
        get_logger("cli").info("database", database=url)
        return
    get_logger("cli").warning(
        "no database URL given (--database-url or CONVEYOR_DATABASE_URL): using the "
        "default SQLite file; processes on another database do not see these jobs",
        database=url,
    )


def load_kinds(settings: Settings, extra: list[str] | None) -> None:
    """Import the modules of ``CONVEYOR_IMPORTS`` and ``--import``."""
    try:
        import_modules([*settings.imports, *(extra or [])])
    except ImportError as exc:
        missing = exc.__cause__
        if isinstance(missing, ModuleNotFoundError) and (missing.name or "").startswith(
            "conveyor."
        ):
            raise CliError(
                f"{exc} (Conveyor's own job modules are {', '.join(WORKLOAD_MODULES)})"
            ) from exc
        raise CliError(str(exc)) from exc


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it is with uvicorn[standard], except on
    Windows); None: asyncio's own. A worker runs faster on it (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an error it raises exits with its code."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except JobConflict as exc:
        fail(str(exc), EXIT_CONFLICT)
    except (ConveyorError, StoreError, ValueError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)


async def with_client(
    settings: Settings, action: Callable[[Client], Awaitable[T]], *, migrate: bool = True
) -> T:
    """``action`` on a client of the settings' database, closed after."""
    client = await Client.connect(settings, migrate=migrate)
    async with client:
        return await action(client)
