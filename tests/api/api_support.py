"""Helpers of the API suite (importable by name, unlike conftest): test kinds, settings
for a test app, an in-process client (authenticated with a real API key of the
``default`` tenant, made through the app's accounts service on its store), credentials
of other kinds (users of each role, operators, keys of chosen scopes), and a submit
shortcut."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import lifespan
from fastapi import FastAPI
from pydantic import BaseModel, Field

import conveyor
from conveyor.accounts import Accounts, Conflict, Principal
from conveyor.config import Settings
from conveyor.store.accounts import SCOPES, Role
from conveyor.store.records import DEFAULT_TENANT

PASSWORD = "correct horse battery staple"
"""The password of every user the tests make."""

FAST_WORKER: dict[str, Any] = {
    "lease_s": 5.0,
    "heartbeat_interval": 1.0,
    "cancel_check_interval": 0.05,
    "rescue_interval": 0.5,
    "safety_poll_interval": 0.2,
    "shutdown_grace": 5.0,
    "max_memory_mb": 0,
}


class Typed(BaseModel):
    """The input of ``test.typed``."""

    name: str = Field(min_length=1, max_length=50)
    count: int = Field(default=1, ge=1, le=10)


async def echo(ctx: conveyor.JobContext, payload: Any) -> Any:
    """Return the input."""
    return payload


async def typed(ctx: conveyor.JobContext, payload: Typed) -> dict[str, Any]:
    """Repeat a name."""
    return {"names": [payload.name] * payload.count}


async def fail(ctx: conveyor.JobContext, payload: Any) -> None:
    """Fail at once, no retry."""
    raise conveyor.Discard("this kind always fails")


async def assets(ctx: conveyor.JobContext, payload: Any) -> dict[str, Any]:
    """A result holding asset URLs."""
    return {
        "image_url": "https://cdn.example.com/a.png",
        "files": [{"url": "https://cdn.example.com/b.pdf", "pages": 2}],
        "note": "https://not-an-asset.example.com (key is not url-like)",
    }


def register_test_kinds(registry: conveyor.Registry) -> None:
    conveyor.job("test.echo", registry=registry)(echo)
    conveyor.job("test.typed", registry=registry)(typed)
    conveyor.job("test.fail", registry=registry)(fail)
    conveyor.job("test.assets", registry=registry)(assets)


def api_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test app: its own database file, limits that never interfere."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/api.db",
        "rate_limit_per_ip": "1000000/minute",
        "rate_limit_per_caller": "1000000/minute",
        "login_rate_per_account": "1000000/minute",
        "max_memory_mb": 0,
        "log_format": "json",
        # A password hash costs little in tests; the parameters' effect is not under test.
        "password_time_cost": 1,
        "password_memory_kib": 8,
        "password_parallelism": 1,
    }
    values.update(overrides)
    return Settings(**values)


AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def serving(app: FastAPI, *, auth: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app``, its lifespan running, sending no credential; with
    ``auth`` (and the app's store open), an API key of the ``default`` tenant with every
    scope."""
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        if auth and app.state.accounts is not None:
            http.headers["Authorization"] = bearer(await api_key(app))
        yield http


def app_of(http: httpx.AsyncClient) -> FastAPI:
    """The app a client of :func:`serving` talks to."""
    transport: Any = http._transport
    app: FastAPI = transport.app
    return app


def accounts_of(app: FastAPI) -> Accounts:
    """The accounts service of a started app."""
    accounts: Accounts | None = app.state.accounts
    assert accounts is not None, "the app's store is not open"
    return accounts


def bearer(credential: str) -> str:
    return f"Bearer {credential}"


async def tenant(app: FastAPI, tenant_id: str = DEFAULT_TENANT) -> str:
    """Make sure tenant ``tenant_id`` exists; its id."""
    with suppress(Conflict):
        await accounts_of(app).create_tenant(tenant_id.capitalize(), tenant_id)
    return tenant_id


async def api_key(
    app: FastAPI,
    tenant_id: str = DEFAULT_TENANT,
    scopes: Any = SCOPES,
    name: str = "tests",
) -> str:
    """The text of a new API key of ``tenant_id`` (made if needed) with ``scopes``."""
    await tenant(app, tenant_id)
    _, text = await accounts_of(app).create_api_key(
        Principal.console(), name, sorted(scopes), tenant_id=tenant_id
    )
    return text


async def user_token(
    app: FastAPI, role: Role, tenant_id: str = DEFAULT_TENANT, email: str | None = None
) -> str:
    """An access token of a new user with ``role`` in ``tenant_id`` (made if needed)."""
    accounts = accounts_of(app)
    await tenant(app, tenant_id)
    email = email or f"{role.value}.{conveyor_id()}@{tenant_id.lower()}.example.com"
    await accounts.create_user(email, PASSWORD)
    await accounts.add_member(tenant_id, email, role)
    return (await accounts.login(email, PASSWORD, tenant_id)).access_token


async def operator_token(app: FastAPI, tenant_id: str | None = None) -> str:
    """An access token of a new platform operator: in no tenant, or logged in to
    ``tenant_id`` (made if needed) as its owner, where it passes every route."""
    accounts = accounts_of(app)
    email = f"operator.{conveyor_id()}@example.com"
    await accounts.create_operator(email, PASSWORD)
    if tenant_id is not None:
        await tenant(app, tenant_id)
        await accounts.add_member(tenant_id, email, Role.OWNER)
    return (await accounts.login(email, PASSWORD, tenant_id)).access_token


def conveyor_id() -> str:
    """A short random id for emails."""
    return secrets.token_hex(4)


async def submit(http: httpx.AsyncClient, kind: str, input: Any = None, **kw: Any) -> Any:
    """POST /v1/requests and insist on 202; the answer's JSON."""
    body: dict[str, Any] = {"kind": kind}
    if input is not None:
        body["input"] = input
    response = await http.post("/v1/requests", json=body, **kw)
    assert response.status_code == 202, response.text
    return response.json()
