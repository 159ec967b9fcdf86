"""``/v1/api-keys``: the tenant's keys for server-to-server callers (``ADMIN``).

A key's text is shown once, in the answer that creates it; listings show its visible
``prefix``. A caller grants only scopes it holds. Revoking is immediate: the next call
with the key answers 401.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from conveyor.accounts.service import Accounts
from conveyor.api.access import Access, caller_for
from conveyor.api.account_schemas import ApiKeyCreated, ApiKeyIn, ApiKeyList, ApiKeyOut
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_accounts
from conveyor.api.routes.common import NOT_FOUND, READ_ERRORS, WRITE_ERRORS, AccountId

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/api-keys", tags=["api keys"], responses=READ_ERRORS
)
Admin = Annotated[Caller, Depends(caller_for(Access.ADMIN))]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]


@router.post("", status_code=201, responses=WRITE_ERRORS, summary="Create an API key")
async def create_api_key(body: ApiKeyIn, caller: Admin, accounts: AccountsDep) -> ApiKeyCreated:
    """A new key with ``scopes`` (at most the caller's own), expiring after ``ttl_s``
    seconds or never. ``key`` is its text, shown only now: send it as ``Authorization:
    Bearer``."""
    key, text = await accounts.create_api_key(caller, body.name, body.scopes, body.ttl_s)
    return ApiKeyCreated(api_key=ApiKeyOut.of(key), key=text)


@router.get("", summary="List the tenant's API keys")
async def list_api_keys(caller: Admin, accounts: AccountsDep) -> ApiKeyList:
    """Every key of the tenant, newest first, revoked ones included: prefix, name,
    scopes, created, last used, expiry; never the secret."""
    return ApiKeyList(api_keys=[ApiKeyOut.of(k) for k in await accounts.list_api_keys(caller)])


@router.delete("/{key_id}", status_code=204, responses=NOT_FOUND, summary="Revoke an API key")
async def revoke_api_key(key_id: AccountId, caller: Admin, accounts: AccountsDep) -> Response:
    """The key stops working at once. No active key with this id in the tenant: 404."""
    await accounts.revoke_api_key(caller, key_id)
    return Response(status_code=204)
