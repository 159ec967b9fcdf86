"""The QuDemo backend's routes, answering as its README shows, on the same engine.

===========================================  =========================================
route                                        does
===========================================  =========================================
``POST /api/video/process``                  submit ``video.process`` (queue ``video``)
``POST /api/interactions/{id}/questions``    submit ``qa.answer`` (queue ``qa``)
``GET /api/queue/status``                    waiting/active/... per queue, memory
``GET /api/queue/jobs/{type}/{id}``          one ``video`` or ``qa`` job
``GET /api/queue/monitor``                   the status, also written to the log
===========================================  =========================================

Submissions answer ``{success, message, data: {jobId, queuePosition, estimatedWaitTime,
status, requestId}}`` (202; 200 for an ``Idempotency-Key`` repeat). As in the seed,
``queuePosition`` counts this job too (1: it is next) and ``estimatedWaitTime`` is text:
from when it should start to when it should finish, by the queue's median run time
(``"unknown"`` before any job of the queue ran). Statuses use the seed's words
(``processing`` for running). Errors answer ``{success: false, message, detail}``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.access import Access, caller_for, scope_of
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api, request_id
from conveyor.api.routes.common import (
    CONFLICT,
    MAX_ID,
    NOT_FOUND,
    READ_ERRORS,
    WRITE_ERRORS,
    IdempotencyKey,
)
from conveyor.api.routes.health import memory
from conveyor.api.schemas import MemoryOut, Timestamp, at_utc, due, utc
from conveyor.api.state import ApiState
from conveyor.api.submit import Submission, submit
from conveyor.logs import get_logger
from conveyor.store.records import JSON, Job, JobState
from conveyor.workloads import qa, video

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/api", tags=["QuDemo seed"], responses=READ_ERRORS
)
log = get_logger("api")

KIND_OF_TYPE = {"video": video.KIND, "qa": qa.KIND}
SEED_STATUS: dict[JobState, SeedStatus] = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "processing",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}
SeedStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]


class SeedJobData(BaseModel):
    jobId: int
    queuePosition: int | None
    estimatedWaitTime: str
    status: SeedStatus
    requestId: int


class SeedAccepted(BaseModel):
    success: Literal[True] = True
    message: str
    data: SeedJobData


class QuestionBody(BaseModel):
    """The seed's question body."""

    model_config = ConfigDict(extra="ignore")

    question: str = Field(min_length=1, max_length=4000)
    companyName: str = Field(min_length=1, max_length=200)


class SeedQueue(BaseModel):
    waiting: int
    activeJobs: int
    scheduled: int
    completed: int
    failed: int
    paused: bool
    limit: int | None


class SeedStatusData(BaseModel):
    queues: dict[str, SeedQueue]
    memory: MemoryOut


class SeedStatusOut(BaseModel):
    success: Literal[True] = True
    message: str | None = None
    data: SeedStatusData


class SeedJob(BaseModel):
    jobId: int
    type: Literal["video", "qa"]
    status: SeedStatus
    progress: float | None = Field(description="Percent, 0 to 100.")
    message: str | None
    data: JSON = Field(description="The job's input.")
    result: JSON
    error: str | None = Field(description="The last failed attempt's message.")
    attempts: int
    maxAttempts: int
    createdAt: Timestamp
    startedAt: Timestamp | None
    completedAt: Timestamp | None


class SeedJobOut(BaseModel):
    success: Literal[True] = True
    data: SeedJob


SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SeedAccepted, "description": "Idempotent repeat: the first one."},
    **WRITE_ERRORS,
    **CONFLICT,
}


def wait_text(wait_s: float | None, run_s: float | None) -> str:
    """``"10-30 seconds"``, ``"4-10 minutes"``: from the expected start to the expected
    end. Without a run time, only the start: ``"starting now"``, ``"about 2 minutes"``;
    ``"unknown"`` without an estimate."""
    if wait_s is None:
        return "unknown"
    if run_s is None:
        return "starting now" if wait_s < 1 else f"about {_amount(wait_s, wait_s)}"
    low, high = wait_s, wait_s + run_s
    return _amount(low, high)


def _amount(low: float, high: float) -> str:
    if high < 90:
        lo, hi, unit = math.floor(low), max(1, math.ceil(high)), "second"
    else:
        lo, hi, unit = math.floor(low / 60), math.ceil(high / 60), "minute"
    if lo < hi:
        return f"{lo}-{hi} {unit}s"
    return f"{hi} {unit}" + ("" if hi == 1 else "s")


async def _accepted(
    api: ApiState, done: Submission, response: Response, message: str
) -> SeedAccepted:
    stats = (await api.stats.get(api.client)).get(done.request.job.queue)
    response.status_code = 202 if done.created else 200
    return SeedAccepted(
        message=message,
        data=SeedJobData(
            jobId=done.request.job.id,
            queuePosition=None if done.queue_position is None else done.queue_position + 1,
            estimatedWaitTime=wait_text(
                done.estimated_wait_s, stats.run_time_p50_s if stats else None
            ),
            status=SEED_STATUS[done.request.job.state],
            requestId=done.request.id,
        ),
    )


@router.post("/video/process", status_code=202, responses=SUBMIT_RESPONSES)
async def process_video(
    body: video.VideoInput,
    request: Request,
    response: Response,
    caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    api: Annotated[ApiState, Depends(get_api)],
    idempotency_key: IdempotencyKey = None,
) -> SeedAccepted:
    """Queue a video for processing (``video.process``, priority 2)."""
    done = await submit(
        api,
        caller,
        video.KIND,
        body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        request_id=request_id(request),
        http=request,
    )
    return await _accepted(api, done, response, "Video processing queued successfully")


@router.post("/interactions/{interactionId}/questions", status_code=202, responses=SUBMIT_RESPONSES)
async def ask_question(
    interactionId: Annotated[str, Path(min_length=1, max_length=200)],
    body: QuestionBody,
    request: Request,
    response: Response,
    caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    api: Annotated[ApiState, Depends(get_api)],
    idempotency_key: IdempotencyKey = None,
) -> SeedAccepted:
    """Queue a question for AI processing (``qa.answer``, priority 1)."""
    payload = {
        "interaction_id": interactionId,
        "question": body.question,
        "company_name": body.companyName,
    }
    done = await submit(
        api,
        caller,
        qa.KIND,
        payload,
        idempotency_key=idempotency_key,
        request_id=request_id(request),
        http=request,
    )
    return await _accepted(api, done, response, "Question queued for AI processing")


async def _status(api: ApiState, caller: Caller) -> SeedStatusData:
    tenant = scope_of(caller)
    if tenant is None:
        stats = await api.stats.get(api.client, fresh=True)
    else:
        # A tenant's own counts; the cache holds every tenant's, for admission.
        stats = {s.name: s for s in await api.client.queues(tenant_id=tenant)}
    queues = {
        name: SeedQueue(
            waiting=due(s),
            activeJobs=s.running,
            scheduled=s.scheduled,
            completed=s.counts.get(JobState.COMPLETED.value, 0),
            failed=s.counts.get(JobState.FAILED.value, 0),
            paused=s.paused,
            limit=s.limit,
        )
        for name, s in stats.items()
    }
    for name in (video.QUEUE, qa.QUEUE):
        queues.setdefault(
            name,
            SeedQueue(
                waiting=0,
                activeJobs=0,
                scheduled=0,
                completed=0,
                failed=0,
                paused=False,
                limit=None,
            ),
        )
    return SeedStatusData(queues=queues, memory=memory(api.settings.max_memory_mb))


@router.get("/queue/status")
async def queue_status(
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
) -> SeedStatusOut:
    """Waiting, active, scheduled, completed and failed jobs per queue, and memory."""
    return SeedStatusOut(data=await _status(api, caller))


@router.get("/queue/monitor")
async def queue_monitor(
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
) -> SeedStatusOut:
    """The queue status, also written to the server log (the seed printed it)."""
    data = await _status(api, caller)
    log.info(
        "queue monitor",
        queues={name: q.model_dump() for name, q in data.queues.items()},
        rss_mb=data.memory.rss,
    )
    return SeedStatusOut(message="Queue status logged", data=data)


@router.get("/queue/jobs/{type}/{id}", responses=NOT_FOUND)
async def queue_job(
    type: Literal["video", "qa"],
    id: Annotated[int, Path(ge=1, le=MAX_ID)],
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
) -> SeedJobOut:
    """One job of the seed's types by job id: status, progress, result, last error."""
    job = await api.client.store.get_job(id, scope_of(caller))
    if job is None or job.kind != KIND_OF_TYPE[type]:
        raise HTTPException(404, f"no {type} job with id {id}")
    return SeedJobOut(data=_seed_job(job, type))


def _seed_job(job: Job, type_: Literal["video", "qa"]) -> SeedJob:
    return SeedJob(
        jobId=job.id,
        type=type_,
        status=SEED_STATUS[job.state],
        progress=None if job.progress is None else round(job.progress * 100, 1),
        message=job.progress_message,
        data=job.payload,
        result=job.result,
        error=job.errors[-1].message if job.errors else None,
        attempts=job.attempt,
        maxAttempts=job.max_attempts,
        createdAt=at_utc(job.created_at),
        startedAt=utc(job.started_at),
        completedAt=utc(job.finished_at),
    )
