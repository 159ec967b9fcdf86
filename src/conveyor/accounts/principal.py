"""Who calls: :class:`Principal`, what the API's caller dependency yields and every
service method that acts for someone takes."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.store.accounts import ADMIN, READ, SCOPES, WRITE, Role

__all__ = ["ADMIN", "READ", "SCOPES", "WRITE", "Principal", "Role"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    A user's principal holds the role of the tenant its access token names and that
    role's scopes (:attr:`Role.scopes`); an API key's holds the key's own scopes and no
    role. An operator without a tenant (``tenant_id`` None) may read every tenant's data
    (scope ``requests:read``) and run the operator routes; it writes nothing into a
    tenant, having none.
    """

    tenant_id: str | None
    """None only for an operator without a tenant."""
    caller_id: str
    """``user:usr_…`` or ``key:key_…``: idempotency keys and rate limits are per caller."""
    role: Role | None
    """The user's role in ``tenant_id``; None for API keys and tenantless operators."""
    scopes: frozenset[str]
    operator: bool = False
    rate_limit: str | None = None
    """The tenant's per-caller budget; None: ``CONVEYOR_RATE_LIMIT_PER_CALLER``."""

    def has(self, scope: str) -> bool:
        """Whether the caller holds ``scope``."""
        return scope in self.scopes

    @property
    def user_id(self) -> str | None:
        """The user's id for a user's principal; None for an API key."""
        kind, _, ident = self.caller_id.partition(":")
        return ident if kind == "user" else None

    @property
    def api_key_id(self) -> str | None:
        """The key's id for an API key's principal; None for a user."""
        kind, _, ident = self.caller_id.partition(":")
        return ident if kind == "key" else None

    @classmethod
    def console(cls) -> Principal:
        """The operator at the console: the CLI, which reaches the database directly and
        may therefore do anything, in any tenant."""
        return cls(tenant_id=None, caller_id="console", role=None, scopes=SCOPES, operator=True)
