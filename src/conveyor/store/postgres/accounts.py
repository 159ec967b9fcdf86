"""Accounts on PostgreSQL (:class:`~conveyor.store.accounts.AccountStore`), each verb one
transaction, in three parts by concern: who belongs to which tenant (``accounts_tenants``:
tenants, users, memberships, invitations), sessions (``accounts_sessions``: refresh
tokens, signing keys) and API keys (``accounts_api_keys``), each with its ``.sql`` file of
the same name. Text holding NUL is refused before any statement runs, as on the other
store (:mod:`conveyor.store.accounts_text`)."""

from __future__ import annotations

from conveyor.store.accounts_text import refuse_nul_text
from conveyor.store.postgres.accounts_api_keys import PostgresApiKeys
from conveyor.store.postgres.accounts_sessions import PostgresSessions
from conveyor.store.postgres.accounts_tenants import PostgresTenancy


@refuse_nul_text
class PostgresAccounts(PostgresTenancy, PostgresSessions, PostgresApiKeys):
    """The :class:`~conveyor.store.accounts.AccountStore` verbs of ``PostgresStore``."""
