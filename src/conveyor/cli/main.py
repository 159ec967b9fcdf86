"""The ``conveyor`` command.

The CLI is a contract other tools rely on: ``--json`` prints machine-readable output, bad
input prints one line ``conveyor: error: ...`` naming what is wrong and exits with 2
(nothing is written), a job id or a queue that does not exist exits with 1, and an
operation the job's state does not allow (cancel a finished job, retry one that has
not failed or been cancelled: the API's 409) exits with 3. Numbers and text are held
to the limits of :mod:`conveyor.engine.limits`, the API's and the Client's. Output is
written whole or the command fails: 141 when its reader went away (`| head`), 74 on
other write errors.

Every command takes ``--database-url``, which overrides ``CONVEYOR_DATABASE_URL``. The
long-running ones (worker, serve, api) log the database they use at start, and warn when
it is the default SQLite file because no URL was given: a worker left on that file while
the others use PostgreSQL would otherwise sit idle without a word.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from typing import Annotated, Any

import typer

from conveyor.cli import accounts, jobs, limits, output
from conveyor.cli.common import (
    EXIT_BAD_INPUT,
    CliError,
    DatabaseUrlOption,
    ImportOption,
    JsonFlag,
    fail,
    load_kinds,
    load_settings,
    log_database,
    run,
    with_client,
)
from conveyor.config import Settings
from conveyor.engine.client import Client
from conveyor.engine.errors import ConveyorError
from conveyor.engine.limits import MAX_ATTEMPTS, MAX_CONCURRENCY, excerpt, loads
from conveyor.engine.worker import Worker, WorkerConfig
from conveyor.logs import configure_logging, get_logger
from conveyor.store import StoreError, make_store

log = get_logger("cli")

app = typer.Typer(
    name="conveyor",
    help="Durable asynchronous jobs on SQLite or PostgreSQL.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(jobs.app, name="jobs")
app.add_typer(accounts.tenants, name="tenants")
app.add_typer(accounts.users, name="users")
app.add_typer(accounts.api_keys, name="api-keys")
app.add_typer(accounts.keys, name="keys")
app.command("bootstrap-demo")(accounts.bootstrap_demo)
app.add_typer(limits.app, name="limits")


# -- commands ---------------------------------------------------------------------------
@app.command()
def migrate(json: JsonFlag = False, database_url: DatabaseUrlOption = None) -> None:
    """Create or upgrade the database schema (also done at every start-up)."""
    settings = load_settings(database_url)

    async def go() -> tuple[list[int], tuple[int, int]]:
        store = make_store(settings)
        await store.open()
        try:
            return await store.migrate(), await store.schema_status()
        finally:
            await store.close()

    applied, (current, _latest) = run(go())
    if json:
        output.print_json({"applied": applied, "version": current})
    elif applied:
        versions = ", ".join(map(str, applied))
        output.emit(f"applied migrations {versions}; schema at version {current}")
    else:
        output.emit(f"schema is current (version {current})")


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Queues to serve, comma-separated; NAME:N sets a queue's limit."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_CONCURRENCY, help="Jobs run at once per queue (default 10)."),
    ] = None,
    import_: ImportOption = None,
    burst: Annotated[
        bool, typer.Option("--burst", help="Exit once no due job is left (scripts, CI).")
    ] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Run jobs of the registered kinds until SIGTERM or SIGINT (then finish or hand back
    running jobs). It claims only the kinds it has; others wait for a worker that has them."""
    settings = load_settings(database_url)
    configure_logging(settings.log_level, settings.log_format)
    load_kinds(settings, import_)
    try:
        config = WorkerConfig.from_settings(
            settings, queues.split(",") if queues else None, concurrency
        )
    except (ValueError, ConveyorError) as exc:
        raise CliError(f"--queues: {exc}") from exc

    log_database(settings)

    async def go() -> None:
        # A SIGTERM while starting (connecting, migrating, importing) ends the command
        # cleanly, not by the signal's default action; the worker takes the signals over
        # once it runs (its handlers are in place before anything else can run).
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        from conveyor.engine.kinds import registry
        from conveyor.notify.service import dispatching, install, with_notify_queues, worker_kinds

        store = make_store(settings)
        await store.open()
        try:
            await store.migrate()
            kinds = worker_kinds(registry)
            notify = install(kinds, store, settings)
            served = replace(config, queues=with_notify_queues(config.queues, settings))
            async with dispatching(notify):
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                if stopped.is_set():
                    log.info("signal received while starting; stopping")
                    return
                await Worker(store, served, kinds=kinds).run(burst=burst, handle_signals=True)
        finally:
            await store.close()

    run(go())


HostOption = Annotated[
    str | None, typer.Option(help="Address to listen on (default CONVEYOR_HOST, 127.0.0.1).")
]
PortOption = Annotated[
    int | None,
    typer.Option(min=0, max=65535, help="Port to listen on (default CONVEYOR_PORT, 8000)."),
]


def _listen_settings(host: str | None, port: int | None, database_url: str | None) -> Settings:
    settings = load_settings(database_url)
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    # Validated again, not copied: what follows the port (the public URL) follows it.
    return Settings.model_validate({**settings.model_dump(exclude_unset=True), **changes})


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    queues: Annotated[
        str | None,
        typer.Option(
            help="Queues the worker serves, comma-separated, NAME:N for a limit (default: "
            "CONVEYOR_QUEUES if set, else default and every kind's queue, video:2, qa:10)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_CONCURRENCY, help="Jobs run at once per queue (default 10)."),
    ] = None,
    import_: ImportOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Run the HTTP API and a worker in one process until SIGTERM or SIGINT."""
    settings = _listen_settings(host, port, database_url)
    configure_logging(settings.log_level, settings.log_format)
    load_kinds(settings, import_)
    # FastAPI and uvicorn load only for the commands that serve HTTP.
    from conveyor.cli import serve as serving
    from conveyor.engine.kinds import registry
    from conveyor.workloads import register_builtin

    register_builtin(registry)
    if queues:
        spec = queues.split(",")
    elif "queues" in settings.model_fields_set:
        spec = settings.queues
    else:
        spec = serving.default_queues(registry, settings)
    try:
        config = WorkerConfig.from_settings(settings, spec, concurrency)
    except (ValueError, ConveyorError) as exc:
        raise CliError(f"--queues: {exc}") from exc
    log_database(settings)
    run(serving.run(settings, registry, config))


@app.command()
def api(
    host: HostOption = None,
    port: PortOption = None,
    import_: ImportOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Run the HTTP API alone (beside `conveyor worker` processes) until SIGTERM or SIGINT."""
    settings = _listen_settings(host, port, database_url)
    configure_logging(settings.log_level, settings.log_format)
    load_kinds(settings, import_)
    from conveyor.cli import serve as serving
    from conveyor.engine.kinds import registry

    log_database(settings)
    run(serving.run(settings, registry, None))


@app.command()
def enqueue(
    kind: Annotated[str, typer.Argument(help="The job kind, e.g. reports.build.")],
    payload: Annotated[str, typer.Option(help="The payload as JSON.")] = "{}",
    queue: Annotated[str | None, typer.Option(help="Queue (default: the kind's).")] = None,
    priority: Annotated[int | None, typer.Option(help="1 (first) to 10.")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it may run.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help=f"Attempts before it fails (1 to {MAX_ATTEMPTS}).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds an attempt may run.")] = None,
    unique_key: Annotated[
        str | None, typer.Option(help="While a job with this key is active, return it.")
    ] = None,
    import_: ImportOption = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Enqueue a job and print its id.

    A kind registered here (--import, CONVEYOR_IMPORTS) takes its defaults and has its
    payload validated now; any other kind is enqueued by name with the system defaults
    (queue default, priority 3), its payload checked by the worker that runs it."""
    settings = load_settings(database_url)
    load_kinds(settings, import_)
    try:
        data = loads(payload, "--payload")
    except ConveyorError as exc:
        raise CliError(f"{exc} (given: {excerpt(payload)})") from exc
    # Validate before opening the database, so bad input writes nothing.
    try:
        store = make_store(settings)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    client = Client(store)
    options: dict[str, Any] = {"queue": queue, "priority": priority, "delay": delay}
    options.update(max_attempts=max_attempts, unique_key=unique_key)
    if timeout is not None:
        options["timeout"] = timeout
    try:
        new = client.prepare(kind, data, **options)
    except ConveyorError as exc:
        raise CliError(str(exc)) from exc

    async def go() -> Any:
        result = await with_client(settings, lambda c: c.enqueue_many([new]))
        return result[0]

    result = run(go())
    if json:
        output.print_json(
            {
                "id": result.id,
                "created": result.created,
                "kind": new.kind,
                "queue": new.queue,
                "priority": new.priority,
            }
        )
    else:
        output.emit(str(result.id))


@app.command()
def queues(
    json: JsonFlag = False,
    pause: Annotated[str | None, typer.Option(help="Pause this queue.")] = None,
    resume: Annotated[str | None, typer.Option(help="Resume this queue.")] = None,
    limit: Annotated[
        str | None,
        typer.Option(help="QUEUE:N - at most N jobs of QUEUE run at once across all workers."),
    ] = None,
    no_limit: Annotated[
        str | None, typer.Option(help="Remove the cluster-wide limit of this queue.")
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Show every queue's jobs by state, running against limit, age and run times, which
    kinds its live workers serve, and the queued jobs of kinds none of them runs."""
    settings = load_settings(database_url)
    cap: tuple[str, int] | None = None
    if limit is not None:
        name, _, n = limit.partition(":")
        if not (n.isdigit() and len(n) <= 6 and 1 <= int(n) <= MAX_CONCURRENCY):
            raise CliError(
                f"--limit {excerpt(limit)}: write QUEUE:N with N an integer from 1 to "
                f"{MAX_CONCURRENCY}"
            )
        cap = (name, int(n))

    async def go(client: Client) -> list[Any]:
        if pause:
            await client.pause(pause)
        if resume:
            await client.resume(resume)
        if cap is not None:
            await client.set_limit(*cap)
        if no_limit:
            await client.set_limit(no_limit, None)
        return await client.queues()

    stats = run(with_client(settings, go))
    if json:
        output.print_json([s.to_json() for s in stats])
    elif stats:
        output.emit(output.queues_table(stats) + "\n" + output.queues_kinds(stats))
    else:
        output.emit("no queues yet: enqueue a job or start a worker")


# -- entry point ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit codes: 0 ok, 1 no such job or queue, 2 bad input, 3 conflict, 74
    the output could not be written, 141 its reader went away."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="conveyor", standalone_mode=False)
    except CliError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors: unknown option, bad integer, ...
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `conveyor` or `conveyor jobs` alone asks for the help page: not an error.
            output.emit(exc.format_message())
            raise SystemExit(0) from None
        fail(exc.format_message(), EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
