"""``/health`` (the seed's shape, always 200 while the process serves) and ``/ready``
(database reachable and schema current, else 503).

``/health`` is for people and liveness probes: restarting the process would not bring a
database back, so a database outage shows as ``"degraded"``, not as an error status.
``/ready`` is for load balancers and readiness probes: send traffic here only when 200.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import psutil
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from conveyor.api.deps import get_api
from conveyor.api.errors import STORE_RETRY_AFTER_S, error_response
from conveyor.api.schemas import (
    HealthDetail,
    HealthOut,
    MemoryOut,
    Problem,
    QueueHealth,
    ReadyOut,
    due,
)
from conveyor.api.state import ApiState
from conveyor.logs import get_logger
from conveyor.store.base import StoreError

router = APIRouter(tags=["health"])
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


@router.get("/health", summary="Health in the QuDemo seed's shape")
async def health(api: Annotated[ApiState, Depends(get_api)]) -> HealthOut:
    """Status, time, this process's memory and each queue's waiting and active jobs.
    Always 200: ``status`` is ``degraded`` when the database is unreachable or memory is
    above ``CONVEYOR_MAX_MEMORY_MB``."""
    mem = memory(api.settings.max_memory_mb)
    queues: dict[str, QueueHealth] = {}
    database_ok = True
    try:
        for name, s in (await api.stats.current(api.client)).items():
            queues[name] = QueueHealth(
                waiting=due(s), activeJobs=s.running, scheduled=s.scheduled, paused=s.paused
            )
    except StoreError as exc:
        log.warning("health: database unreachable", error=str(exc))
        database_ok = False
    high = mem.thresholdMB is not None and mem.rss > mem.thresholdMB
    return HealthOut(
        status="healthy" if database_ok and not high else "degraded",
        timestamp=datetime.now(UTC),
        health=HealthDetail(
            memory=mem, queues=queues, database="ok" if database_ok else "unreachable"
        ),
    )


@router.get(
    "/ready",
    summary="Readiness: database reachable, migrations current",
    response_model=ReadyOut,
    responses={503: {"model": Problem, "description": "Not ready; see Retry-After."}},
)
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


def _not_ready(request: Request, reason: str) -> JSONResponse:
    return error_response(request, 503, reason, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
