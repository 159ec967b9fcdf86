"""What the accounts suite's tests share: cheap hashing settings, a started service, the
test password, and the raw-table reader's type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.accounts import Accounts
from conveyor.config import Settings
from conveyor.store.base import Store

FAST_HASHING: dict[str, Any] = {
    "password_time_cost": 1,
    "password_memory_kib": 64,
    "password_parallelism": 1,
}
"""argon2id at its cheapest: the suite hashes hundreds of passwords."""
PASSWORD = "correct horse battery"

RawRows = Callable[[str], Awaitable[str]]
"""``await raw_rows(table)``: every row of the table as one text (the ``raw_rows``
fixture)."""


def account_settings(**overrides: Any) -> Settings:
    """Settings with cheap hashing, plus ``overrides``. Lifetimes below the settings'
    floors (a test waiting out an expiry) go through ``model_copy``, unvalidated."""
    settings = Settings(**FAST_HASHING)
    return settings.model_copy(update=overrides)


async def started(store: Store, settings: Settings) -> Accounts:
    """An accounts service over ``store``, started (a signing key exists)."""
    accounts = Accounts(store, settings)
    await accounts.start()
    return accounts
