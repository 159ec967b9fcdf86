"""Sessions: signup, login, refresh-token rotation and logout."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.accounts.base import AccountsBase, without_hash
from conveyor.accounts.checks import check_id, check_name, normalise_email
from conveyor.accounts.errors import (
    ChooseTenant,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
)
from conveyor.accounts.ids import digest, new_id, new_secret
from conveyor.accounts.passwords import check_password
from conveyor.store.accounts import NewRefreshToken, Role, RotateOutcome, User
from conveyor.store.base import ConflictError


@dataclass(frozen=True, slots=True)
class Session:
    """What a signup, login or refresh gives: an access token (``expires_in`` seconds)
    and the refresh token that gets the next one, both shown to the client only."""

    access_token: str
    expires_in: int
    refresh_token: str
    tenant_id: str | None
    role: Role | None
    user: User
    """The user, without its password hash (``password_hash`` None)."""


class Sessions(AccountsBase):
    """Signup, login, refresh and logout."""

    async def signup(self, email: str, password: str, tenant_name: str) -> Session:
        """Create a tenant and its owner, and log the owner in. :class:`Conflict` when
        the email has an account."""
        email = normalise_email(email)
        check_password(password)
        name = check_name("tenant_name", tenant_name)
        password_hash = await self.passwords.hash(password)
        try:
            tenant, user = await self.store.signup(
                new_id("tnt"), name, new_id("usr"), email, password_hash
            )
        except ConflictError:
            raise Conflict(
                "email: an account with this email exists; log in, or accept an invitation"
            ) from None
        return await self._session(user, tenant.id, Role.OWNER)

    async def signup_invited(self, token: str, password: str) -> Session:
        """Create the account an invitation names (its email) and accept it: the new
        user joins the tenant with the invitation's role and is logged in to it."""
        check_password(password)
        invitation = await self._valid_invitation(token)
        password_hash = await self.passwords.hash(password)
        try:
            user = await self.store.create_user(new_id("usr"), invitation.email, password_hash)
        except ConflictError:
            raise Conflict(
                "email: an account with this email exists; log in and accept the invitation"
            ) from None
        member = await self.store.accept_invitation(digest(token), user.id)
        if member is None:
            raise NotFound("invitation: not valid (accepted, revoked or expired)")
        return await self._session(user, member.tenant_id, member.role)

    async def login(self, email: str, password: str, tenant_id: str | None = None) -> Session:
        """Log in with a password, into ``tenant_id`` or the user's only tenant; an
        operator without ``tenant_id`` gets a session without a tenant.

        Unknown email, wrong password and disabled user all raise the same
        :class:`Unauthenticated`, after the same work (a dummy hash is verified for an
        unknown email). A hash made with other parameters is replaced."""
        try:
            normal = normalise_email(email)
        except Invalid:
            normal = None
        user = await self.store.get_user_by_email(normal) if normal else None
        valid = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            raise self._refused("login", "unknown email" if user is None else "wrong password")
        if user.disabled:
            raise self._refused("login", f"user {user.id} disabled")
        assert user.password_hash is not None
        if self.passwords.needs_rehash(user.password_hash):
            await self.store.set_password_hash(user.id, await self.passwords.hash(password))
        tenant, role = await self._login_tenant(user, tenant_id)
        return await self._session(user, tenant, role)

    async def refresh(self, refresh_token: str) -> Session:
        """Rotate a refresh token: the session goes on with a new pair. A token used a
        second time revokes its whole family (whoever holds either copy is logged out)
        and is refused, as are unknown, expired and revoked ones."""
        secret = new_secret("cvr")
        # The store copies the family, user and tenant from the old token's row.
        new = NewRefreshToken(
            id=new_id("rft"),
            family_id="",
            user_id="",
            tenant_id=None,
            token_hash=digest(secret),
            ttl_s=self.settings.refresh_token_seconds,
        )
        rotation = await self.store.rotate_refresh_token(digest(refresh_token[:512]), new)
        if rotation.outcome is not RotateOutcome.ROTATED or rotation.token is None:
            raise self._refused("refresh", f"refresh token {rotation.outcome.value}")
        old = rotation.token
        try:
            user, role = await self._still_allowed(old.user_id, old.tenant_id)
        except Unauthenticated:
            await self.store.revoke_refresh_family(old.family_id)
            raise
        await self.tokens.fresh()
        access, lifetime = self.tokens.issue(user.id, old.tenant_id, role, user.operator)
        return Session(access, lifetime, secret, old.tenant_id, role, without_hash(user))

    async def logout(self, refresh_token: str) -> None:
        """Revoke the session's refresh tokens (its family); an unknown token is no
        error: the session is over either way."""
        await self.store.revoke_refresh_token(digest(refresh_token[:512]))

    async def _session(self, user: User, tenant_id: str | None, role: Role | None) -> Session:
        secret = new_secret("cvr")
        await self.store.add_refresh_token(
            NewRefreshToken(
                id=new_id("rft"),
                family_id=new_id("fam"),
                user_id=user.id,
                tenant_id=tenant_id,
                token_hash=digest(secret),
                ttl_s=self.settings.refresh_token_seconds,
            )
        )
        await self.tokens.fresh()
        access, lifetime = self.tokens.issue(user.id, tenant_id, role, user.operator)
        return Session(access, lifetime, secret, tenant_id, role, without_hash(user))

    async def _login_tenant(
        self, user: User, tenant_id: str | None
    ) -> tuple[str | None, Role | None]:
        if tenant_id is None and user.operator:
            return None, None
        if tenant_id is not None:
            check_id("tenant_id", tenant_id)
        memberships = await self.store.memberships(user.id)
        if tenant_id is None:
            if not memberships:
                raise Forbidden("this account belongs to no tenant; ask an admin to invite it")
            if len(memberships) > 1:
                raise ChooseTenant([m.tenant_id for m in memberships])
            tenant_id = memberships[0].tenant_id
        role = next((m.role for m in memberships if m.tenant_id == tenant_id), None)
        if role is None:
            raise Forbidden(f"tenant_id: this account is not a member of {tenant_id[:64]!r}")
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None or tenant.disabled:
            raise Forbidden(f"tenant {tenant_id!r} is disabled")
        return tenant_id, role

    async def _still_allowed(self, user_id: str, tenant_id: str | None) -> tuple[User, Role | None]:
        user = await self.store.get_user(user_id)
        if user is None or user.disabled:
            raise Unauthenticated(f"user {user_id} gone or disabled")
        if tenant_id is None:
            if not user.operator:
                raise Unauthenticated(f"user {user_id} no longer an operator")
            return user, None
        tenant = await self.store.get_tenant(tenant_id)
        role = await self.store.get_role(tenant_id, user_id)
        if tenant is None or tenant.disabled or role is None:
            raise Unauthenticated(f"user {user_id} no longer in tenant {tenant_id}")
        return user, role
