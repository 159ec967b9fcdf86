"""The console's verbs: what the CLI does with the database in reach (tenants, users,
operators, memberships, signing keys). No principal is checked: the console may do
anything, in any tenant (:meth:`Principal.console`)."""

from __future__ import annotations

from conveyor.accounts.base import AccountsBase
from conveyor.accounts.checks import check_id, check_name, check_rate_limit, normalise_email
from conveyor.accounts.errors import Conflict, Invalid, NotFound
from conveyor.accounts.ids import new_id
from conveyor.accounts.passwords import check_password
from conveyor.accounts.tokens import new_signing_key
from conveyor.store.accounts import Member, Role, SigningKey, Tenant, User
from conveyor.store.base import ConflictError, DataRejected


class Console(AccountsBase):
    """Tenants, users, operators, memberships and signing keys, for the CLI."""

    async def create_tenant(self, name: str, tenant_id: str | None = None) -> Tenant:
        """A new tenant with no members (add one with :meth:`add_member`)."""
        ident = check_id("tenant_id", tenant_id) if tenant_id is not None else new_id("tnt")
        try:
            return await self.store.create_tenant(ident, check_name("name", name))
        except ConflictError:
            raise Conflict(f"tenant {tenant_id!r} exists") from None
        except DataRejected as exc:
            raise Invalid("tenant_id", str(exc)) from None

    async def tenant(self, tenant_id: str) -> Tenant:
        """The tenant; :class:`NotFound` if there is none."""
        tenant = await self.store.get_tenant(check_id("tenant_id", tenant_id))
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id[:64]!r} (see `conveyor tenants list`)")
        return tenant

    async def tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""
        return await self.store.list_tenants()

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> Tenant:
        """Disable a tenant (its users and keys are refused from the next call in this
        process, within ``TENANT_CACHE_S`` in others) or enable it."""
        check_id("tenant_id", tenant_id)
        changed = await self.store.set_tenant_disabled(tenant_id, disabled)
        self._forget_tenant(tenant_id)
        if not changed:
            await self.tenant(tenant_id)
        return await self.tenant(tenant_id)

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> Tenant:
        """Set the per-caller budget of the tenant's users and keys (None: the setting)."""
        check_id("tenant_id", tenant_id)
        rate = check_rate_limit(rate_limit) if rate_limit is not None else None
        changed = await self.store.set_tenant_rate_limit(tenant_id, rate)
        self._forget_tenant(tenant_id)
        if not changed:
            await self.tenant(tenant_id)
        return await self.tenant(tenant_id)

    async def create_user(self, email: str, password: str, operator: bool = False) -> User:
        """A new user with no tenant (add one with :meth:`add_member`); an operator
        when ``operator`` (only the CLI makes operators)."""
        email = normalise_email(email)
        check_password(password)
        try:
            return await self.store.create_user(
                new_id("usr"), email, await self.passwords.hash(password), operator
            )
        except ConflictError:
            raise Conflict(f"email: {email!r} has an account") from None

    async def create_operator(self, email: str, password: str) -> User:
        """A new operator: sees every tenant, pauses queues, sets limits."""
        return await self.create_user(email, password, operator=True)

    async def user(self, user: str) -> User:
        """The user with this id (``usr_…``) or email; :class:`NotFound` if none."""
        if "@" not in user:
            found = await self.store.get_user(check_id("user", user))
        else:
            try:
                email = normalise_email(user)
            except Invalid:
                raise Invalid("user", "name a user by id (usr_…) or email address") from None
            found = await self.store.get_user_by_email(email)
        if found is None:
            raise NotFound(f"no user {user[:254]!r} (see `conveyor users list`)")
        return found

    async def users(self) -> list[User]:
        """Every user, oldest first."""
        return await self.store.list_users()

    async def memberships(self, user: str) -> list[Member]:
        """The tenants the user (id or email) belongs to, with its role in each."""
        return await self.store.memberships((await self.user(user)).id)

    async def set_user_disabled(self, user: str, disabled: bool) -> User:
        """Disable a user (login and refresh refused, sessions revoked) or enable it."""
        found = await self.user(user)
        await self.store.set_user_disabled(found.id, disabled)
        if disabled:
            await self.store.revoke_user_tokens(found.id)
        return await self.user(found.id)

    async def set_password(self, user: str, password: str) -> User:
        """Replace a user's password and revoke the user's sessions."""
        found = await self.user(user)
        check_password(password)
        await self.store.set_password_hash(found.id, await self.passwords.hash(password))
        await self.store.revoke_user_tokens(found.id)
        return found

    async def add_member(self, tenant_id: str, user: str, role: Role) -> Member:
        """Make a user a member of a tenant with ``role``."""
        check_id("tenant_id", tenant_id)
        found = await self.user(user)
        await self.tenant(tenant_id)
        try:
            return await self.store.add_member(tenant_id, found.id, role)
        except ConflictError:
            raise Conflict(f"{found.email} is a member of {tenant_id} already") from None

    async def rotate_signing_key(self) -> SigningKey:
        """A new key signs access tokens from now; the old one verifies until the
        tokens it signed have expired."""
        key = new_signing_key()
        self.tokens.load(await self.store.add_signing_key(key))
        return key
