"""A schemathesis run over the OpenAPI document, on SQLite and on PostgreSQL: no 5xx,
every response matches the documented status codes, headers and schemas, and none holds
the other tenant's data.

It calls as two tenants: an owner's access token (JWT) of tenant A and an API key with
every scope of tenant B, each tenant holding requests, jobs, members, invitations and
keys marked with its own secret string; an answer to one tenant's caller must not contain
the other's tenant id or secret.

Bounded and repeatable: a few valid and a few invalid examples per operation,
derandomized. It drives hypothesis itself rather than ``schema.parametrize()``, whose
fixture-based form fails on pytest 9 (it reads ``request.node._nodeid``). schemathesis
calls the app in-process (ASGI) on a loop thread of its own, so the app owns its store
there: a temporary SQLite file, or a fresh PostgreSQL database of the session's server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_support import (
    PASSWORD,
    accounts_of,
    api_key,
    api_settings,
    bearer,
    serving,
    submit,
    tenant,
)
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conveyor.accounts import Principal
from conveyor.api import create_app
from conveyor.config import Settings
from conveyor.engine.kinds import Registry
from conveyor.store.accounts import READ, Role
from pg_server import PgTestServer

MAX_EXAMPLES = 15

ACCOUNT_CHECKS = {"POST /v1/auth/signup", "POST /v1/invitations", "POST /v1/api-keys"}
"""Operations whose emails and names the accounts service checks beyond what JSON Schema
says (printable characters only): a schema-valid one may rightly get 422."""
STREAMS = {"GET /v1/events"}
"""Operations that answer an endless stream (Server-Sent Events), which an in-process
client never sees the end of: tests/api/test_event_streams.py calls them on a live server,
hostile input included."""
RESOLVED_URLS = {"POST /v1/webhooks", "PATCH /v1/webhooks/{webhook_id}"}
"""Operations whose URL's host is resolved and checked by the SSRF guard (a made-up host
does not resolve): a schema-valid one may rightly get 422."""


@dataclass(frozen=True)
class Tenant:
    """One tenant's caller and what only its answers may contain."""

    id: str
    authorization: str
    secrets: tuple[str, ...]


async def _populate(app_settings: Settings, kinds: Registry) -> tuple[Tenant, Tenant]:
    """Two tenants with data of their own, made through the API and the accounts service
    on the database the schemathesis app will open."""
    tenants = []
    async with serving(create_app(app_settings, kinds=kinds)) as http:
        app: Any = http._transport.app  # type: ignore[attr-defined]
        accounts = accounts_of(app)
        for name, secret in (
            ("tenant-a-51c2", "alpha-secret-8e0d"),
            ("tenant-b-93f7", "bravo-secret-4b6a"),
        ):
            await tenant(app, name)
            if name.startswith("tenant-a"):
                email = f"owner@{secret}.example.com"
                await accounts.create_user(email, PASSWORD)
                await accounts.add_member(name, email, Role.OWNER)
                credential = (await accounts.login(email, PASSWORD, name)).access_token
            else:
                credential = await api_key(app, name, name=secret)
            headers = {"Authorization": bearer(credential)}
            for _ in range(3):
                await submit(http, "test.echo", {"secret": secret}, headers=headers)
            await accounts.invite(
                Principal.console(), f"invitee@{secret}.example.com", Role.MEMBER, name
            )
            await accounts.create_api_key(Principal.console(), secret, [READ], tenant_id=name)
            tenants.append(Tenant(name, bearer(credential), (name, secret)))
    return tenants[0], tenants[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def api_schema(request: pytest.FixtureRequest, tmp_path: Path, kinds: Registry) -> Any:
    """The app's schema and its two tenants. schemathesis starts the app's lifespan at its
    first call, and its pytest plugin ends it when the test ends, before this fixture's
    values go away."""
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        server: PgTestServer = request.getfixturevalue("pg_server")
        overrides["database_url"] = server.create_database()
    app_settings: Settings = api_settings(tmp_path, **overrides)
    tenants = asyncio.run(_populate(app_settings, kinds))
    app = create_app(app_settings, kinds=kinds)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # JSON Schema's strings may hold NUL, but Conveyor refuses it everywhere (PostgreSQL
    # cannot store it; see conveyor.engine.limits): a valid case must not contain one.
    # The hostile-input suite (test_hostile_http.py) sends it on purpose.
    # The credentials are the two tenants' (sent with each case), not generated ones;
    # test_authorization.py covers calls without or with a bad credential.
    schema.config.generation.update(allow_x00=False, with_security_parameters=False)
    return schema, tenants


def test_the_api_honours_its_openapi_document(api_schema: Any) -> None:
    schema, (first, second) = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 33
    for operation in operations:
        if operation.label in STREAMS:
            continue
        for caller, other in ((first, second), (second, first)):
            check_operation(operation, GenerationMode.POSITIVE, caller, other)
        if list(operation.iter_parameters()) or len(operation.body):
            # Nothing to get wrong in a request without parameters or body.
            check_operation(operation, GenerationMode.NEGATIVE, first, second)


def check_operation(operation: Any, mode: GenerationMode, caller: Tenant, other: Tenant) -> None:
    """Hypothesis over one operation's cases of one mode (valid, or deliberately invalid
    input, which must get a 4xx), called as ``caller``: no answer holds ``other``'s
    data."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            headers={"Authorization": caller.authorization}, excluded_checks=excluded
        )
        leaked = [s for s in other.secrets if s in response.text]
        assert not leaked, (
            f"an answer to {caller.id} holds {other.id}'s {leaked}: {response.text[:300]}"
        )

    # A cursor is opaque: no schema can tell a valid one from any other string, so a
    # schema-valid but made-up cursor is rightly refused (422); so are the emails and
    # names of ACCOUNT_CHECKS. These are otherwise checked like every operation.
    names = {p.name for p in operation.iter_parameters()}
    excluded = (
        [positive_data_acceptance]
        if "cursor" in names or operation.label in ACCOUNT_CHECKS | RESOLVED_URLS
        else []
    )

    try:
        check()
    except Exception as exc:
        exc.add_note(f"operation: {operation.label}, {mode.value} cases")
        raise
