"""``/v1/queues``: the engine's queue statistics; pause, resume and cluster-wide limits.

Queues are shared by every tenant (a queue is where workers take jobs from): the
statistics are ``READ`` (a tenant's own jobs' counts; every tenant's for an operator;
pauses, limits and workers are every tenant's); pause, resume and limits change every
tenant's work, so they are ``OPERATOR`` routes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from conveyor.api.access import Access, caller_for, scope_of
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api
from conveyor.api.routes.common import NOT_FOUND, READ_ERRORS
from conveyor.api.schemas import QueueLimitIn, QueueList, QueueOut
from conveyor.api.state import ApiState
from conveyor.engine.errors import QueueNotFound
from conveyor.engine.kinds import QUEUE_NAME

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/queues", tags=["queues"], responses=READ_ERRORS
)

QueueName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=f"^{QUEUE_NAME.pattern}$",
        description="Letters, digits, '_', '.' or '-'.",
    ),
]


@router.get("", summary="Queue statistics")
async def list_queues(
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueList:
    """Every queue that has jobs, a live worker or a setting: the tenant's jobs by state, due and
    scheduled, running against its limit, oldest due age, recent run times, which kinds
    its live workers serve and the queued jobs of kinds none of them runs."""
    stats = await api.client.queues(tenant_id=scope_of(caller))
    return QueueList(queues=[QueueOut.of(s) for s in stats])


async def _change(api: ApiState, name: str, change: Awaitable[None]) -> QueueOut:
    try:
        await change
    except QueueNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    api.stats.invalidate()
    for stats in await api.client.queues():
        if stats.name == name:
            return QueueOut.of(stats)
    raise AssertionError(f"queue {name!r} has a setting, so it is listed")


@router.post("/{name}/pause", responses=NOT_FOUND, summary="Pause a queue")
async def pause_queue(
    name: QueueName,
    caller: Annotated[Caller, Depends(caller_for(Access.OPERATOR))],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueOut:
    """Workers stop claiming the queue's jobs; running jobs finish; submissions are
    still accepted. Pausing a paused queue changes nothing. A queue with no jobs, no
    setting and no live worker: 404."""
    return await _change(api, name, api.client.pause(name))


@router.post("/{name}/resume", responses=NOT_FOUND, summary="Resume a queue")
async def resume_queue(
    name: QueueName,
    caller: Annotated[Caller, Depends(caller_for(Access.OPERATOR))],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueOut:
    """Workers claim the queue's jobs again. An unknown queue: 404."""
    return await _change(api, name, api.client.resume(name))


@router.post("/{name}/limit", responses=NOT_FOUND, summary="Set a queue's cluster-wide limit")
async def limit_queue(
    name: QueueName,
    body: QueueLimitIn,
    caller: Annotated[Caller, Depends(caller_for(Access.OPERATOR))],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueOut:
    """At most ``limit`` jobs of the queue run at once across all workers; ``null``
    removes the cap (each worker's own limit still holds). An unknown queue: 404."""
    return await _change(api, name, api.client.set_limit(name, body.limit))
