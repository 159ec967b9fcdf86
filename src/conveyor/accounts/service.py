"""The accounts service: :class:`Accounts`, what the API and the CLI call.

It is made of one part per concern, each a module of its own:

- :mod:`~conveyor.accounts.sessions`: signup, login, refresh, logout;
- :mod:`~conveyor.accounts.authentication`: bearer credentials to principals, ``me``;
- :mod:`~conveyor.accounts.tenant_admin`: invitations, members, API keys;
- :mod:`~conveyor.accounts.console`: the CLI's tenants, users, operators, signing keys.

Each method that acts for someone takes the :class:`Principal` that asks, and checks what
it may do before the store is touched: ``admin`` scope to manage members, invitations and
API keys of its tenant; the owner role (or an operator) to make, unmake or remove owners;
an operator alone to act on another tenant (``tenant_id``). The CLI acts as
:meth:`Principal.console`. Another tenant's ids are not found, never forbidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.accounts.authentication import Authentication, Me
from conveyor.accounts.console import Console
from conveyor.accounts.errors import Conflict
from conveyor.accounts.ids import new_secret
from conveyor.accounts.principal import Principal
from conveyor.accounts.sessions import Session, Sessions
from conveyor.accounts.tenant_admin import TenantAdmin
from conveyor.accounts.tokens import new_signing_key
from conveyor.store.accounts import SCOPES, ApiKey, Tenant, User

__all__ = ["DEMO_EMAIL", "Accounts", "Demo", "Me", "Session"]

DEMO_EMAIL = "demo@conveyor.local"


@dataclass(frozen=True, slots=True)
class Demo:
    """The demo account of a first start, with its password and key shown once."""

    tenant: Tenant
    user: User
    password: str
    api_key: ApiKey
    api_key_text: str


class Accounts(Sessions, Authentication, TenantAdmin, Console):
    """Identity: signup, login, sessions, authentication, members, invitations, API keys,
    operators and signing keys, over an :class:`AccountStore`. Call :meth:`start` once
    before the first token is issued or verified."""

    async def start(self) -> None:
        """Load the signing keys, creating the first one if there is none (race-safe:
        processes starting at once agree on one)."""
        self.tokens.load(await self.store.ensure_signing_key(new_signing_key()))

    async def bootstrap_demo(self) -> Demo | None:
        """On a first start (no user and no API key yet): a demo tenant, its owner
        ``demo@conveyor.local`` with a random password, and a key with every scope,
        returned once; None when accounts exist already."""
        if await self.store.list_users() or await self.store.list_api_keys(None):
            return None
        password = new_secret("pw")[3:27]
        try:
            session = await self.signup(DEMO_EMAIL, password, "Demo")
        except Conflict:
            # Another process starting at once made it: it prints the account, not us.
            return None
        assert session.tenant_id is not None
        key, text = await self.create_api_key(
            Principal.console(), "demo", sorted(SCOPES), tenant_id=session.tenant_id
        )
        return Demo(await self.tenant(session.tenant_id), session.user, password, key, text)
