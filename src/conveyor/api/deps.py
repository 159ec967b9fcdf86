"""What every route depends on: who calls (:class:`Caller`, yielded by
:func:`conveyor.api.access.caller_for`), the shared state, the request id (set by
``middleware.ConveyorMiddleware``, re-exported here).

Routes take the tenant from the :class:`Caller` and hold no tenant logic of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from conveyor.api.request_id import request_id
from conveyor.store.accounts import Role

if TYPE_CHECKING:
    from conveyor.api.state import ApiState

__all__ = ["Caller", "get_api", "request_id"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the fields of ``conveyor.accounts.Principal`` (the plan of issue
    12), which this type becomes once the accounts service is merged."""

    tenant_id: str | None
    """The tenant whose data the call may see; None only for an operator without one."""
    caller_id: str
    """``user:usr_…`` or ``key:key_…``: idempotency keys and rate limits are per caller."""
    role: Role | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    operator: bool = False
    rate_limit: str | None = None
    """The tenant's per-caller budget; None: ``CONVEYOR_RATE_LIMIT_PER_CALLER``."""


async def get_api(request: Request) -> ApiState:
    """The application's :class:`~conveyor.api.state.ApiState`.

    Async so that FastAPI calls it on the event loop: a sync dependency costs a hop to
    the thread pool on every request."""
    api: ApiState = request.app.state.conveyor
    return api
