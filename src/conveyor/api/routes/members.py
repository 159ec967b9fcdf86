"""``/v1/members`` and ``/v1/invitations``: who belongs to the caller's tenant.

``ADMIN`` routes (role admin or owner, or an API key with the ``admin`` scope), but for
accepting an invitation, which any logged-in user does for the invitations to the
user's own email. Making, changing or removing an owner takes an owner; a tenant keeps
at least one owner (409). Another tenant's ids are not found (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from conveyor.accounts.service import Accounts
from conveyor.api.access import Access, caller_for
from conveyor.api.account_schemas import (
    AcceptIn,
    InvitationCreated,
    InvitationIn,
    InvitationList,
    InvitationOut,
    MemberList,
    MemberOut,
    RoleIn,
)
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_accounts
from conveyor.api.routes.common import (
    CONFLICT,
    NOT_FOUND,
    READ_ERRORS,
    WRITE_ERRORS,
    AccountId,
)

router = APIRouter(route_class=StrictJsonRoute, responses=READ_ERRORS)
Admin = Annotated[Caller, Depends(caller_for(Access.ADMIN))]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]


@router.post(
    "/v1/invitations",
    status_code=201,
    tags=["members"],
    responses=WRITE_ERRORS,
    summary="Invite someone into the tenant",
)
async def invite(body: InvitationIn, caller: Admin, accounts: AccountsDep) -> InvitationCreated:
    """An invitation of ``email`` as ``role``, valid for
    ``CONVEYOR_INVITATION_SECONDS``; its ``token`` is shown only in this answer."""
    invitation, token = await accounts.invite(caller, body.email, body.role)
    return InvitationCreated(invitation=InvitationOut.of(invitation), token=token)


@router.get("/v1/invitations", tags=["members"], summary="List the tenant's invitations")
async def list_invitations(caller: Admin, accounts: AccountsDep) -> InvitationList:
    """Pending, accepted and revoked invitations, newest first (never their tokens)."""
    found = await accounts.list_invitations(caller)
    return InvitationList(invitations=[InvitationOut.of(i) for i in found])


@router.delete(
    "/v1/invitations/{invitation_id}",
    status_code=204,
    tags=["members"],
    responses=NOT_FOUND,
    summary="Revoke an invitation",
)
async def revoke_invitation(
    invitation_id: AccountId, caller: Admin, accounts: AccountsDep
) -> Response:
    """The invitation can no longer be accepted. None pending with this id: 404."""
    await accounts.revoke_invitation(caller, invitation_id)
    return Response(status_code=204)


@router.post(
    "/v1/invitations/accept",
    tags=["members"],
    responses={**WRITE_ERRORS, **NOT_FOUND},
    summary="Accept an invitation as the logged-in user",
)
async def accept_invitation(
    body: AcceptIn,
    caller: Annotated[Caller, Depends(caller_for(Access.AUTHENTICATED))],
    accounts: AccountsDep,
) -> MemberOut:
    """Join the invitation's tenant with its role; log in to that tenant next
    (``/v1/auth/login`` with its ``tenant_id``). An invitation for another email: 403;
    an unknown, used, revoked or expired one: 404."""
    return MemberOut.of(await accounts.accept(caller, body.token))


@router.get("/v1/members", tags=["members"], summary="List the tenant's members")
async def list_members(caller: Admin, accounts: AccountsDep) -> MemberList:
    """Every member with its role, oldest first."""
    return MemberList(members=[MemberOut.of(m) for m in await accounts.members(caller)])


@router.patch(
    "/v1/members/{user_id}",
    tags=["members"],
    responses={**WRITE_ERRORS, **NOT_FOUND, **CONFLICT},
    summary="Change a member's role",
)
async def set_role(
    user_id: AccountId, body: RoleIn, caller: Admin, accounts: AccountsDep
) -> MemberOut:
    """The member's new role; the member's next access token carries it. Unmaking the
    last owner: 409."""
    return MemberOut.of(await accounts.set_role(caller, user_id, body.role))


@router.delete(
    "/v1/members/{user_id}",
    status_code=204,
    tags=["members"],
    responses={**NOT_FOUND, **CONFLICT},
    summary="Remove a member",
)
async def remove_member(user_id: AccountId, caller: Admin, accounts: AccountsDep) -> Response:
    """The member leaves the tenant and its sessions in it are revoked; access tokens
    already issued run out within their lifetime. The last owner: 409."""
    await accounts.remove_member(caller, user_id)
    return Response(status_code=204)
