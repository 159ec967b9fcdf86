"""``/v1/queues/{name}/tenant-limits``: what each tenant may do in a queue, for platform
operators (``OPERATOR``): a cluster-wide cap on its running jobs, a cap on its
submissions into the queue (``POST /v1/requests`` answers 429 past it, see
:mod:`conveyor.api.submit`) and its weight in the queue's turns. The same as
``conveyor limits``.

A ``PUT`` replaces the tenant's limits: a field left out or null is lifted; all null
removes the tenant's row. The queue need not exist yet. A new rate cap holds in this
process at once and in the other API processes within a second (they re-read the caps at
most that often).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.access import Access, caller_for
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api
from conveyor.api.errors import validation_detail
from conveyor.api.routes.common import READ_ERRORS, WRITE_ERRORS
from conveyor.api.state import ApiState
from conveyor.api.submit import submission_caps
from conveyor.engine import limits
from conveyor.engine.kinds import QUEUE_NAME
from conveyor.engine.limits import LimitError
from conveyor.store.records import TenantLimits

router = APIRouter(
    route_class=StrictJsonRoute,
    prefix="/v1/queues",
    tags=["queues"],
    responses=READ_ERRORS,
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
TenantId = Annotated[
    str, Path(min_length=1, max_length=limits.MAX_TENANT_LENGTH, description="The tenant's id.")
]


class TenantLimitsIn(BaseModel):
    """A tenant's limits in a queue; null (or left out): not limited."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int | None = Field(
        None,
        ge=1,
        le=limits.MAX_CONCURRENCY,
        strict=True,
        description="The tenant's jobs of the queue that may run at once, across all workers.",
    )
    rate: str | None = Field(
        None,
        max_length=100,
        description="Submissions into the queue, e.g. 100/minute or 5/10 seconds "
        "(N from 1 to 10^9 per M from 1 to 1000 seconds, minutes, hours or days).",
        examples=["100/minute"],
    )
    weight: int | None = Field(
        None,
        ge=1,
        le=limits.MAX_WEIGHT,
        strict=True,
        description="The tenant's share of the queue's claims against the others' (null: 1).",
    )


class TenantLimitsOut(BaseModel):
    """A tenant's limits in a queue."""

    queue: str
    tenant_id: str
    concurrency: int | None
    rate: str | None
    weight: int | None

    @classmethod
    def of(cls, limits: TenantLimits) -> TenantLimitsOut:
        return cls(**limits.to_json())


class TenantLimitsList(BaseModel):
    """The tenants' limits in a queue, by tenant."""

    limits: list[TenantLimitsOut]


@router.get("/{name}/tenant-limits", summary="A queue's tenant limits")
async def list_tenant_limits(
    name: QueueName,
    caller: Annotated[Caller, Depends(caller_for(Access.OPERATOR))],
    api: Annotated[ApiState, Depends(get_api)],
) -> TenantLimitsList:
    """Every tenant with a limit set in the queue, by tenant id; none: an empty list."""
    found = await api.client.tenant_limits(name)
    return TenantLimitsList(limits=[TenantLimitsOut.of(t) for t in found])


@router.put(
    "/{name}/tenant-limits/{tenant_id}",
    responses=WRITE_ERRORS,
    summary="Set a tenant's limits in a queue",
)
async def put_tenant_limits(
    name: QueueName,
    tenant_id: TenantId,
    body: TenantLimitsIn,
    caller: Annotated[Caller, Depends(caller_for(Access.OPERATOR))],
    api: Annotated[ApiState, Depends(get_api)],
) -> TenantLimitsOut:
    """Replace the tenant's limits in the queue (see the module docstring): the limits
    now set, all null once removed. A concurrency cap holds from the workers' next claim,
    a weight from their next turn."""
    try:
        set_to = await api.client.set_tenant_limits(
            name, tenant_id, concurrency=body.concurrency, rate=body.rate, weight=body.weight
        )
    except LimitError as exc:
        where = ("path", "tenant_id") if exc.loc == ("tenant_id",) else ("body", *exc.loc)
        raise RequestValidationError(validation_detail(str(exc), loc=where)) from None
    submission_caps(api).invalidate()
    return TenantLimitsOut.of(set_to or TenantLimits(name, tenant_id, None, None, None))
