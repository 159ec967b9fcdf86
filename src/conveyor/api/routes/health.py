"""``/health`` (the seed's shape, always 200 while the process serves) and ``/ready``
(database reachable and schema current, else 503); both answer ``HEAD`` too.

The seed's ``health.memory.node`` is the API process (the seed's API ran on Node.js):
``rss`` is its resident set and ``heapUsed`` its private resident memory (RSS less the
pages shared with other processes, Python's nearest equivalent of V8's used heap).
``health.memory.python`` is the workers (the seed's ran in Python), from the RSS each live
worker writes with its heartbeat. ``health.queues`` has one entry per queue (the seed's
job types are queues): ``waiting`` counts the queued jobs, due or scheduled, and
``activeJobs`` the running ones; ``due``, ``scheduled`` and ``paused`` are Conveyor's own.

``/health`` is for people and liveness probes: restarting the process would not bring a
database back, so a database outage shows as ``"degraded"``, not as an error status.
``/ready`` is for load balancers and readiness probes: send traffic here only when 200.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import psutil
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from conveyor.api.access import Access, caller_for
from conveyor.api.deps import get_api
from conveyor.api.errors import STORE_RETRY_AFTER_S, error_response
from conveyor.api.schemas import (
    HealthDetail,
    HealthMemory,
    HealthOut,
    MemoryOut,
    Problem,
    QueueHealth,
    ReadyOut,
    WorkerMemory,
    WorkersMemory,
    due,
)
from conveyor.api.state import ApiState
from conveyor.logs import get_logger
from conveyor.store.base import StoreError
from conveyor.store.records import JobState, WorkerInfo

router = APIRouter(tags=["health"], dependencies=[Depends(caller_for(Access.PUBLIC))])
log = get_logger("api")

_PROCESS = psutil.Process()
_MIB = 1024 * 1024


def memory(threshold_mb: float) -> MemoryOut:
    """This process's memory in MiB (see :class:`MemoryOut` for ``heapUsed``)."""
    info = _PROCESS.memory_info()
    shared = getattr(info, "shared", 0)  # Linux only; elsewhere heapUsed is the RSS
    return MemoryOut(
        rss=round(info.rss / _MIB, 1),
        heapUsed=round(max(0, info.rss - shared) / _MIB, 1),
        thresholdMB=threshold_mb if threshold_mb > 0 else None,
    )


def workers_memory(workers: list[WorkerInfo], threshold_mb: float) -> WorkersMemory:
    """The seed's ``memory.python`` from the live workers' heartbeats."""
    reported = [w.memory_mb for w in workers if w.memory_mb is not None]
    largest = max(reported) if reported else None
    status: Literal["ok", "high", "unknown"] = "unknown"
    if largest is not None:
        status = "high" if threshold_mb > 0 and largest > threshold_mb else "ok"
    return WorkersMemory(
        memory_mb=largest,
        status=status,
        workers=[WorkerMemory(id=w.id, memory_mb=w.memory_mb) for w in workers],
    )


async def health(api: Annotated[ApiState, Depends(get_api)]) -> HealthOut:
    """Status, time, the API's and the workers' memory, and each queue's waiting and
    active jobs. Always 200: ``status`` is ``degraded`` when the database is unreachable
    or the API or a worker is above ``CONVEYOR_MAX_MEMORY_MB``."""
    mem = memory(api.settings.max_memory_mb)
    queues: dict[str, QueueHealth] = {}
    workers: list[WorkerInfo] = []
    database_ok = True
    try:
        for name, s in (await api.stats.current(api.client)).items():
            queues[name] = QueueHealth(
                waiting=s.counts.get(JobState.QUEUED.value, 0),
                activeJobs=s.running,
                due=due(s),
                scheduled=s.scheduled,
                paused=s.paused,
            )
        workers = await api.client.workers()
    except StoreError as exc:
        log.warning("health: database unreachable", error=str(exc))
        database_ok = False
    python = workers_memory(workers, api.settings.max_memory_mb)
    high = (mem.thresholdMB is not None and mem.rss > mem.thresholdMB) or python.status == "high"
    return HealthOut(
        status="healthy" if database_ok and not high else "degraded",
        timestamp=datetime.now(UTC),
        health=HealthDetail(
            memory=HealthMemory(node=mem, python=python),
            queues=queues,
            database="ok" if database_ok else "unreachable",
        ),
    )


router.add_api_route(
    "/health", health, methods=["GET"], summary="Health in the QuDemo seed's shape"
)
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


async def ready(
    request: Request, api: Annotated[ApiState, Depends(get_api)]
) -> ReadyOut | JSONResponse:
    """200 when the database answers and its schema is the one this code expects; 503
    with ``Retry-After`` and the reason otherwise."""
    try:
        applied, latest = await api.client.store.schema_status()
    except StoreError as exc:
        log.warning("ready: database unreachable", error=str(exc))
        return _not_ready(request, "the database is unreachable")
    if applied != latest:
        return _not_ready(
            request,
            f"database schema at version {applied}, this code needs {latest}: run "
            "`conveyor migrate`",
        )
    return ReadyOut(status="ready", schema_version=applied, latest_schema_version=latest)


router.add_api_route(
    "/ready",
    ready,
    methods=["GET"],
    summary="Readiness: database reachable, migrations current",
    response_model=ReadyOut,
    responses={503: {"model": Problem, "description": "Not ready; see Retry-After."}},
)
router.add_api_route(
    "/ready", ready, methods=["HEAD"], include_in_schema=False, response_model=ReadyOut
)


def _not_ready(request: Request, reason: str) -> JSONResponse:
    return error_response(request, 503, reason, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
