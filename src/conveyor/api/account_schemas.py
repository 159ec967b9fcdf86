"""The bodies of the identity routes (``/v1/auth``, ``/v1/me``, ``/v1/invitations``,
``/v1/members``, ``/v1/api-keys``), and their construction from the accounts records.

Secrets (access and refresh tokens, an API key's text, an invitation's token) appear only
in the answer that creates them; listings carry an API key's visible ``prefix`` and never
a hash. Times are ISO 8601 in UTC, as in :mod:`conveyor.api.schemas`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from conveyor.accounts.checks import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH
from conveyor.accounts.passwords import MAX_LENGTH as MAX_PASSWORD
from conveyor.accounts.passwords import MIN_LENGTH as MIN_PASSWORD
from conveyor.accounts.service import Me, Session
from conveyor.api.schemas import Timestamp, at_utc, utc
from conveyor.store.accounts import ApiKey, Invitation, Member, Role, User

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Every id of the accounts (``usr_…``, ``key_…``, ``inv_…``, tenant ids)."""

Email = Annotated[
    str,
    Field(
        min_length=3,
        max_length=MAX_EMAIL_LENGTH,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        examples=["ada@example.com"],
    ),
]
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_PASSWORD,
        max_length=MAX_PASSWORD,
        description=f"{MIN_PASSWORD} to {MAX_PASSWORD} characters.",
    ),
]
Password = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Secret = Annotated[str, Field(min_length=1, max_length=512)]
Scope = Literal["requests:read", "requests:write", "admin"]
"""``conveyor.store.accounts.SCOPES``, spelt out for the schema."""
TenantId = Annotated[str, Field(pattern=ID_PATTERN, description="A tenant's id.")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupIn(_In):
    """A new tenant and its owner."""

    email: Email
    password: NewPassword
    tenant_name: Name


class InvitedSignupIn(_In):
    """A new account for the email an invitation names, joining its tenant."""

    invitation_token: Secret
    password: NewPassword


def _signup_kind(body: Any) -> str:
    if isinstance(body, dict):
        return "invited" if "invitation_token" in body else "new"
    return "invited" if isinstance(body, InvitedSignupIn) else "new"


SIGNUP_KINDS = ("new", "invited")
"""The tags of :data:`SignupBody`, which the 422 answers leave out of ``loc``."""

SignupBody = Annotated[
    Annotated[SignupIn, Tag("new")] | Annotated[InvitedSignupIn, Tag("invited")],
    Discriminator(_signup_kind),
]
"""A signup's body: an invited one when it has ``invitation_token``."""


class LoginIn(_In):
    """A password login, into ``tenant_id`` (needed when the user has several)."""

    email: Annotated[str, Field(min_length=1, max_length=MAX_EMAIL_LENGTH)]
    password: Password
    tenant_id: TenantId | None = None


class RefreshIn(_In):
    """A refresh token, used once."""

    refresh_token: Secret


class InvitationIn(_In):
    """Invite an email into the caller's tenant."""

    email: Email
    role: Role = Role.MEMBER


class AcceptIn(_In):
    """The token of an invitation to the logged-in user's email."""

    token: Secret


class RoleIn(_In):
    """A member's new role."""

    role: Role


class ApiKeyIn(_In):
    """A new API key of the caller's tenant."""

    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    ttl_s: float | None = Field(
        default=None,
        ge=60,
        le=10 * 365 * 86_400,
        description="Seconds until it expires (60 s to 10 years); null: never.",
    )


class UserOut(BaseModel):
    id: str
    email: str
    operator: bool
    created_at: Timestamp

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id, email=user.email, operator=user.operator, created_at=at_utc(user.created_at)
        )


class SessionOut(BaseModel):
    """A session: send ``access_token`` as ``Authorization: Bearer``; trade
    ``refresh_token`` for the next pair at ``/v1/auth/refresh`` (once)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid for.")
    refresh_token: str
    tenant_id: str | None
    role: Role | None
    user: UserOut

    @classmethod
    def of(cls, session: Session) -> SessionOut:
        return cls(
            access_token=session.access_token,
            expires_in=session.expires_in,
            refresh_token=session.refresh_token,
            tenant_id=session.tenant_id,
            role=session.role,
            user=UserOut.of(session.user),
        )


class MemberOut(BaseModel):
    tenant_id: str
    user_id: str
    email: str
    role: Role
    created_at: Timestamp

    @classmethod
    def of(cls, member: Member) -> MemberOut:
        return cls(
            tenant_id=member.tenant_id,
            user_id=member.user_id,
            email=member.email,
            role=member.role,
            created_at=at_utc(member.created_at),
        )


class MemberList(BaseModel):
    members: list[MemberOut]


class ApiKeyOut(BaseModel):
    """An API key as listed: its visible prefix, never its secret."""

    id: str
    tenant_id: str
    prefix: str
    name: str
    scopes: list[str]
    created_by: str | None
    created_at: Timestamp
    last_used_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            prefix=key.prefix,
            name=key.name,
            scopes=list(key.scopes),
            created_by=key.created_by,
            created_at=at_utc(key.created_at),
            last_used_at=utc(key.last_used_at),
            expires_at=utc(key.expires_at),
            revoked_at=utc(key.revoked_at),
        )


class ApiKeyCreated(BaseModel):
    """A new key: ``key`` is its text, shown this once (send it as ``Authorization:
    Bearer``)."""

    api_key: ApiKeyOut
    key: str


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyOut]


class InvitationOut(BaseModel):
    id: str
    tenant_id: str
    email: str
    role: Role
    invited_by: str | None
    created_at: Timestamp
    expires_at: Timestamp
    accepted_at: Timestamp | None
    revoked: bool

    @classmethod
    def of(cls, invitation: Invitation) -> InvitationOut:
        return cls(
            id=invitation.id,
            tenant_id=invitation.tenant_id,
            email=invitation.email,
            role=invitation.role,
            invited_by=invitation.invited_by,
            created_at=at_utc(invitation.created_at),
            expires_at=at_utc(invitation.expires_at),
            accepted_at=utc(invitation.accepted_at),
            revoked=invitation.revoked,
        )


class InvitationCreated(BaseModel):
    """A new invitation: ``token`` is shown this once; the invitee signs up with it
    (``/v1/auth/signup``) or, logged in, accepts it (``/v1/invitations/accept``)."""

    invitation: InvitationOut
    token: str


class InvitationList(BaseModel):
    invitations: list[InvitationOut]


class MeOut(BaseModel):
    """Who calls: the caller's identity, tenant, role and scopes; the user and the
    user's tenants for a user, the key for an API key."""

    caller_id: str
    tenant_id: str | None
    role: Role | None
    scopes: list[str]
    operator: bool
    user: UserOut | None
    memberships: list[MemberOut]
    api_key: ApiKeyOut | None

    @classmethod
    def of(cls, me: Me) -> MeOut:
        principal = me.principal
        return cls(
            caller_id=principal.caller_id,
            tenant_id=principal.tenant_id,
            role=principal.role,
            scopes=sorted(principal.scopes),
            operator=principal.operator,
            user=UserOut.of(me.user) if me.user is not None else None,
            memberships=[MemberOut.of(m) for m in me.memberships],
            api_key=ApiKeyOut.of(me.api_key) if me.api_key is not None else None,
        )
