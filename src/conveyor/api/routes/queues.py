"""``/v1/queues``: the engine's queue statistics; pause and resume.

Queues are shared by every tenant (a queue is where workers take jobs from), so these are
operator routes; they still take their caller from :func:`get_caller`, so the accounts
issue can restrict them to operators in one place.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api, get_caller
from conveyor.api.routes.common import READ_ERRORS
from conveyor.api.schemas import QueueList, QueueOut
from conveyor.api.state import ApiState
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
    caller: Annotated[Caller, Depends(get_caller)],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueList:
    """Every queue that has jobs, a live worker or a setting: jobs by state, due and
    scheduled, running against its limit, oldest due age, and recent run times."""
    stats = await api.client.queues()
    return QueueList(queues=[QueueOut.of(s) for s in stats])


async def _set_paused(api: ApiState, name: str, paused: bool) -> QueueOut:
    if paused:
        await api.client.pause(name)
    else:
        await api.client.resume(name)
    api.stats.invalidate()
    for stats in await api.client.queues():
        if stats.name == name:
            return QueueOut.of(stats)
    raise AssertionError(f"queue {name!r} has a setting, so it is listed")


@router.post("/{name}/pause", summary="Pause a queue")
async def pause_queue(
    name: QueueName,
    caller: Annotated[Caller, Depends(get_caller)],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueOut:
    """Workers stop claiming the queue's jobs; running jobs finish; submissions are
    still accepted. Pausing a paused queue changes nothing."""
    return await _set_paused(api, name, True)


@router.post("/{name}/resume", summary="Resume a queue")
async def resume_queue(
    name: QueueName,
    caller: Annotated[Caller, Depends(get_caller)],
    api: Annotated[ApiState, Depends(get_api)],
) -> QueueOut:
    """Workers claim the queue's jobs again."""
    return await _set_paused(api, name, False)
