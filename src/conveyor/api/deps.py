"""What every route depends on: who calls (:func:`get_caller`), the shared state, the
request id (set by ``middleware.ConveyorMiddleware``, re-exported here).

:func:`get_caller` is the one authentication dependency. Until the accounts issue brings
JWT and tenants, it yields the default tenant's anonymous caller; routes take the tenant
from the :class:`Caller` it returns and hold no tenant logic of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from conveyor.api.ratelimit import limit_caller
from conveyor.api.request_id import request_id
from conveyor.store.records import DEFAULT_TENANT

if TYPE_CHECKING:
    from conveyor.api.state import ApiState

__all__ = ["ANONYMOUS", "Caller", "admit", "get_api", "get_caller", "request_id"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant whose data the call may see, and the caller within it
    (idempotency keys are per caller)."""

    tenant_id: str
    caller_id: str


ANONYMOUS = Caller(tenant_id=DEFAULT_TENANT, caller_id="anonymous")


async def get_caller(request: Request) -> Caller:
    """The authenticated caller.

    Until the accounts issue, every call is the default tenant's ``anonymous`` caller.
    What the call may then do is decided by :func:`admit`.
    """
    return await admit(request, ANONYMOUS)


async def admit(request: Request, caller: Caller) -> Caller:
    """Leave ``caller`` in ``request.state.caller`` and count the call against its rate
    limit (429 above it); return it. Whoever authenticates a caller ends with this.

    The anonymous caller is not limited per caller: it stands for every unauthenticated
    client at once, which would then share one budget. The per-address limit covers
    those clients, each on its own.
    """
    request.state.caller = caller
    if caller != ANONYMOUS:
        await limit_caller(request, caller)
    return caller


async def get_api(request: Request) -> ApiState:
    """The application's :class:`~conveyor.api.state.ApiState`.

    Async so that FastAPI calls it on the event loop: a sync dependency costs a hop to
    the thread pool on every request."""
    api: ApiState = request.app.state.conveyor
    return api
