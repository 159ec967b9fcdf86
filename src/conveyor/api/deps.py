"""What every route depends on: who calls (:class:`Caller`, yielded by
:func:`conveyor.api.access.caller_for`), the shared state, the accounts service, the
request id (set by ``middleware.ConveyorMiddleware``, re-exported here).

Routes take the tenant from the :class:`Caller` and hold no tenant logic of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request
from starlette.requests import HTTPConnection

from conveyor.accounts.principal import Principal
from conveyor.accounts.service import Accounts
from conveyor.api.request_id import request_id
from conveyor.store.base import StoreError

if TYPE_CHECKING:
    from conveyor.api.state import ApiState

__all__ = ["Caller", "get_accounts", "get_api", "request_id"]

Caller = Principal
"""Who is calling: the accounts service's :class:`~conveyor.accounts.Principal`."""


async def get_api(request: HTTPConnection) -> ApiState:
    """The application's :class:`~conveyor.api.state.ApiState` (for WebSocket routes
    too, hence the connection rather than the request).

    Async so that FastAPI calls it on the event loop: a sync dependency costs a hop to
    the thread pool on every request."""
    api: ApiState = request.app.state.conveyor
    return api


async def get_accounts(request: Request) -> Accounts:
    """The application's accounts service (``app.state.accounts``), set once the store
    is open; until then the database is unavailable (503)."""
    accounts: Accounts | None = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise StoreError("the database has not been reached yet")
    return accounts
