"""Identity without HTTP: passwords, access tokens, API keys and the :class:`Accounts`
service the API and the CLI call. See ``docs/security.md`` for the model."""

from conveyor.accounts.errors import (
    AccountError,
    ChooseTenant,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
)
from conveyor.accounts.principal import Principal
from conveyor.accounts.service import Accounts, Demo, Me, Session

__all__ = [
    "AccountError",
    "Accounts",
    "ChooseTenant",
    "Conflict",
    "Demo",
    "Forbidden",
    "Invalid",
    "Me",
    "NotFound",
    "Principal",
    "Session",
    "Unauthenticated",
]
