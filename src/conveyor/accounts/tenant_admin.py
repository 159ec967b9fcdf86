"""What a tenant's admins do: invitations, members and roles, API keys. Each verb takes
the :class:`Principal` that asks and checks it first: the ``admin`` scope in its own
tenant, the owner role to make, unmake or remove owners, an operator alone for another
tenant (whose ids are not found, never forbidden)."""

from __future__ import annotations

from collections.abc import Iterable

from conveyor.accounts import api_keys
from conveyor.accounts.base import AccountsBase
from conveyor.accounts.checks import check_id, check_name, normalise_email
from conveyor.accounts.errors import Conflict, Forbidden, Invalid, NotFound
from conveyor.accounts.ids import digest, new_id, new_secret
from conveyor.accounts.principal import Principal
from conveyor.store.accounts import ApiKey, Invitation, Member, NewApiKey, Role
from conveyor.store.base import ConflictError, DataRejected


class TenantAdmin(AccountsBase):
    """Invitations, members and API keys of a tenant."""

    # -- invitations -----------------------------------------------------------------
    async def invite(
        self, principal: Principal, email: str, role: Role, tenant_id: str | None = None
    ) -> tuple[Invitation, str]:
        """Invite ``email`` into the tenant as ``role``; the token is shown only now."""
        tenant = self._managed_tenant(principal, tenant_id)
        self._check_may_grant(principal, role)
        token = new_secret("cvi")
        try:
            invitation = await self.store.create_invitation(
                new_id("inv"),
                tenant,
                normalise_email(email),
                role,
                digest(token),
                principal.user_id,
                self.settings.invitation_seconds,
            )
        except DataRejected:
            # Only an operator names a tenant other than its own: one that may not exist.
            raise NotFound(f"no tenant {tenant!r} (see `conveyor tenants list`)") from None
        return invitation, token

    async def list_invitations(
        self, principal: Principal, tenant_id: str | None = None
    ) -> list[Invitation]:
        """The tenant's invitations, newest first."""
        return await self.store.list_invitations(self._managed_tenant(principal, tenant_id))

    async def revoke_invitation(
        self, principal: Principal, invitation_id: str, tenant_id: str | None = None
    ) -> None:
        """Revoke a pending invitation; :class:`NotFound` if there is none such."""
        tenant = self._managed_tenant(principal, tenant_id)
        check_id("invitation_id", invitation_id)
        if not await self.store.revoke_invitation(tenant, invitation_id):
            raise NotFound(f"no pending invitation {invitation_id[:64]!r} in this tenant")

    async def accept(self, principal: Principal, token: str) -> Member:
        """Accept an invitation as the logged-in user whose email it names."""
        if principal.user_id is None:
            raise Forbidden("only a user accepts an invitation, not an API key")
        invitation = await self._valid_invitation(token)
        user = await self.store.get_user(principal.user_id)
        if user is None or user.email != invitation.email:
            raise Forbidden("invitation: it is for another email address")
        member = await self.store.accept_invitation(digest(token), user.id)
        if member is None:
            raise NotFound("invitation: not valid (accepted, revoked or expired)")
        return member

    # -- members ---------------------------------------------------------------------
    async def members(self, principal: Principal, tenant_id: str | None = None) -> list[Member]:
        """The tenant's members, oldest first."""
        return await self.store.list_members(self._managed_tenant(principal, tenant_id))

    async def set_role(
        self, principal: Principal, user_id: str, role: Role, tenant_id: str | None = None
    ) -> Member:
        """Change a member's role. Making or unmaking an owner takes an owner."""
        tenant = self._managed_tenant(principal, tenant_id)
        current = await self.store.get_role(tenant, check_id("user_id", user_id))
        if current is None:
            raise NotFound(f"no member {user_id[:64]!r} in this tenant")
        self._check_may_grant(principal, role)
        self._check_may_grant(principal, current)
        try:
            member = await self.store.set_role(tenant, user_id, role)
        except ConflictError as exc:
            raise Conflict(str(exc)) from None
        if member is None:
            raise NotFound(f"no member {user_id[:64]!r} in this tenant")
        return member

    async def remove_member(
        self, principal: Principal, user_id: str, tenant_id: str | None = None
    ) -> None:
        """Remove a member (an owner only by an owner) and revoke the member's sessions
        in the tenant; access tokens already issued run out within
        ``access_token_seconds``."""
        tenant = self._managed_tenant(principal, tenant_id)
        current = await self.store.get_role(tenant, check_id("user_id", user_id))
        if current is None:
            raise NotFound(f"no member {user_id[:64]!r} in this tenant")
        self._check_may_grant(principal, current)
        try:
            removed = await self.store.remove_member(tenant, user_id)
        except ConflictError as exc:
            raise Conflict(str(exc)) from None
        if not removed:
            raise NotFound(f"no member {user_id[:64]!r} in this tenant")
        await self.store.revoke_user_tokens(user_id, tenant)

    # -- API keys --------------------------------------------------------------------
    async def create_api_key(
        self,
        principal: Principal,
        name: str,
        scopes: Iterable[str],
        ttl_s: float | None = None,
        tenant_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new API key of the tenant; its text is shown only now. A caller grants
        only scopes it holds itself."""
        tenant = self._managed_tenant(principal, tenant_id)
        chosen = api_keys.check_scopes(scopes)
        beyond = [s for s in chosen if not (principal.operator or principal.has(s))]
        if beyond:
            raise Forbidden(f"scopes: you cannot grant {', '.join(beyond)}, which you lack")
        if ttl_s is not None and not 60 <= ttl_s <= 10 * 365 * 86_400:
            raise Invalid("ttl_s", "must be from 60 seconds to 10 years (or none: no expiry)")
        text = api_keys.new_key_text()
        new = NewApiKey(
            id=new_id("key"),
            tenant_id=tenant,
            prefix=text.prefix,
            secret_hash=digest(text.secret),
            name=check_name("name", name),
            scopes=chosen,
            created_by=principal.caller_id,
            ttl_s=ttl_s,
        )
        try:
            key = await self.store.create_api_key(new)
        except DataRejected:
            raise NotFound(f"no tenant {tenant!r} (see `conveyor tenants list`)") from None
        return key, str(text)

    async def list_api_keys(
        self, principal: Principal, tenant_id: str | None = None
    ) -> list[ApiKey]:
        """The tenant's keys, newest first; every tenant's for an operator who names
        none."""
        if principal.operator and tenant_id is None and principal.tenant_id is None:
            return await self.store.list_api_keys(None)
        return await self.store.list_api_keys(self._managed_tenant(principal, tenant_id))

    async def revoke_api_key(self, principal: Principal, key_id: str) -> None:
        """Revoke a key now: the next call with it is refused."""
        scope = None if principal.operator else self._managed_tenant(principal, None)
        if not await self.store.revoke_api_key(check_id("key_id", key_id), scope):
            raise NotFound(f"no active API key {key_id[:64]!r} in this tenant")
