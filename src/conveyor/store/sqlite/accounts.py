"""Accounts on SQLite (:class:`~conveyor.store.accounts.AccountStore`), each verb one
transaction on the store's thread, in three parts by concern: who belongs to which tenant
(``accounts_tenants``: tenants, users, memberships, invitations), sessions
(``accounts_sessions``: refresh tokens, signing keys) and API keys (``accounts_api_keys``),
each with its ``.sql`` file of the same name. Text holding NUL is refused before any
statement runs, as on the other store (:mod:`conveyor.store.accounts_text`)."""

from __future__ import annotations

from conveyor.store.accounts_text import refuse_nul_text
from conveyor.store.sqlite.accounts_api_keys import SqliteApiKeys
from conveyor.store.sqlite.accounts_sessions import SqliteSessions
from conveyor.store.sqlite.accounts_tenants import SqliteTenancy


@refuse_nul_text
class SqliteAccounts(SqliteTenancy, SqliteSessions, SqliteApiKeys):
    """The :class:`~conveyor.store.accounts.AccountStore` verbs of ``SqliteStore``."""
