"""Errors of the accounts service, with the status the API answers for each.

::

    AccountError
    ├── Unauthenticated  401  no valid credential (one fixed message whatever the reason;
    │                         the reason goes to the log only)
    ├── Forbidden        403  authenticated, but the role or scopes do not allow it
    ├── NotFound         404  no such member, invitation or key in the caller's tenant
    ├── Conflict         409  a uniqueness rule: email taken, member already, last owner
    └── Invalid          422  input the service refuses (``field`` names it)
        └── ChooseTenant 422  a login of a user of several tenants names none of them

The CLI exits 1 for NotFound, 3 for Conflict and 2 for the others.
"""

from __future__ import annotations

from collections.abc import Sequence


class AccountError(Exception):
    """Base of the accounts service's errors."""


class Unauthenticated(AccountError):
    """No valid credential. The message is the same for every reason (unknown email,
    wrong password, disabled user, expired or tampered token, revoked key...) so that an
    answer tells nothing about which accounts exist; ``reason`` is for the log."""

    MESSAGE = "invalid or expired credentials"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason


class Forbidden(AccountError):
    """The caller is authenticated but may not do this."""


class NotFound(AccountError):
    """What was named does not exist in the caller's tenant (another tenant's ids are
    not found either: existence is not leaked)."""


class Conflict(AccountError):
    """A uniqueness rule refused the change; nothing was written."""


class Invalid(AccountError):
    """Input the service refuses; ``field`` names it (``email``, ``password``,
    ``scopes``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ChooseTenant(Invalid):
    """The user belongs to several tenants and the login named none: ``tenant_ids``
    lists them (shown only after the password was verified)."""

    def __init__(self, tenant_ids: Sequence[str]) -> None:
        super().__init__(
            "tenant_id",
            "this account belongs to several tenants; name one of: " + ", ".join(tenant_ids),
        )
        self.tenant_ids = tuple(tenant_ids)
