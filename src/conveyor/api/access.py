"""Who may call which route: one :class:`Access` level per route, checked by the one
dependency that authenticates (:func:`caller_for`).

==================  ==================================================================
level               the caller needs
==================  ==================================================================
``PUBLIC``          nothing (probes, docs, signup, login, refresh)
``METRICS``         nothing, or ``Authorization: Bearer <CONVEYOR_METRICS_TOKEN>`` when
                    that setting is set (``/metrics``)
``AUTHENTICATED``   a valid JWT or API key (``/v1/me``, logout, accepting an invitation)
``READ``            the ``requests:read`` scope (every role has it)
``WRITE``           the ``requests:write`` scope (member and above)
``ADMIN``           the ``admin`` scope (admin, owner): members, invitations, API keys
``OPERATOR``        a platform operator (queues: pause, resume, limits; every tenant)
==================  ==================================================================

A route declares its level with ``caller: Caller = Depends(caller_for(Access.WRITE))``,
or ``dependencies=[Depends(caller_for(Access.PUBLIC))]`` when it needs no caller;
:func:`undeclared_routes` lists the routes that declare none, and ``create_app`` refuses
to build while any does. An operator passes every level.

Answers: no credential, or one that does not authenticate: **401** with
``WWW-Authenticate: Bearer`` and always the same message (the reason is only logged, so
a client cannot probe which part was wrong); a valid caller without what the level
needs: **403** naming what is missing; a credential while the accounts service has not
started (the database not reached yet): **503**, so a client keeps its credential.

Rate limits: an authenticated call counts against its caller's budget (one per user and
per API key; the tenant's ``rate_limit``, else ``CONVEYOR_RATE_LIMIT_PER_CALLER``) and
not against its address. Every other request counts against its address
(``CONVEYOR_RATE_LIMIT_PER_IP``): the middleware counts those that carry no
``Authorization`` before routing, and this module those whose credential fails and
public calls that carry one (so a made-up header does not exempt a login attempt).
The probes, ``/metrics`` and the docs are never limited.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

from fastapi import FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount, Route

from conveyor.accounts.errors import Unauthenticated
from conveyor.api.deps import Caller
from conveyor.api.errors import UNAUTHENTICATED
from conveyor.api.ratelimit import (
    DEFAULT_EXEMPT_PATHS,
    DEFAULT_EXEMPT_PREFIXES,
    limit_address,
    limit_caller,
)
from conveyor.logs import get_logger
from conveyor.store.accounts import ADMIN, READ, WRITE
from conveyor.store.base import StoreError

__all__ = [
    "UNAUTHENTICATED",
    "Access",
    "Authenticator",
    "bearer_token",
    "caller_for",
    "declared_access",
    "document_access",
    "flat_routes",
    "missing",
    "scope_of",
    "stream_caller_for",
    "tenant_of",
    "undeclared_routes",
]

_log = get_logger("access")


class Access(enum.Enum):
    """What a route requires of its caller (see the module docstring)."""

    PUBLIC = "public"
    METRICS = "metrics"
    AUTHENTICATED = "authenticated"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    OPERATOR = "operator"

    @property
    def scope(self) -> str | None:
        """The scope the level needs, if it is a scope."""
        return _SCOPE.get(self)


_SCOPE = {Access.READ: READ, Access.WRITE: WRITE, Access.ADMIN: ADMIN}


class Authenticator(Protocol):
    """What the access dependency needs of the accounts service."""

    async def authenticate(self, bearer: str) -> Caller:
        """The caller a JWT or API key stands for; raises
        :class:`~conveyor.accounts.Unauthenticated` for any invalid credential."""
        ...

    async def authenticate_stream(self, token: str) -> Caller:
        """The caller a stream token was issued to; raises
        :class:`~conveyor.accounts.Unauthenticated` as :meth:`authenticate`."""
        ...


def missing(access: Access, caller: Caller) -> str | None:
    """Why ``caller`` may not call a route of level ``access`` (the 403's message), or
    None when it may. An operator may call every route."""
    if caller.operator or access in (Access.PUBLIC, Access.METRICS, Access.AUTHENTICATED):
        return None
    if access is Access.OPERATOR:
        return "This route is for platform operators only."
    scope = access.scope
    assert scope is not None
    if scope not in caller.scopes:
        held = ", ".join(sorted(caller.scopes)) or "none"
        return f"This route needs the {scope!r} scope; this caller has: {held}."
    return None


def bearer_token(request: Request) -> str | None:
    """The credential of ``Authorization: Bearer <it>``; None when absent or of another
    scheme."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def _unauthenticated() -> HTTPException:
    return HTTPException(401, UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})


async def _authenticate(
    request: Request, access: Access, stream_token: str | None = None
) -> Caller:
    token = bearer_token(request) if stream_token is None else stream_token
    if token is None:
        await limit_address(request)
        raise _unauthenticated()
    accounts: Authenticator | None = getattr(request.app.state, "accounts", None)
    if accounts is None:
        # The store has not been reached yet, so the credential cannot be checked: the
        # same 503 as every route that needs the database, not a 401 that would make a
        # client drop a valid credential.
        raise StoreError("the database has not been reached yet")
    try:
        if stream_token is None:
            caller = await accounts.authenticate(token)
        else:
            caller = await accounts.authenticate_stream(token)
    except Unauthenticated as exc:
        _log.info("authentication failed", reason=exc.reason, path=request.url.path)
        await limit_address(request)
        raise _unauthenticated() from None
    request.state.caller = caller
    await limit_caller(request, caller)
    reason = missing(access, caller)
    if reason is not None:
        raise HTTPException(403, reason)
    return caller


def _public() -> Callable[[Request], Awaitable[None]]:
    async def public(request: Request) -> None:
        path = request.url.path
        if path in DEFAULT_EXEMPT_PATHS or path.startswith(DEFAULT_EXEMPT_PREFIXES):
            return
        if "authorization" in request.headers:
            await limit_address(request)

    return public


def _metrics() -> Callable[[Request], Awaitable[None]]:
    async def metrics(request: Request) -> None:
        # Set by install_middleware, which every app serving /metrics goes through.
        expected: str | None = getattr(request.app.state, "metrics_token", None)
        if expected is None:
            return
        token = bearer_token(request) or ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise _unauthenticated()

    return metrics


def _caller(access: Access) -> Callable[[Request], Awaitable[Caller]]:
    async def caller(request: Request) -> Caller:
        return await _authenticate(request, access)

    caller.__name__ = f"caller_{access.value}"
    return caller


def _stream_caller(access: Access) -> Callable[[HTTPConnection], Awaitable[Caller]]:
    async def stream_caller(connection: HTTPConnection) -> Caller:
        # HTTPConnection: the same dependency serves the event stream's WebSocket route.
        request = cast(Request, connection)
        token = connection.query_params.get("token")
        if token is None or bearer_token(request) is not None:
            return await _authenticate(request, access)
        return await _authenticate(request, access, stream_token=token)

    stream_caller.__name__ = f"stream_caller_{access.value}"
    return stream_caller


_DEPENDENCIES: dict[Access, Callable[[Request], Awaitable[object]]] = {
    Access.PUBLIC: _public(),
    Access.METRICS: _metrics(),
    **{a: _caller(a) for a in Access if a not in (Access.PUBLIC, Access.METRICS)},
}
_STREAM_DEPENDENCIES = {Access.READ: _stream_caller(Access.READ)}
_LEVEL_OF = {
    id(dependency): access
    for access, dependency in [*_DEPENDENCIES.items(), *_STREAM_DEPENDENCIES.items()]
}


def caller_for(access: Access) -> Callable[[Request], Awaitable[Any]]:
    """The dependency of a route of level ``access``: it yields the authenticated
    :class:`Caller` (None for ``PUBLIC`` and ``METRICS``, which yield nothing)."""
    return _DEPENDENCIES[access]


def stream_caller_for(access: Access) -> Callable[[HTTPConnection], Awaitable[Caller]]:
    """:func:`caller_for` for the event streams (``READ`` only): the credential is the
    ``Authorization`` header or, for browsers (``EventSource`` and ``WebSocket`` send no
    header), a stream token in the ``token`` query parameter (``POST
    /v1/events/token``); an access token or API key in the URL is refused, so that none
    is left in logs and histories."""
    return _STREAM_DEPENDENCIES[access]


def tenant_of(caller: Caller) -> str:
    """The tenant a tenant-scoped call acts on; 403 for an operator logged in without
    one (operators reach every tenant's work through the operator routes)."""
    if caller.tenant_id is None:
        raise HTTPException(403, "This route acts on a tenant's data: log in to a tenant.")
    return caller.tenant_id


def scope_of(caller: Caller) -> str | None:
    """The tenant whose work a call may see: None (every tenant's) for an operator; a
    caller who is neither an operator nor in a tenant is refused, never widened to all."""
    return None if caller.operator else tenant_of(caller)


def declared_access(route: BaseRoute, *, public_paths: Iterable[str] = ()) -> Access | None:
    """The level ``route`` declares (through :func:`caller_for` among its dependencies),
    or None. Routes of the framework itself (the OpenAPI document, the docs' static
    files) are ``PUBLIC`` when their path is in ``public_paths``."""
    if isinstance(route, APIRoute | APIWebSocketRoute):
        levels = {_LEVEL_OF[id(d.call)] for d in _walk(route) if id(d.call) in _LEVEL_OF}
        if len(levels) == 1:
            return levels.pop()
        return None
    if isinstance(route, Mount | Route) and route.path in set(public_paths):
        return Access.PUBLIC
    return None


def _walk(route: APIRoute | APIWebSocketRoute) -> Iterable[Dependant]:
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        yield dependant
        pending.extend(dependant.dependencies)


def undeclared_routes(app: FastAPI, *, public_paths: Iterable[str] = ()) -> list[str]:
    """``"METHODS path"`` of every route of ``app`` that declares no single level."""
    paths = set(public_paths)
    found = []
    for route in flat_routes(app.routes):
        if declared_access(route, public_paths=paths) is None:
            methods = ",".join(sorted(getattr(route, "methods", None) or ()))
            found.append(f"{methods} {getattr(route, 'path', route)!s}".strip())
    return found


def flat_routes(routes: Iterable[BaseRoute]) -> Iterable[BaseRoute]:
    """The routes, those of included routers among them (this FastAPI keeps an included
    router as one entry, ``original_router``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


BEARER_SCHEME = "bearer"
"""The name of the security scheme in the OpenAPI document."""


def document_access(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (the app's OpenAPI document) with the bearer security scheme, each
    operation's ``security`` (none for ``PUBLIC``, optional for ``METRICS``) and its
    401 and 403 answers, from the level each route declares."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token (POST /v1/auth/login) or an API key (cvk_…).",
    }
    problem = {"$ref": "#/components/schemas/Problem"}
    for route in flat_routes(app.routes):
        if not isinstance(route, APIRoute):
            continue
        access = declared_access(route)
        item = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is None or access is None or access is Access.PUBLIC:
                continue
            required: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}]
            operation["security"] = [{}, *required] if access is Access.METRICS else required
            responses = operation.setdefault("responses", {})
            responses.setdefault(
                "401",
                {
                    "description": "No valid credential (the same message whatever was "
                    "wrong); WWW-Authenticate: Bearer.",
                    "content": {"application/json": {"schema": problem}},
                },
            )
            if access is not Access.METRICS:
                responses.setdefault(
                    "403",
                    {
                        "description": "The caller lacks the scope or role the route needs.",
                        "content": {"application/json": {"schema": problem}},
                    },
                )
    return schema
