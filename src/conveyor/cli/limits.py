"""``conveyor limits``: set and list what each tenant may do in a queue (the operator's
fair-share controls): a cluster-wide cap on its running jobs, a cap on its submissions
(enforced by the API at admission) and its weight in the queue's turns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from conveyor.cli import output
from conveyor.cli.common import (
    CliError,
    DatabaseUrlOption,
    JsonFlag,
    load_settings,
    run,
    with_client,
)
from conveyor.engine import limits
from conveyor.engine.errors import ConveyorError
from conveyor.store.records import TenantLimits

app = typer.Typer(
    help="Set and list each tenant's limits in a queue: concurrency, submission rate, weight.",
    no_args_is_help=True,
)

QueueArgument = Annotated[str, typer.Argument(help="The queue, e.g. video.")]
TenantArgument = Annotated[str, typer.Argument(help="The tenant's id.")]


@app.command("set")
def limits_set(
    queue: QueueArgument,
    tenant: TenantArgument,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=limits.MAX_CONCURRENCY,
            help="At most N of the tenant's jobs of the queue run at once, across all workers.",
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            help="At most this many submissions into the queue, e.g. 100/minute or "
            "5/10 seconds (the API answers 429 past it)."
        ),
    ] = None,
    weight: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=limits.MAX_WEIGHT,
            help="The tenant's share of the queue's claims against the others' (default 1).",
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove every limit of the tenant in the queue.")
    ] = False,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Set TENANT's limits in QUEUE, replacing what was set: a limit left out is lifted."""
    given = concurrency is not None or rate is not None or weight is not None
    if given == clear:
        raise CliError(
            "limits set: give --concurrency, --rate or --weight, or --clear alone to "
            "remove the tenant's limits"
        )
    # Checked before the database opens, so bad input writes nothing.
    try:
        queue = limits.check_queue_name(queue)
        tenant = limits.check_tenant(tenant)
        rate = None if rate is None else limits.check_rate(rate, "--rate")
    except ConveyorError as exc:
        raise CliError(str(exc)) from exc
    settings = load_settings(database_url)
    set_to = run(
        with_client(
            settings,
            lambda c: c.set_tenant_limits(
                queue, tenant, concurrency=concurrency, rate=rate, weight=weight
            ),
        )
    )
    if json:
        empty = TenantLimits(queue, tenant, None, None, None)
        output.print_json((set_to or empty).to_json())
    elif set_to is None:
        output.emit(f"tenant {tenant!r} has no limits in queue {queue!r}")
    else:
        output.emit(_table([set_to]))


@app.command("list")
def limits_list(
    queue: Annotated[
        str | None, typer.Argument(help="Only this queue's (default: every queue's).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    json: JsonFlag = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List the tenants' limits, by queue and tenant."""
    try:
        queue = None if queue is None else limits.check_queue_name(queue)
        tenant = None if tenant is None else limits.check_tenant(tenant)
    except ConveyorError as exc:
        raise CliError(str(exc)) from exc
    settings = load_settings(database_url)
    found = run(with_client(settings, lambda c: c.tenant_limits(queue, tenant_id=tenant)))
    if json:
        output.print_json([t.to_json() for t in found])
    else:
        output.emit(_table(found) if found else "no tenant limits set")


def _table(rows: Sequence[TenantLimits]) -> str:
    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    return output.table(
        ["QUEUE", "TENANT", "CONCURRENCY", "RATE", "WEIGHT"],
        [[t.queue, t.tenant_id, cell(t.concurrency), cell(t.rate), cell(t.weight)] for t in rows],
    )
