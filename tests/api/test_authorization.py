"""The authorisation matrix: every route of the app, by every kind of caller, by (a resource
of the caller's own tenant, one of the other tenant), on both stores.

The routes come from the app itself, so a route added without a rule in :data:`RULES`
fails :func:`test_every_route_has_a_rule`, as does a rule whose route went away or whose
level differs from the one the route declares. For each call the expected answer follows
from the level and the caller: refused (401 without a credential, 403 without the scope
or role), else served; another tenant's ids answer 404, and no answer to a tenant's
caller holds anything of the other tenant (its id, its data, its members' emails, its
keys' prefixes). Callers: users of each role, API keys of each single scope, a platform
operator (in no tenant), and nobody.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from api_support import (
    PASSWORD,
    accounts_of,
    api_key,
    api_settings,
    bearer,
    operator_token,
    serving,
    tenant,
    user_token,
)
from fastapi import Depends, FastAPI
from fastapi.routing import APIWebSocketRoute
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import conveyor
from conveyor.accounts import Principal
from conveyor.api import create_app
from conveyor.api.access import Access, caller_for, declared_access, flat_routes
from conveyor.api.app import _framework_paths
from conveyor.api.errors import UNAUTHENTICATED
from conveyor.notify.signing import new_secret
from conveyor.store.accounts import ADMIN, READ, WRITE, Role
from conveyor.store.base import Store
from conveyor.store.webhooks import NewDelivery, NewWebhook
from live_server import live_server

OWN = "tenant-alpha-3c1e"
OTHER = "tenant-bravo-9d4f"
MARKER = "bravo-private-7a51"
"""In the other tenant's data: no answer to the own tenant's callers may hold it."""

CALLERS = [
    "viewer",
    "member",
    "admin",
    "owner",
    "key:read",
    "key:write",
    "key:admin",
    "operator",
    "anonymous",
]
HOLDS = {
    "viewer": {READ},
    "member": {READ, WRITE},
    "admin": {READ, WRITE, ADMIN},
    "owner": {READ, WRITE, ADMIN},
    "key:read": {READ},
    "key:write": {WRITE},
    "key:admin": {ADMIN},
}
KEY_SCOPES = {"key:read": READ, "key:write": WRITE, "key:admin": ADMIN}


def may(caller: str, access: Access) -> bool:
    """Whether ``caller`` passes ``access`` (the rule of conveyor.api.access)."""
    if access in (Access.PUBLIC, Access.METRICS):
        return True
    if caller == "anonymous":
        return False
    if caller == "operator" or access is Access.AUTHENTICATED:
        return True
    return access.scope in HOLDS[caller]


def _mark(tenant_id: str) -> str:
    """What the data of ``tenant_id`` carries: :data:`MARKER` for the other tenant."""
    return MARKER if tenant_id == OTHER else "own"


@dataclass
class World:
    """The app, a client without credentials, and each caller's credential."""

    app: FastAPI
    http: httpx.AsyncClient
    store: Store
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    owner_key: dict[str, str] = field(default_factory=dict)
    """An owner-strength key per tenant, to make resources with."""

    async def submit(self, tenant_id: str, kind: str = "test.echo", body: Any = None) -> Any:
        response = await self.http.post(
            "/v1/requests",
            json=body
            or {"kind": kind, "input": {"marker": MARKER if tenant_id == OTHER else "own"}},
            headers={"Authorization": self.owner_key[tenant_id]},
        )
        assert response.status_code == 202, response.text
        return response.json()

    async def video(self, tenant_id: str) -> int:
        response = await self.http.post(
            "/api/video/process",
            json={"video_url": f"https://v.example/{_mark(tenant_id)}", "company_name": "c"},
            headers={"Authorization": self.owner_key[tenant_id]},
        )
        assert response.status_code == 202, response.text
        job_id: int = response.json()["data"]["jobId"]
        return job_id

    async def member(self, tenant_id: str) -> str:
        accounts = accounts_of(self.app)
        email = f"{_mark(tenant_id)}.{secrets.token_hex(4)}@x.example.com"
        user = await accounts.create_user(email, PASSWORD)
        await accounts.add_member(tenant_id, user.id, Role.MEMBER)
        return user.id

    async def key(self, tenant_id: str) -> str:
        key, _ = await accounts_of(self.app).create_api_key(
            Principal.console(), _mark(tenant_id), [READ], tenant_id=tenant_id
        )
        return key.id

    async def invitation(self, tenant_id: str) -> str:
        invitation, _ = await accounts_of(self.app).invite(
            Principal.console(),
            f"{_mark(tenant_id)}.{secrets.token_hex(4)}@x.example.com",
            Role.MEMBER,
            tenant_id,
        )
        return invitation.id

    async def login_body(self, tenant_id: str) -> dict[str, Any]:
        accounts = accounts_of(self.app)
        email = f"login.{secrets.token_hex(4)}@x.example.com"
        await accounts.create_user(email, PASSWORD)
        await accounts.add_member(tenant_id, email, Role.VIEWER)
        return {"email": email, "password": PASSWORD, "tenant_id": tenant_id}

    async def refresh_body(self, tenant_id: str) -> dict[str, Any]:
        body = await self.login_body(tenant_id)
        session = await accounts_of(self.app).login(**body)
        return {"refresh_token": session.refresh_token}


Make = Callable[[World, str], Awaitable[Any]]


async def _nothing(world: World, tenant_id: str) -> Any:
    return None


@dataclass(frozen=True)
class Rule:
    """How to call one route, and what it answers besides the level's rule.

    ``target`` makes what the path names in a tenant (for the other-tenant calls; None:
    the route names nothing of a tenant) and returns the path's parameters; ``body``
    makes the body. ``operator``: the status an operator (in no tenant) gets where the
    route acts on a tenant's data and so needs a tenant; ``refused``: callers the route
    itself refuses although the level lets them in (status by caller)."""

    access: Access
    target: Make | None = None
    body: Make = _nothing
    path_params: dict[str, Any] = field(default_factory=dict)
    operator: int | None = None
    refused: dict[str, int] = field(default_factory=dict)
    stream: bool = False
    """An event stream: answered with an endless body, so called on a live server by
    :func:`test_the_authorisation_matrix_of_the_streams`, ``target`` in its query."""


async def _job(world: World, t: str) -> dict[str, Any]:
    return {"job_id": (await world.submit(t))["job_id"]}


async def _request(world: World, t: str) -> dict[str, Any]:
    return {"request_id": (await world.submit(t))["request_id"]}


async def _seed_job(world: World, t: str) -> dict[str, Any]:
    return {"type": "video", "id": await world.video(t)}


async def _member(world: World, t: str) -> dict[str, Any]:
    return {"user_id": await world.member(t)}


async def _key(world: World, t: str) -> dict[str, Any]:
    return {"key_id": await world.key(t)}


async def _webhook(world: World, t: str) -> dict[str, Any]:
    new = NewWebhook(
        tenant_id=t,
        url=f"https://{HOOK_ADDRESS}/{_mark(t)}",
        event_types=("*",),
        secret=new_secret(),
        description=_mark(t),
    )
    return {"webhook_id": (await world.store.create_webhook(new)).id}


async def _delivery(world: World, t: str) -> dict[str, Any]:
    made = await _webhook(world, t)
    attempt = NewDelivery(
        tenant_id=t,
        webhook_id=made["webhook_id"],
        message_id=f"msg_1_{made['webhook_id']}",
        event_id=1,
        event_type="job.completed",
        job_id=None,
        attempt=1,
        status_code=500,
        latency_ms=1.0,
        response_excerpt=_mark(t),
        error="HTTP 500",
        payload={"type": "job.completed", "data": {"marker": _mark(t)}},
        succeeded=False,
    )
    recorded = await world.store.record_delivery(attempt, disable_after=100)
    assert recorded.delivery is not None
    return {**made, "delivery_id": recorded.delivery.id}


async def _invitation(world: World, t: str) -> dict[str, Any]:
    return {"invitation_id": await world.invitation(t)}


def _json(value: Any) -> Make:
    async def make(world: World, t: str) -> Any:
        return value

    return make


async def _signup(world: World, t: str) -> Any:
    return {
        "email": f"new.{secrets.token_hex(4)}@x.example.com",
        "password": PASSWORD,
        "tenant_name": "N",
    }


async def _login(world: World, t: str) -> Any:
    return await world.login_body(t)


async def _refresh(world: World, t: str) -> Any:
    return await world.refresh_body(t)


HOOK_ADDRESS = "93.184.215.14"
"""A public address: a webhook URL that passes the SSRF guard without a DNS look-up."""
NO_TENANT = 403
"""An operator in no tenant on a route that acts on a tenant's data (tenant_of)."""
NAME_THE_TENANT = 422
"""An operator in no tenant managing a tenant's members or invitations (none named)."""

RULES: dict[str, Rule] = {
    "GET /openapi.json": Rule(Access.PUBLIC),
    "HEAD /openapi.json": Rule(Access.PUBLIC),
    "MOUNT /docs/assets": Rule(Access.PUBLIC),
    "GET /docs": Rule(Access.PUBLIC),
    "GET /docs/oauth2-redirect": Rule(Access.PUBLIC),
    "GET /redoc": Rule(Access.PUBLIC),
    "GET /health": Rule(Access.PUBLIC),
    "HEAD /health": Rule(Access.PUBLIC),
    "GET /ready": Rule(Access.PUBLIC),
    "HEAD /ready": Rule(Access.PUBLIC),
    "GET /metrics": Rule(Access.METRICS),
    "HEAD /metrics": Rule(Access.METRICS),
    "POST /v1/auth/signup": Rule(Access.PUBLIC, body=_signup),
    "POST /v1/auth/login": Rule(Access.PUBLIC, body=_login),
    "POST /v1/auth/refresh": Rule(Access.PUBLIC, body=_refresh),
    "POST /v1/auth/logout": Rule(Access.AUTHENTICATED, body=_refresh),
    "GET /v1/me": Rule(Access.AUTHENTICATED),
    "POST /v1/invitations": Rule(
        Access.ADMIN,
        body=_json({"email": "someone@x.example.com", "role": "member"}),
        operator=NAME_THE_TENANT,
    ),
    "GET /v1/invitations": Rule(Access.ADMIN, operator=NAME_THE_TENANT),
    "DELETE /v1/invitations/{invitation_id}": Rule(
        Access.ADMIN, target=_invitation, operator=NAME_THE_TENANT
    ),
    # Any user may try an invitation (an unknown token: 404); an API key is no user.
    "POST /v1/invitations/accept": Rule(
        Access.AUTHENTICATED,
        body=_json({"token": "cvi_unknown"}),
        refused={k: 403 for k in KEY_SCOPES},
    ),
    # A user's own, in the tenant of the token: an API key is no user, an operator in no
    # tenant has no membership.
    "GET /v1/me/email-preferences": Rule(
        Access.AUTHENTICATED, operator=NO_TENANT, refused={k: 403 for k in KEY_SCOPES}
    ),
    "PUT /v1/me/email-preferences": Rule(
        Access.AUTHENTICATED,
        body=_json({"event_types": ["job.completed"], "kinds": [], "enabled": True}),
        operator=NO_TENANT,
        refused={k: 403 for k in KEY_SCOPES},
    ),
    # The link's token is the credential (tests/api/test_routes_email.py).
    "GET /v1/email/unsubscribe": Rule(Access.PUBLIC),
    "POST /v1/email/unsubscribe": Rule(Access.PUBLIC),
    "GET /v1/members": Rule(Access.ADMIN, operator=NAME_THE_TENANT),
    "PATCH /v1/members/{user_id}": Rule(
        Access.ADMIN, target=_member, body=_json({"role": "viewer"}), operator=NAME_THE_TENANT
    ),
    "DELETE /v1/members/{user_id}": Rule(Access.ADMIN, target=_member, operator=NAME_THE_TENANT),
    "POST /v1/api-keys": Rule(
        Access.ADMIN, body=_json({"name": "k", "scopes": ["admin"]}), operator=NAME_THE_TENANT
    ),
    "GET /v1/api-keys": Rule(Access.ADMIN),
    "DELETE /v1/api-keys/{key_id}": Rule(Access.ADMIN, target=_key),
    "POST /v1/webhooks": Rule(
        Access.ADMIN,
        body=_json({"url": f"https://{HOOK_ADDRESS}/in", "event_types": ["*"]}),
        operator=NO_TENANT,
    ),
    "GET /v1/webhooks": Rule(Access.ADMIN, operator=NO_TENANT),
    "GET /v1/webhooks/{webhook_id}": Rule(Access.ADMIN, target=_webhook, operator=NO_TENANT),
    "PATCH /v1/webhooks/{webhook_id}": Rule(
        Access.ADMIN, target=_webhook, body=_json({"description": "d"}), operator=NO_TENANT
    ),
    "DELETE /v1/webhooks/{webhook_id}": Rule(Access.ADMIN, target=_webhook, operator=NO_TENANT),
    "POST /v1/webhooks/{webhook_id}/rotate-secret": Rule(
        Access.ADMIN, target=_webhook, operator=NO_TENANT
    ),
    "GET /v1/webhooks/{webhook_id}/deliveries": Rule(
        Access.ADMIN, target=_delivery, operator=NO_TENANT
    ),
    "POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": Rule(
        Access.ADMIN, target=_delivery, operator=NO_TENANT
    ),
    "POST /v1/webhooks/{webhook_id}/test": Rule(Access.ADMIN, target=_webhook, operator=NO_TENANT),
    "POST /v1/requests": Rule(
        Access.WRITE, body=_json({"kind": "test.echo", "input": {}}), operator=NO_TENANT
    ),
    "GET /v1/requests": Rule(Access.READ, operator=NO_TENANT),
    "GET /v1/requests/{request_id}": Rule(Access.READ, target=_request, operator=NO_TENANT),
    "POST /v1/requests/{request_id}/cancel": Rule(
        Access.WRITE, target=_request, operator=NO_TENANT
    ),
    "POST /v1/requests/{request_id}/retry": Rule(Access.WRITE, target=_request, operator=NO_TENANT),
    "GET /v1/jobs": Rule(Access.READ),
    "GET /v1/jobs/{job_id}": Rule(Access.READ, target=_job),
    "POST /v1/jobs/{job_id}/cancel": Rule(Access.WRITE, target=_job),
    "POST /v1/jobs/{job_id}/retry": Rule(Access.WRITE, target=_job),
    "GET /v1/queues": Rule(Access.READ),
    "POST /v1/queues/{name}/pause": Rule(Access.OPERATOR, path_params={"name": "default"}),
    "GET /v1/queues/{name}/tenant-limits": Rule(Access.OPERATOR, path_params={"name": "default"}),
    "PUT /v1/queues/{name}/tenant-limits/{tenant_id}": Rule(
        Access.OPERATOR, path_params={"name": "default", "tenant_id": OWN}, body=_json({})
    ),
    "POST /v1/queues/{name}/resume": Rule(Access.OPERATOR, path_params={"name": "default"}),
    "POST /v1/queues/{name}/limit": Rule(
        Access.OPERATOR, path_params={"name": "default"}, body=_json({"limit": 5})
    ),
    "POST /api/video/process": Rule(
        Access.WRITE,
        body=_json({"video_url": "https://v.example/1", "company_name": "c"}),
        operator=NO_TENANT,
    ),
    "POST /api/interactions/{interactionId}/questions": Rule(
        Access.WRITE,
        path_params={"interactionId": "i1"},
        body=_json({"question": "q", "companyName": "c"}),
        operator=NO_TENANT,
    ),
    "GET /api/queue/status": Rule(Access.READ),
    "GET /api/queue/monitor": Rule(Access.READ),
    "GET /api/queue/jobs/{type}/{id}": Rule(Access.READ, target=_seed_job),
    "POST /v1/events/token": Rule(Access.READ),
    # An operator in no tenant streams every tenant's events, but no request is its own.
    "GET /v1/events": Rule(Access.READ, target=_request, operator=404, stream=True),
    "WEBSOCKET /v1/events/ws": Rule(Access.READ, target=_request, operator=404, stream=True),
}


def route_keys(app: FastAPI) -> dict[str, Access | None]:
    """``"METHOD path"`` of every route of ``app`` (``MOUNT path`` for a mount) and the
    level it declares."""
    keys: dict[str, Access | None] = {}
    public = _framework_paths(app)
    for route in flat_routes(app.routes):
        access = declared_access(route, public_paths=public)
        path = getattr(route, "path", "")
        if isinstance(route, Mount):
            keys[f"MOUNT {path}"] = access
            continue
        if isinstance(route, APIWebSocketRoute):
            keys[f"WEBSOCKET {path}"] = access
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            keys[f"{method} {path}"] = access
    return keys


def test_every_route_has_a_rule(kinds: conveyor.Registry, tmp_path: Path) -> None:
    keys = route_keys(create_app(api_settings(tmp_path), kinds=kinds))
    unruled = sorted(set(keys) - set(RULES))
    assert not unruled, f"routes without a rule in the authorisation matrix: {unruled}"
    stale = sorted(set(RULES) - set(keys))
    assert not stale, f"rules for routes the app no longer has: {stale}"
    differ = {k: (keys[k], RULES[k].access) for k in keys if keys[k] is not RULES[k].access}
    assert not differ, f"routes whose declared level is not the matrix's: {differ}"


def test_a_new_route_without_a_rule_is_caught(kinds: conveyor.Registry, tmp_path: Path) -> None:
    app = create_app(api_settings(tmp_path), kinds=kinds)

    @app.get("/v1/unruled", dependencies=[Depends(caller_for(Access.READ))])
    async def unruled() -> None: ...

    keys = route_keys(app)
    assert keys["GET /v1/unruled"] is Access.READ
    assert "GET /v1/unruled" not in RULES


def _url(key: str, params: dict[str, Any]) -> tuple[str, str]:
    method, path = key.split(" ", 1)
    if method == "MOUNT":
        return "GET", f"{path}/swagger-ui.css"
    return method, path.format(**params)


async def _world(app: FastAPI, store: Store, http: httpx.AsyncClient) -> World:
    world = World(app, http, store)
    for t in (OWN, OTHER):
        await tenant(app, t)
        world.owner_key[t] = bearer(await api_key(app, t, name=f"owner of {t}"))
    # Both tenants' members and keys exist: a listing could show the other's.
    await world.member(OTHER)
    await world.key(OTHER)
    await world.invitation(OTHER)
    await world.submit(OTHER)
    for caller in CALLERS:
        if caller in HOLDS and caller.startswith("key:"):
            text = await api_key(app, OWN, [KEY_SCOPES[caller]], name=caller)
            world.headers[caller] = {"Authorization": bearer(text)}
        elif caller in HOLDS:
            token = await user_token(app, Role(caller), OWN)
            world.headers[caller] = {"Authorization": bearer(token)}
        elif caller == "operator":
            world.headers[caller] = {"Authorization": bearer(await operator_token(app))}
        else:
            world.headers[caller] = {}
    return world


async def test_the_authorisation_matrix(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(api_settings(tmp_path), store=store, kinds=kinds)
    failures: list[str] = []
    async with serving(app) as http:
        world = await _world(app, store, http)
        for key, caller in itertools.product(RULES, CALLERS):
            rule = RULES[key]
            if rule.stream:
                continue
            targets = [OWN, OTHER] if rule.target is not None else [OWN]
            for target in targets:
                params = dict(rule.path_params)
                if rule.target is not None:
                    params.update(await rule.target(world, target))
                method, url = _url(key, params)
                body = await rule.body(world, OWN)
                response = await http.request(method, url, json=body, headers=world.headers[caller])
                problem = _judge(rule, caller, target, response)
                if problem:
                    failures.append(f"{caller:10} {key} ({target}): {problem}")
    assert not failures, "\n".join(failures)


async def test_the_authorisation_matrix_of_the_streams(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(api_settings(tmp_path), store=store, kinds=kinds)
    failures: list[str] = []
    async with live_server(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        world = await _world(app, store, http)
        for key, caller in itertools.product(RULES, CALLERS):
            rule = RULES[key]
            if not rule.stream:
                continue
            assert rule.target is not None
            for target in (OWN, OTHER):
                query = urlencode(await rule.target(world, target))
                method, path = key.split(" ", 1)
                headers = world.headers[caller]
                if method == "WEBSOCKET":
                    url = f"ws{base.removeprefix('http')}{path}?{query}"
                    response = await _ws_handshake(url, headers)
                else:
                    response = await _stream_head(http, f"{path}?{query}", headers)
                problem = _judge(rule, caller, target, response)
                if problem:
                    failures.append(f"{caller:10} {key} ({target}): {problem}")
    assert not failures, "\n".join(failures)


async def _stream_head(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> httpx.Response:
    """The answer to a GET of a stream: its body only when it is not the stream."""
    async with http.stream("GET", url, headers=headers) as response:
        body = b"" if response.status_code == 200 else await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=body)


async def _ws_handshake(url: str, headers: dict[str, str]) -> httpx.Response:
    """The handshake's answer as a response: 200 for an accepted WebSocket."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=20):
            return httpx.Response(200)
    except InvalidStatus as exc:
        refused = exc.response
        return httpx.Response(
            refused.status_code,
            headers=dict(refused.headers.raw_items()),
            content=bytes(refused.body),
        )


def _judge(rule: Rule, caller: str, target: str, response: httpx.Response) -> str | None:
    """What is wrong with ``response``, or None."""
    status = response.status_code
    if status >= 500:
        return f"server error {status}: {response.text[:200]}"
    if not may(caller, rule.access):
        if caller == "anonymous":
            if status != 401 or response.json()["detail"] != UNAUTHENTICATED:
                return f"expected the one 401, got {status}"
            if response.headers.get("WWW-Authenticate") != "Bearer":
                return "a 401 without WWW-Authenticate: Bearer"
            return None
        return None if status == 403 else f"expected 403, got {status}"
    if caller == "operator":
        expected = rule.operator
        if expected is not None:
            return None if status == expected else f"expected {expected}, got {status}"
        return None if status not in (401, 403) else f"refused with {status}: {response.text}"
    if caller in rule.refused:
        expected = rule.refused[caller]
        return None if status == expected else f"expected {expected}, got {status}"
    if target == OTHER:
        return None if status == 404 else f"another tenant's id answered {status}"
    if status in (401, 403):
        return f"refused with {status}: {response.text[:200]}"
    if caller != "anonymous" and any(s in response.text for s in (OTHER, MARKER)):
        return f"the answer holds the other tenant's data: {response.text[:300]}"
    return None
