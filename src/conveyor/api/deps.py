"""What every route depends on: who calls (:func:`get_caller`), the shared state, the
request id (set by ``middleware.RequestIdMiddleware``, re-exported here).

:func:`get_caller` is the one authentication dependency. Until the accounts issue brings
JWT and tenants, it yields the default tenant's anonymous caller; routes take the tenant
from the :class:`Caller` it returns and hold no tenant logic of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from conveyor.api.middleware import request_id
from conveyor.api.ratelimit import limit_caller
from conveyor.store.records import DEFAULT_TENANT

if TYPE_CHECKING:
    from conveyor.api.state import ApiState

__all__ = ["ANONYMOUS", "Caller", "get_api", "get_caller", "request_id"]


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
    Counts the call against the caller's rate limit (429 above it) and leaves the
    caller in ``request.state.caller``.
    """
    caller = ANONYMOUS
    request.state.caller = caller
    await limit_caller(request, caller)
    return caller


def get_api(request: Request) -> ApiState:
    """The application's :class:`~conveyor.api.state.ApiState`."""
    api: ApiState = request.app.state.conveyor
    return api
