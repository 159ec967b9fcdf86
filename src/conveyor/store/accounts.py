"""Accounts as the stores keep them: tenants, users, memberships, invitations, refresh
tokens, API keys and the keys that sign access tokens.

The records are what a store reads back; the :class:`AccountStore` protocol is the verbs.
Identity logic (passwords, token text, who may do what) is the accounts service's
(``conveyor.accounts``); the store keeps the rows and the rules a row must obey, each
verb one transaction, with the same clock rule as the job queue: the store writes
``created_at``, computes ``expires_at = now + ttl_s`` and compares expiries with its own
now. Ids are made by the service (``tnt_…``, ``usr_…``, ``key_…``). Secrets are stored
as SHA-256 hex digests (``token_hash``, ``secret_hash``), never as the text a client
holds.

Errors: :class:`~conveyor.store.base.ConflictError` for a uniqueness rule (an email
taken, a membership that exists, a tenant's last owner) and
:class:`~conveyor.store.base.DataRejected` for data the database cannot hold (a tenant id
outside :data:`TENANT_ID_PATTERN`); :class:`~conveyor.store.base.StoreError` otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

TENANT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Every tenant id matches this (the ``default`` tenant does): ids travel in URLs, logs
and PostgreSQL settings, where nothing else needs quoting."""

READ = "requests:read"
WRITE = "requests:write"
ADMIN = "admin"
SCOPES = frozenset({READ, WRITE, ADMIN})
"""Every scope a caller can hold; an API key carries a subset."""


def last_owner_refusal(tenant_id: str, user_id: str) -> str:
    """The message of the ConflictError that keeps a tenant's last owner."""
    return (
        f"user {user_id!r} is the last owner of tenant {tenant_id!r}; make another member "
        "an owner first"
    )


class Role(enum.StrEnum):
    """A user's role in a tenant. A higher :attr:`rank` may do all a lower one may."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """owner 4, admin 3, member 2, viewer 1."""
        return _RANKS[self]

    @property
    def scopes(self) -> frozenset[str]:
        """viewer: read; member: read and write; admin and owner: also ``admin``."""
        return _ROLE_SCOPES[self]


_RANKS = {Role.OWNER: 4, Role.ADMIN: 3, Role.MEMBER: 2, Role.VIEWER: 1}
_ROLE_SCOPES = {
    Role.VIEWER: frozenset({READ}),
    Role.MEMBER: frozenset({READ, WRITE}),
    Role.ADMIN: frozenset({READ, WRITE, ADMIN}),
    Role.OWNER: frozenset({READ, WRITE, ADMIN}),
}


@dataclass(frozen=True, slots=True)
class Tenant:
    """A customer: the owner of jobs, requests, members and API keys."""

    id: str
    name: str
    created_at: float
    disabled: bool
    rate_limit: str | None
    """The per-caller budget of this tenant's users and keys (``"1000/minute"``); None:
    ``CONVEYOR_RATE_LIMIT_PER_CALLER``."""


@dataclass(frozen=True, slots=True)
class User:
    """A person who logs in. ``email`` is stored lower-cased and stripped (the service
    normalises it) and is unique; ``password_hash`` (argon2id) is None for a user who
    has not set one; an ``operator`` administers every tenant."""

    id: str
    email: str
    password_hash: str | None
    operator: bool
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class Member:
    """A user's membership of a tenant, with the user's email for listings."""

    tenant_id: str
    user_id: str
    email: str
    role: Role
    created_at: float


@dataclass(frozen=True, slots=True)
class Invitation:
    """An invitation to join ``tenant_id`` as ``role``, valid until ``expires_at`` unless
    accepted (once) or revoked before."""

    id: str
    tenant_id: str
    email: str
    role: Role
    token_hash: str
    invited_by: str | None
    created_at: float
    expires_at: float
    accepted_at: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class NewRefreshToken:
    """A refresh token to store; it expires ``ttl_s`` after the store's now."""

    id: str
    family_id: str
    user_id: str
    tenant_id: str | None
    """None: an operator's session without a tenant."""
    token_hash: str
    ttl_s: float


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A stored refresh token. Each rotation replaces it by a new token of the same
    family; presenting a rotated token again (reuse) revokes the whole family."""

    id: str
    family_id: str
    user_id: str
    tenant_id: str | None
    token_hash: str
    created_at: float
    expires_at: float
    rotated_at: float | None
    revoked_at: float | None


class RotateOutcome(enum.StrEnum):
    """What :meth:`AccountStore.rotate_refresh_token` did."""

    ROTATED = "rotated"
    """The token was valid: it is marked rotated and the new one stored."""
    REUSED = "reused"
    """The token had been rotated already: its family is revoked now."""
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Rotation:
    """The outcome of a rotation and the old token's row (None when UNKNOWN), as it was
    read before the rotation changed it."""

    outcome: RotateOutcome
    token: RefreshToken | None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """An API key to store; it expires ``ttl_s`` after the store's now (None: never)."""

    id: str
    tenant_id: str
    prefix: str
    """Shown in listings and used to find the key; unique."""
    secret_hash: str
    name: str
    scopes: tuple[str, ...]
    created_by: str | None
    ttl_s: float | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key of a tenant."""

    id: str
    tenant_id: str
    prefix: str
    secret_hash: str
    name: str
    scopes: tuple[str, ...]
    created_by: str | None
    created_at: float
    last_used_at: float | None
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key that signs access tokens; active until ``retired_at``. A retired key still
    verifies the tokens it signed until they expire."""

    kid: str
    algorithm: str
    private_pem: str
    public_pem: str
    created_at: float
    retired_at: float | None


class AccountStore(Protocol):
    """The accounts seam: each method is one transaction. Implementations:
    ``conveyor.store.sqlite.SqliteStore``, ``conveyor.store.postgres.PostgresStore``.

    Every verb raises :class:`~conveyor.store.base.StoreError` when the database cannot
    be reached; the ones that write raise :class:`~conveyor.store.base.DataRejected` for
    data the database cannot hold (a tenant id outside :data:`TENANT_ID_PATTERN`, text
    that is not UTF-8), with nothing written. Every verb, reads too, raises
    :class:`~conveyor.store.base.DataRejected` for text holding NUL, which no store keeps
    (:mod:`conveyor.store.accounts_text`)."""

    # -- tenants ---------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        """Create a tenant, enabled, with no rate limit of its own. Raises
        :class:`ConflictError` when ``tenant_id`` exists, :class:`DataRejected` when it
        does not match :data:`TENANT_ID_PATTERN`."""

    async def signup(
        self, tenant_id: str, tenant_name: str, user_id: str, email: str, password_hash: str
    ) -> tuple[Tenant, User]:
        """Create a tenant, a user and the user's owner membership in one transaction.
        Raises :class:`ConflictError` when the email (or an id) is taken; nothing is
        created then."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> bool:
        """Disable or enable a tenant; False if there is no such tenant."""

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> bool:
        """Set the tenant's per-caller budget (None: the setting's); False if there is no
        such tenant. The text is not parsed here: the service checks it."""

    # -- users -----------------------------------------------------------------------
    async def create_user(
        self, user_id: str, email: str, password_hash: str | None, operator: bool = False
    ) -> User:
        """Create a user. Raises :class:`ConflictError` when the email or id is taken."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_by_email(self, email: str) -> User | None:
        """The user with exactly this (already normalised) email."""

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace the user's password hash; False if there is no such user."""

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        """Disable or enable a user; False if there is no such user."""

    # -- members ---------------------------------------------------------------------
    async def add_member(self, tenant_id: str, user_id: str, role: Role) -> Member:
        """Make the user a member of the tenant. Raises :class:`ConflictError` when the
        user is a member already, :class:`DataRejected` when the tenant or the user does
        not exist."""

    async def get_role(self, tenant_id: str, user_id: str) -> Role | None:
        """The user's role in the tenant; None when not a member."""

    async def memberships(self, user_id: str) -> list[Member]:
        """The user's memberships, oldest first: which tenants a login may choose."""

    async def list_members(self, tenant_id: str) -> list[Member]:
        """The tenant's members, oldest first."""

    async def set_role(self, tenant_id: str, user_id: str, role: Role) -> Member | None:
        """Change a member's role; None if the user is not a member. Raises
        :class:`ConflictError` rather than demote the tenant's last owner (checked in
        the same transaction, so two demotions at once cannot both pass)."""

    async def remove_member(self, tenant_id: str, user_id: str) -> bool:
        """Remove a membership; False if there was none. Raises :class:`ConflictError`
        rather than remove the tenant's last owner (checked in the same transaction)."""

    # -- invitations -----------------------------------------------------------------
    async def create_invitation(
        self,
        invitation_id: str,
        tenant_id: str,
        email: str,
        role: Role,
        token_hash: str,
        invited_by: str | None,
        ttl_s: float,
    ) -> Invitation:
        """Store an invitation that expires ``ttl_s`` from now. Raises
        :class:`DataRejected` when the tenant does not exist, :class:`ConflictError`
        when the id or the token hash is taken."""

    async def find_invitation(self, token_hash: str) -> Invitation | None:
        """The invitation with this token hash, whatever its state."""

    async def list_invitations(self, tenant_id: str) -> list[Invitation]:
        """The tenant's invitations, newest first, whatever their state."""

    async def revoke_invitation(self, tenant_id: str, invitation_id: str) -> bool:
        """Revoke a pending invitation of the tenant; False if there is none such
        (another tenant's, accepted or revoked already)."""

    async def accept_invitation(self, token_hash: str, user_id: str) -> Member | None:
        """In one transaction, with the invitation's row locked: if the invitation is
        valid (not accepted, not revoked, not expired), mark it accepted by now and make
        the user a member with its role (a user who is a member already keeps the higher
        of the two roles) and return the membership; else None and nothing written. Two
        acceptances of one invitation at once: one succeeds."""

    # -- refresh tokens --------------------------------------------------------------
    async def add_refresh_token(self, new: NewRefreshToken) -> RefreshToken:
        """Store a refresh token (a new family's first, at login). Raises
        :class:`ConflictError` when the id or token hash is taken."""

    async def rotate_refresh_token(self, token_hash: str, new: NewRefreshToken) -> Rotation:
        """In one transaction, with the token's row locked (two rotations of one token at
        once: one ROTATED, the other REUSED): unknown hash → UNKNOWN; revoked → REVOKED;
        expired → EXPIRED; rotated already → every token of its family revoked, REUSED;
        else the token marked rotated and ``new`` stored in its family, for its user and
        tenant (copied from the old row; ``new``'s own are ignored), ROTATED. Only
        ROTATED stores ``new``."""

    async def revoke_refresh_family(self, family_id: str) -> int:
        """Revoke every token of the family not revoked yet; how many."""

    async def revoke_refresh_token(self, token_hash: str) -> bool:
        """Logout: revoke the token's whole family; False for an unknown hash."""

    async def revoke_user_tokens(self, user_id: str, tenant_id: str | None = None) -> int:
        """Revoke the user's tokens not revoked yet (only those of ``tenant_id`` when
        given); how many."""

    # -- API keys --------------------------------------------------------------------
    async def create_api_key(self, new: NewApiKey) -> ApiKey:
        """Store an API key. Raises :class:`ConflictError` when the id or prefix is
        taken, :class:`DataRejected` when the tenant does not exist."""

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        """The key with this prefix, whatever its state (the caller checks revocation and
        expiry against :attr:`ApiKey.revoked_at` / :attr:`ApiKey.expires_at`)."""

    async def touch_api_key(self, key_id: str) -> None:
        """Record that the key was used now (``last_used_at``)."""

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        """The tenant's keys (None: every tenant's), newest first."""

    async def revoke_api_key(self, key_id: str, tenant_id: str | None) -> bool:
        """Revoke a key of ``tenant_id`` (None: of any tenant, for an operator); False if
        there is no such key not revoked yet."""

    # -- signing keys ----------------------------------------------------------------
    async def signing_keys(self) -> list[SigningKey]:
        """Every signing key, active and retired, newest first."""

    async def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        """Store ``candidate`` only if no active key exists, and return every key (as
        :meth:`signing_keys`). Race-safe across processes: two processes starting at once
        leave exactly one active key. The candidate's ``created_at`` is replaced by the
        store's now."""

    async def add_signing_key(self, key: SigningKey) -> list[SigningKey]:
        """A rotation: store ``key`` as the active key and retire the one active before,
        in one transaction (at most one key is ever active), and return every key (as
        :meth:`signing_keys`). Its ``created_at`` is the store's now. Raises
        :class:`ConflictError` when the kid is taken."""

    async def retire_signing_key(self, kid: str) -> bool:
        """Retire an active key now (it still verifies what it signed; no key signs
        until one is added); False if there is no such active key."""
