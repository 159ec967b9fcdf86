"""``/v1/jobs``: jobs as operators see them, with their error history and tracebacks.

Scoped to the caller's tenant like everything else: a job of another tenant answers 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.exceptions import RequestValidationError

from conveyor.api.access import Access, caller_for, scope_of
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api
from conveyor.api.errors import validation_detail
from conveyor.api.pagination import DEFAULT_LIMIT, decode_cursor, next_cursor
from conveyor.api.routes.common import (
    CONFLICT,
    NOT_FOUND,
    READ_ERRORS,
    CreatedAfter,
    CreatedBefore,
    Cursor,
    KindFilter,
    Limit,
    ResourceId,
    StateAlias,
    StateFilter,
    epoch,
)
from conveyor.api.schemas import JobOut, JobPage
from conveyor.api.state import ApiState
from conveyor.store.records import Job, JobFilter, JobState

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/jobs", tags=["jobs"], responses=READ_ERRORS
)

QueueFilter = Annotated[str | None, Query(max_length=100, description="Only this queue.")]


async def find_job(api: ApiState, caller: Caller, job_id: int) -> Job:
    """The caller's tenant's job, or 404 (the store finds no other tenant's)."""
    job = await api.client.store.get_job(job_id, scope_of(caller))
    if job is None:
        raise HTTPException(404, f"no job with id {job_id}")
    return job


@router.get("", summary="List jobs, newest first")
async def list_jobs(
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    state: StateFilter = None,
    status: StateAlias = None,
    kind: KindFilter = None,
    queue: QueueFilter = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> JobPage:
    """The tenant's jobs, newest first; follow ``next_cursor`` for more. ``state``
    filters by the job's state (``status`` is accepted as its alias)."""
    if state is not None and status is not None and state != status:
        raise RequestValidationError(
            validation_detail(
                f"state={state.value} and status={status.value} disagree: give one",
                loc=("query", "status"),
            )
        )
    rows = await api.client.store.list_jobs(
        JobFilter(
            state=state if state is not None else status,
            queue=queue,
            kind=kind,
            tenant_id=scope_of(caller),
            limit=limit + 1,
            before_id=decode_cursor(cursor),
            created_after=epoch(created_after, "created_after"),
            created_before=epoch(created_before, "created_before"),
        )
    )
    return JobPage(
        items=[JobOut.of(j) for j in rows[:limit]],
        next_cursor=next_cursor([j.id for j in rows], limit),
    )


@router.get("/{job_id}", responses=NOT_FOUND, summary="Show a job")
async def get_job(
    job_id: ResourceId,
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
) -> JobOut:
    """One job with one error entry (and traceback) per failed attempt; for a queued job,
    which live workers would run it (``served_by``)."""
    job = await find_job(api, caller, job_id)
    if job.state is not JobState.QUEUED:
        return JobOut.of(job)
    return JobOut.of(job, [w.id for w in await api.client.serving(job)])


@router.post("/{job_id}/cancel", responses={**NOT_FOUND, **CONFLICT}, summary="Cancel a job")
async def cancel_job(
    job_id: ResourceId,
    caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    api: Annotated[ApiState, Depends(get_api)],
) -> JobOut:
    """Cancel a queued job, or ask the worker of a running one to stop it. A completed
    or failed job: 409; a cancelled one is returned as it is (the rule is the Client's,
    so the CLI refuses the same)."""
    await find_job(api, caller, job_id)
    return JobOut.of(await api.client.cancel(job_id, tenant_id=scope_of(caller)))


@router.post("/{job_id}/retry", responses={**NOT_FOUND, **CONFLICT}, summary="Retry a job")
async def retry_job(
    job_id: ResourceId,
    caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    api: Annotated[ApiState, Depends(get_api)],
) -> JobOut:
    """Queue a failed or cancelled job again now (one more attempt if it had none
    left). Any other state: 409."""
    await find_job(api, caller, job_id)
    return JobOut.of(await api.client.retry(job_id, tenant_id=scope_of(caller)))
