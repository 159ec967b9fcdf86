"""The accounts service: :class:`Accounts`, what the API and the CLI call.

Each method that acts for someone takes the :class:`Principal` that asks, and checks what
it may do before the store is touched: ``admin`` scope to manage members, invitations and
API keys of its tenant; the owner role (or an operator) to make, unmake or remove owners;
an operator alone to act on another tenant (``tenant_id``). The CLI acts as
:meth:`Principal.console`. Another tenant's ids are not found, never forbidden.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.accounts import api_keys
from conveyor.accounts.checks import check_name, check_rate_limit, normalise_email
from conveyor.accounts.errors import (
    ChooseTenant,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
)
from conveyor.accounts.ids import digest, new_id, new_secret
from conveyor.accounts.passwords import Passwords, check_password
from conveyor.accounts.principal import Principal
from conveyor.accounts.tokens import AccessTokens, new_signing_key
from conveyor.config import Settings
from conveyor.logs import get_logger
from conveyor.store.accounts import (
    ADMIN,
    READ,
    SCOPES,
    AccountStore,
    ApiKey,
    Invitation,
    Member,
    NewApiKey,
    NewRefreshToken,
    Role,
    RotateOutcome,
    SigningKey,
    Tenant,
    User,
)
from conveyor.store.base import ConflictError, DataRejected

log = get_logger("accounts")

TOUCH_INTERVAL_S = 60.0
"""An API key's ``last_used_at`` is written at most this often per key and process."""
OPERATOR_SCOPES = frozenset({READ})
"""A tenantless operator reads every tenant's data and writes into none."""
DEMO_EMAIL = "demo@conveyor.local"


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


@dataclass(frozen=True, slots=True)
class Me:
    """Who a principal is: the user (None for an API key), the user's memberships, and
    the key for an API key's principal."""

    principal: Principal
    user: User | None
    memberships: list[Member]
    api_key: ApiKey | None


@dataclass(frozen=True, slots=True)
class Demo:
    """The demo account of a first start, with its password and key shown once."""

    tenant: Tenant
    user: User
    password: str
    api_key: ApiKey
    api_key_text: str


class Accounts:
    """Identity: signup, login, sessions, authentication, members, invitations, API keys,
    operators and signing keys, over an :class:`AccountStore`."""

    def __init__(self, store: AccountStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.passwords = Passwords(settings)
        self.tokens = AccessTokens(settings, store.signing_keys)
        self._touched: dict[str, float] = {}

    async def start(self) -> None:
        """Load the signing keys, creating the first one if there is none (race-safe:
        processes starting at once agree on one)."""
        self.tokens.load(await self.store.ensure_signing_key(new_signing_key()))

    # -- sessions --------------------------------------------------------------------
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
        access, lifetime = self.tokens.issue(user.id, old.tenant_id, role, user.operator)
        return Session(access, lifetime, secret, old.tenant_id, role, user)

    async def logout(self, refresh_token: str) -> None:
        """Revoke the session's refresh tokens (its family); an unknown token is no
        error: the session is over either way."""
        await self.store.revoke_refresh_token(digest(refresh_token[:512]))

    async def authenticate(self, bearer: str) -> Principal:
        """The principal of an access token or an API key (``Authorization: Bearer``).
        Revocation and expiry of a key are read at every call. Raises
        :class:`Unauthenticated` with one message whatever the reason (logged)."""
        try:
            if api_keys.looks_like_key(bearer):
                return await self._key_principal(bearer)
            return await self._token_principal(bearer)
        except Unauthenticated as exc:
            log.info("authentication refused", reason=exc.reason)
            raise

    async def me(self, principal: Principal) -> Me:
        """The user or key behind ``principal``."""
        user = None
        memberships: list[Member] = []
        key = None
        if principal.user_id is not None:
            user = await self.store.get_user(principal.user_id)
            memberships = await self.store.memberships(principal.user_id)
        elif principal.api_key_id is not None and principal.tenant_id is not None:
            key = next(
                (
                    k
                    for k in await self.store.list_api_keys(principal.tenant_id)
                    if k.id == principal.api_key_id
                ),
                None,
            )
        return Me(principal, user, memberships, key)

    # -- invitations -----------------------------------------------------------------
    async def invite(
        self, principal: Principal, email: str, role: Role, tenant_id: str | None = None
    ) -> tuple[Invitation, str]:
        """Invite ``email`` into the tenant as ``role``; the token is shown only now."""
        tenant = self._managed_tenant(principal, tenant_id)
        self._check_may_grant(principal, role)
        token = new_secret("cvi")
        invitation = await self.store.create_invitation(
            new_id("inv"),
            tenant,
            normalise_email(email),
            role,
            digest(token),
            principal.user_id,
            self.settings.invitation_seconds,
        )
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
        current = await self.store.get_role(tenant, user_id)
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
        current = await self.store.get_role(tenant, user_id)
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
        key = await self.store.create_api_key(
            NewApiKey(
                id=new_id("key"),
                tenant_id=tenant,
                prefix=text.prefix,
                secret_hash=digest(text.secret),
                name=check_name("name", name),
                scopes=chosen,
                created_by=principal.caller_id,
                ttl_s=ttl_s,
            )
        )
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
        if not await self.store.revoke_api_key(key_id, scope):
            raise NotFound(f"no active API key {key_id[:64]!r} in this tenant")

    # -- the console: tenants, users, operators, signing keys -----------------------
    async def create_tenant(self, name: str, tenant_id: str | None = None) -> Tenant:
        """A new tenant with no members (add one with :meth:`add_member`)."""
        try:
            return await self.store.create_tenant(
                tenant_id or new_id("tnt"), check_name("name", name)
            )
        except ConflictError:
            raise Conflict(f"tenant {tenant_id!r} exists") from None
        except DataRejected as exc:
            raise Invalid("tenant_id", str(exc)) from None

    async def tenant(self, tenant_id: str) -> Tenant:
        """The tenant; :class:`NotFound` if there is none."""
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id[:64]!r} (see `conveyor tenants list`)")
        return tenant

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> Tenant:
        """Disable a tenant (its users and keys are refused at once) or enable it."""
        if not await self.store.set_tenant_disabled(tenant_id, disabled):
            await self.tenant(tenant_id)
        return await self.tenant(tenant_id)

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> Tenant:
        """Set the per-caller budget of the tenant's users and keys (None: the setting)."""
        rate = check_rate_limit(rate_limit) if rate_limit is not None else None
        if not await self.store.set_tenant_rate_limit(tenant_id, rate):
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
        found = (
            await self.store.get_user(user)
            if user.startswith("usr_")
            else await self.store.get_user_by_email(user.strip().lower())
        )
        if found is None:
            raise NotFound(f"no user {user[:254]!r} (see `conveyor users list`)")
        return found

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
        await self.tenant(tenant_id)
        found = await self.user(user)
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

    async def bootstrap_demo(self) -> Demo | None:
        """On a first start (no user and no API key yet): a demo tenant, its owner
        ``demo@conveyor.local`` with a random password, and a key with every scope,
        returned once; None when accounts exist already."""
        if await self.store.list_users() or await self.store.list_api_keys(None):
            return None
        password = new_secret("pw")[3:27]
        session = await self.signup(DEMO_EMAIL, password, "Demo")
        assert session.tenant_id is not None
        key, text = await self.create_api_key(
            Principal.console(), "demo", sorted(SCOPES), tenant_id=session.tenant_id
        )
        return Demo(await self.tenant(session.tenant_id), session.user, password, key, text)

    # -- parts -----------------------------------------------------------------------
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
        access, lifetime = self.tokens.issue(user.id, tenant_id, role, user.operator)
        return Session(access, lifetime, secret, tenant_id, role, user)

    async def _login_tenant(
        self, user: User, tenant_id: str | None
    ) -> tuple[str | None, Role | None]:
        if tenant_id is None and user.operator:
            return None, None
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

    async def _token_principal(self, bearer: str) -> Principal:
        claims = await self.tokens.verify(bearer)
        if claims.tenant_id is None:
            return Principal(
                tenant_id=None,
                caller_id=f"user:{claims.user_id}",
                role=None,
                scopes=OPERATOR_SCOPES,
                operator=True,
            )
        tenant = await self._enabled_tenant(claims.tenant_id)
        assert claims.role is not None
        return Principal(
            tenant_id=tenant.id,
            caller_id=f"user:{claims.user_id}",
            role=claims.role,
            scopes=claims.role.scopes,
            operator=claims.operator,
            rate_limit=tenant.rate_limit,
        )

    async def _key_principal(self, bearer: str) -> Principal:
        text = api_keys.parse_key(bearer)
        if text is None:
            raise Unauthenticated("malformed API key")
        key = await self.store.find_api_key(text.prefix)
        # The digest is compared even for an unknown prefix, so both cost the same.
        matches = api_keys.secret_matches(text.secret, key.secret_hash if key else "0" * 64)
        if key is None or not matches:
            raise Unauthenticated("unknown API key or wrong secret")
        if key.revoked_at is not None:
            raise Unauthenticated(f"API key {key.id} revoked")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise Unauthenticated(f"API key {key.id} expired")
        tenant = await self._enabled_tenant(key.tenant_id)
        await self._touch(key)
        return Principal(
            tenant_id=tenant.id,
            caller_id=f"key:{key.id}",
            role=None,
            scopes=frozenset(key.scopes),
            rate_limit=tenant.rate_limit,
        )

    async def _touch(self, key: ApiKey) -> None:
        now = time.time()
        last = max(key.last_used_at or 0.0, self._touched.get(key.id, 0.0))
        if now - last < TOUCH_INTERVAL_S:
            return
        self._touched[key.id] = now
        await self.store.touch_api_key(key.id)

    async def _enabled_tenant(self, tenant_id: str) -> Tenant:
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None or tenant.disabled:
            raise Unauthenticated(f"tenant {tenant_id} gone or disabled")
        return tenant

    async def _valid_invitation(self, token: str) -> Invitation:
        invitation = await self.store.find_invitation(digest(token[:512]))
        if (
            invitation is None
            or invitation.revoked
            or invitation.accepted_at is not None
            or invitation.expires_at <= time.time()
        ):
            raise NotFound("invitation: not valid (accepted, revoked or expired)")
        return invitation

    def _managed_tenant(self, principal: Principal, tenant_id: str | None) -> str:
        """The tenant ``principal`` manages in this call, checked: its own (admin
        scope), or any for an operator."""
        target = tenant_id if tenant_id is not None else principal.tenant_id
        if target is None:
            raise Invalid("tenant_id", "name the tenant (an operator's session has none)")
        if principal.operator:
            return target
        if target != principal.tenant_id:
            raise NotFound(f"no tenant {target[:64]!r}")
        if not principal.has(ADMIN):
            raise Forbidden("managing this tenant takes the admin scope (role admin or owner)")
        return target

    @staticmethod
    def _check_may_grant(principal: Principal, role: Role) -> None:
        if role is Role.OWNER and not (principal.operator or principal.role is Role.OWNER):
            raise Forbidden("role: only an owner makes, changes or removes owners")

    @staticmethod
    def _refused(action: str, reason: str) -> Unauthenticated:
        log.info(f"{action} refused", reason=reason)
        return Unauthenticated(reason)
