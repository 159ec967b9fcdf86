"""The application factory.

::

    app = create_app()                          # CONVEYOR_* settings, its own store
    app = create_app(settings, store=store)     # an open, migrated store you close

Layers, outermost first: the cross-cutting middleware of :mod:`conveyor.api.middleware`
(metrics, request id, access log, security headers, CORS, rate limit, body size, unhandled
errors, in one layer), the error handlers of :mod:`conveyor.api.errors`, then the routers.
The API never runs a job: it stores requests and their jobs, and workers run them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

from fastapi import Depends, FastAPI

from conveyor.accounts.service import Accounts
from conveyor.api import docs
from conveyor.api.access import Access, caller_for, document_access, undeclared_routes
from conveyor.api.docs import install_docs
from conveyor.api.errors import install_error_handlers
from conveyor.api.metrics import Metrics
from conveyor.api.middleware import install_middleware
from conveyor.api.routes import (
    api_keys,
    auth,
    email,
    events,
    health,
    jobs,
    limits,
    members,
    queues,
    requests,
    seed,
    webhooks,
)
from conveyor.api.state import ApiState, open_store
from conveyor.config import Settings
from conveyor.engine.kinds import Registry, import_modules, registry
from conveyor.logs import get_logger
from conveyor.store import Store, make_store
from conveyor.store.records import QueueStats
from conveyor.workloads import register_builtin

log = get_logger("api")

DESCRIPTION = """\
Submit work and get an answer at once (202); workers run it in the background.

* **Requests** (`/v1/requests`): what a user asked for, with its status, progress,
  result, errors and asset URLs. Send `Idempotency-Key` to repeat a submission safely.
* **Jobs and queues** (`/v1/jobs`, `/v1/queues`): the tenant's jobs and its queue counts;
  pausing, resuming and limiting a queue is for platform operators.
* **Accounts** (`/v1/auth`, `/v1/me`, `/v1/invitations`, `/v1/members`, `/v1/api-keys`):
  signup, login, sessions, who calls, the tenant's members and API keys.
* **Health**: `/health` (the QuDemo seed's shape), `/ready`, `/metrics` (Prometheus);
  each answers `HEAD` too. These and the documentation are not rate-limited.
* **QuDemo seed** (`/api/...`): the seed backend's routes on the same engine.

Send `Authorization: Bearer <access token or API key>`: every route but the probes,
the documentation and signup/login/refresh needs one. 401: no valid credential; 403: the
credential lacks the scope or role the route needs. Errors are JSON with a `detail`;
503 and 429 answers carry `Retry-After`.
"""


def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    kinds: Registry | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: default ``Settings()`` (the ``CONVEYOR_*`` variables).
        store: an open, migrated store to serve with; the caller closes it. Without one
            the app opens ``settings.database_url`` at start-up, migrates it and closes it
            at shutdown; if the database cannot be reached then, the app starts anyway,
            answers 503 where it needs the database, and keeps trying to connect.
        kinds: the job kinds to accept (default: the module registry, after importing
            ``settings.imports``). The built-in seed kinds ``video.process`` and
            ``qa.answer`` are always added, since the seed's routes submit them.

    Raises ``StoreError`` if ``settings.database_url`` names no known store.
    """
    settings = settings if settings is not None else Settings()
    if kinds is None:
        import_modules(settings.imports)
        kinds = registry
    register_builtin(kinds)
    api = ApiState(settings, kinds)
    owned = make_store(settings, api=True) if store is None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connecting: asyncio.Task[None] | None = None
        if store is not None:
            await _start_accounts(app, store, settings)
            api.attach(store)
        elif owned is not None:
            connecting = await _open(app, api, owned, settings)
        try:
            yield
        finally:
            if connecting is not None:
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
            app.state.accounts = None
            await api.detach()
            if owned is not None:
                await owned.close()

    app = FastAPI(
        title="Conveyor",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's pages load Swagger UI and Redoc from a CDN; install_docs serves them.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app, dependencies=[Depends(caller_for(Access.PUBLIC))])
    app.state.conveyor = api
    app.state.accounts = None
    app.state.kind_names = kinds.names()
    install_error_handlers(app)
    app.include_router(auth.router)
    app.include_router(members.router)
    app.include_router(api_keys.router)
    app.include_router(email.router)
    app.include_router(webhooks.router)
    app.include_router(requests.build_router(api))
    app.include_router(jobs.router)
    app.include_router(queues.router)
    app.include_router(limits.router)
    app.include_router(health.router)
    app.include_router(seed.router)
    app.include_router(events.router)
    _install_cross_cutting(app, settings, api)
    _document_access(app)
    undeclared = undeclared_routes(app, public_paths=_framework_paths(app))
    if undeclared:
        raise RuntimeError(
            "every route must declare its access level with "
            "Depends(caller_for(Access.<LEVEL>)) (conveyor.api.access); these declare "
            f"none: {', '.join(undeclared)}"
        )
    return app


def _document_access(app: FastAPI) -> None:
    """The OpenAPI document with the bearer scheme and each route's security (built
    once, at its first request, as FastAPI does)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_access(app, build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _framework_paths(app: FastAPI) -> set[str]:
    """The routes FastAPI and the docs add without dependencies: the OpenAPI document
    and the docs' static files, both public."""
    paths = {docs.ASSETS_PATH}
    if app.openapi_url is not None:
        paths.add(app.openapi_url)
    return paths


async def _start_accounts(app: FastAPI, store: Store, settings: Settings) -> None:
    """The accounts service on ``store``, its signing keys loaded, as
    ``app.state.accounts``: until it is set, a call with a credential answers 503."""
    accounts = Accounts(store, settings)
    await accounts.start()
    app.state.accounts = accounts


async def _open(
    app: FastAPI, api: ApiState, store: Store, settings: Settings
) -> asyncio.Task[None] | None:
    """Open and migrate the app's own store and start the accounts service now, or start
    retrying in the background (returned) if the database does not answer yet. The app
    serves with the store (``/ready`` answers 200) only once both are done, so that a
    credential is never refused for want of the service."""

    async def prepare() -> None:
        await _start_accounts(app, store, settings)

    error = await open_store(store, prepare)
    if error is None:
        api.attach(store)
        return None
    log.error("database unreachable at start-up; serving 503 until it answers", error=error)
    return asyncio.create_task(api.connect(store, prepare), name="conveyor-api-connect")


def _install_cross_cutting(app: FastAPI, settings: Settings, api: ApiState) -> None:
    """The middleware (see :func:`conveyor.api.middleware.install_middleware`) and
    ``GET /metrics``."""

    async def queue_stats() -> list[QueueStats]:
        return await api.client.queues()

    metrics = Metrics(stats_source=queue_stats)
    install_middleware(app, settings, metrics=metrics)
    app.include_router(metrics.router())
