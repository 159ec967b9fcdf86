"""``conveyor jobs``: list, show, cancel and retry jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli import output
from conveyor.cli.common import DatabaseUrlOption, JsonFlag, load_settings, run, with_client
from conveyor.engine.client import Client
from conveyor.engine.limits import MAX_ID
from conveyor.store.records import Job, JobState

app = typer.Typer(help="List, show, cancel and retry jobs.", no_args_is_help=True)


@app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="queued, running, completed, ...")] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before: Annotated[
        int | None, typer.Option(min=1, max=MAX_ID, help="Page: ids below this one.")
    ] = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List jobs, newest first."""
    settings = load_settings(database_url)
    jobs = run(
        with_client(
            settings,
            lambda c: c.list(state=state, queue=queue, kind=kind, limit=limit, before_id=before),
        )
    )
    if json:
        output.print_json([j.to_json() for j in jobs])
    else:
        output.emit(output.jobs_table(jobs) if jobs else "no jobs")


JobId = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="The job id.")]


@app.command("show")
def jobs_show(
    job_id: JobId, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Show one job with its error history and, while it is queued, which live workers
    would run it (none: it waits until a worker that has its kind starts)."""

    async def show(client: Client) -> tuple[Job, list[str] | None]:
        job = await client.get(job_id)
        if job.state is JobState.QUEUED:
            return job, [w.id for w in await client.serving(job)]
        return job, None

    job, serving = run(with_client(load_settings(database_url), show))
    _show(job, json, serving)


@app.command("cancel")
def jobs_cancel(
    job_id: JobId, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Cancel a queued job, or stop a running one (a finished one: exit code 3)."""
    _show(run(with_client(load_settings(database_url), lambda c: c.cancel(job_id))), json)


@app.command("retry")
def jobs_retry(
    job_id: JobId, json: JsonFlag = False, database_url: DatabaseUrlOption = None
) -> None:
    """Queue a failed or cancelled job again (any other: exit code 3)."""
    _show(run(with_client(load_settings(database_url), lambda c: c.retry(job_id))), json)


def _show(job: Job, json: bool, serving: list[str] | None = None) -> None:
    """One job; ``serving``: the live workers that would run it, for a queued job."""
    if json:
        data = job.to_json()
        if serving is not None:
            data["served_by"] = serving
        output.print_json(data)
    else:
        output.emit(output.job_details(job, serving))
