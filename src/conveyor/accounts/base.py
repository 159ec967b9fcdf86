"""What every part of the accounts service shares: its store, settings, password
hasher and token signer, and the checks of who may act on which tenant."""

from __future__ import annotations

import dataclasses
import time

from conveyor.accounts.checks import check_id
from conveyor.accounts.errors import Forbidden, Invalid, NotFound, Unauthenticated
from conveyor.accounts.ids import digest
from conveyor.accounts.passwords import Passwords
from conveyor.accounts.principal import Principal
from conveyor.accounts.tokens import AccessTokens
from conveyor.config import Settings
from conveyor.logs import get_logger
from conveyor.store.accounts import ADMIN, AccountStore, Invitation, Role, Tenant, User

log = get_logger("accounts")

TENANT_CACHE_S = 2.0
"""How long a process trusts what it read of a tenant (disabled, rate limit) when
authenticating: a tenant disabled by another process (the CLI) is refused within this
long, and a call with a valid token costs no query (docs/security.md)."""


def without_hash(user: User) -> User:
    """``user`` as the service hands it to a client: the password hash is none of its
    business."""
    return dataclasses.replace(user, password_hash=None)


class AccountsBase:
    """The state of an accounts service and the checks its parts share; the public
    entry is :class:`conveyor.accounts.Accounts`."""

    def __init__(self, store: AccountStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.passwords = Passwords(settings)
        self.tokens = AccessTokens(settings, store.signing_keys)
        self._touched: dict[str, float] = {}
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}

    async def _enabled_tenant(self, tenant_id: str) -> Tenant:
        """The tenant a credential names, read at most every :data:`TENANT_CACHE_S`."""
        now = time.monotonic()
        read_at, tenant = self._tenants.get(tenant_id, (float("-inf"), None))
        if now - read_at >= TENANT_CACHE_S:
            tenant = await self.store.get_tenant(tenant_id)
            if len(self._tenants) >= 10_000:
                # Bounded: ids come from valid credentials, but a process can serve many.
                self._tenants.clear()
            self._tenants[tenant_id] = (now, tenant)
        if tenant is None or tenant.disabled:
            raise Unauthenticated(f"tenant {tenant_id} gone or disabled")
        return tenant

    def _forget_tenant(self, tenant_id: str) -> None:
        """This process changed the tenant: its next credential reads it again."""
        self._tenants.pop(tenant_id, None)

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
        check_id("tenant_id", target)
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
