"""``/v1/auth`` and ``/v1/me``: signup, login, refresh, logout, and who calls.

Signup, login and refresh are ``PUBLIC`` and count against the client address
(``CONVEYOR_RATE_LIMIT_PER_IP``); a login also counts against its account
(``CONVEYOR_LOGIN_RATE_PER_ACCOUNT``), failed or not, before the password is checked. A
refused login answers the one 401 whatever was wrong (unknown email, wrong password,
disabled user), after the same work, so neither the message nor the time tells which
accounts exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from conveyor.accounts.service import Accounts
from conveyor.api.access import Access, caller_for
from conveyor.api.account_schemas import (
    InvitedSignupIn,
    LoginIn,
    MeOut,
    RefreshIn,
    SessionOut,
    SignupBody,
)
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_accounts
from conveyor.api.ratelimit import limit_account
from conveyor.api.routes.common import (
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    READ_ERRORS,
    UNAUTHORIZED,
    WRITE_ERRORS,
)

router = APIRouter(route_class=StrictJsonRoute, tags=["auth"], responses=READ_ERRORS)
public = [Depends(caller_for(Access.PUBLIC))]


@router.post(
    "/v1/auth/signup",
    status_code=201,
    dependencies=public,
    responses={**WRITE_ERRORS, **CONFLICT, **NOT_FOUND},
    summary="Sign up: a new tenant and its owner, or an invited account",
)
async def signup(
    body: SignupBody,
    accounts: Annotated[Accounts, Depends(get_accounts)],
) -> SessionOut:
    """With ``email``, ``password`` and ``tenant_name``: a new tenant whose owner is the
    new account. With ``invitation_token`` and ``password``: the account of the email the
    invitation names, joining its tenant with its role (an unknown, used, revoked or
    expired invitation: 404). Either way the new user is logged in. An email that has
    an account: 409 (log in, then accept the invitation)."""
    if isinstance(body, InvitedSignupIn):
        session = await accounts.signup_invited(body.invitation_token, body.password)
    else:
        session = await accounts.signup(body.email, body.password, body.tenant_name)
    return SessionOut.of(session)


@router.post(
    "/v1/auth/login",
    dependencies=public,
    responses={**WRITE_ERRORS, **UNAUTHORIZED, **FORBIDDEN},
    summary="Log in with email and password",
)
async def login(
    body: LoginIn,
    request: Request,
    accounts: Annotated[Accounts, Depends(get_accounts)],
) -> SessionOut:
    """A session in ``tenant_id``, or in the user's only tenant. A user of several
    tenants who names none: 422 listing them (``detail[0].ctx.tenant_ids``); a tenant the
    user is not in: 403. Too many attempts for the account or from the address: 429
    with Retry-After."""
    await limit_account(request, body.email.strip().lower())
    return SessionOut.of(await accounts.login(body.email, body.password, body.tenant_id))


@router.post(
    "/v1/auth/refresh",
    dependencies=public,
    responses={**WRITE_ERRORS, **UNAUTHORIZED},
    summary="Trade a refresh token for a new session",
)
async def refresh(
    body: RefreshIn, accounts: Annotated[Accounts, Depends(get_accounts)]
) -> SessionOut:
    """A new access token and a new refresh token; the one sent is used up. Sending a
    used one again revokes the whole session (both copies): 401."""
    return SessionOut.of(await accounts.refresh(body.refresh_token))


@router.post(
    "/v1/auth/logout",
    status_code=204,
    responses={**WRITE_ERRORS, **UNAUTHORIZED},
    summary="Log out: revoke a session's refresh tokens",
)
async def logout(
    body: RefreshIn,
    caller: Annotated[Caller, Depends(caller_for(Access.AUTHENTICATED))],
    accounts: Annotated[Accounts, Depends(get_accounts)],
) -> Response:
    """The session's refresh tokens stop working at once; its access tokens run out
    within their lifetime. An unknown refresh token is no error."""
    await accounts.logout(body.refresh_token)
    return Response(status_code=204)


@router.get("/v1/me", responses=UNAUTHORIZED, summary="Who calls")
async def me(
    caller: Annotated[Caller, Depends(caller_for(Access.AUTHENTICATED))],
    accounts: Annotated[Accounts, Depends(get_accounts)],
) -> MeOut:
    """The caller's tenant, role and scopes; for a user, the account and its tenants;
    for an API key, the key (without its secret)."""
    return MeOut.of(await accounts.me(caller))
