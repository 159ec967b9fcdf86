"""The API's cross-cutting HTTP behaviour, in one pure ASGI middleware.

:class:`ConveyorMiddleware` does, in this order for a request (outermost first):

1. **Metrics** (when ``metrics`` is given): request latency by route template and status,
   413/429/500 included (:class:`~conveyor.api.metrics.Metrics`).
2. **Request id**: takes ``X-Request-ID`` when it is 1-128 characters of
   ``[A-Za-z0-9._-]``, else makes one (``uuid4().hex``); echoes it in the response's
   ``X-Request-ID``; binds ``request_id`` into structlog's contextvars for the request
   (reset afterwards), so every log line written while handling it carries it; routes read
   it with :func:`request_id` (``request.state.request_id``) and store it with the request
   they create, so the job's logs carry it too.
3. **Access log**: one ``request`` line per request on the ``access`` logger: ``method``,
   ``path``, ``route`` (template, None when unmatched), ``status``, ``duration_ms``,
   ``client``, ``request_id``. Level info (error for 5xx); the probe and scrape paths
   (``/health``, ``/ready``, ``/metrics``) log at debug.
4. **Security headers**: on every response, unless the route set its own:
   ``Content-Security-Policy`` (:data:`API_CSP`), ``X-Content-Type-Options: nosniff``,
   ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``, and
   ``Strict-Transport-Security`` only when the request came over HTTPS (ASGI scheme
   ``https``, or ``X-Forwarded-Proto: https`` from a proxy). The docs pages get
   :func:`docs_csp` instead (see :mod:`conveyor.api.response_headers`).
5. **CORS**: Starlette's ``CORSMiddleware`` with ``settings.cors_origins``, wrapped around
   the stages below (not installed when the list is empty: browsers then allow same-origin
   calls only). No credentials (the API takes bearer tokens, not cookies); the
   ``RateLimit-*``, ``Retry-After``, ``X-Request-ID`` and ``Location`` headers are exposed
   to scripts. Preflights are answered here, so they are never rate-limited, and every
   answer below (429, 413, 500 included) carries the CORS headers.
6. **Rate limit** per client address (:mod:`conveyor.api.ratelimit`), and the
   ``RateLimit-*`` headers of the limits checked (the per-caller one included) on the
   response.
7. **NUL** in the path or a query parameter (``%00``): 422 naming the parameter, before
   any route (PostgreSQL cannot compare text holding one; SQLite refuses it the same).
   **Body size**: 413 when ``Content-Length`` exceeds ``settings.max_body_bytes``; a body
   without ``Content-Length`` (chunked) is read here first, counting, and answered 413 as
   soon as it passes the limit. In both cases the app is never called, so nothing reaches
   a route.
8. **Unhandled errors**: an exception no handler took is answered by the app's own
   ``Exception`` handler (``app.exception_handlers``, as registered by
   ``errors.install_error_handlers``), else by a 500 ``{"detail": "Internal server
   error", "request_id"}`` logged once with its traceback (``component=http``). Either
   way the answer passes through stages 1-7 (request id, security and CORS headers,
   access log, metrics), which Starlette's outermost ``ServerErrorMiddleware`` would
   bypass; the exception is not re-raised to the server once answered. A client that
   left before its body was complete (Starlette's ``ClientDisconnect``; the server's read
   timeout closes such connections, see :mod:`conveyor.cli.http_limits`) is nobody's
   error: nothing is answered, and the access log and metrics say 499.

One layer, not eight: every ASGI layer costs a call and a ``send`` wrapper per message, in
a CPU budget per request that is small (docs/benchmarks.md). The request's headers are
read once; the response's headers are completed in one pass. The stages live in their own
modules: :mod:`~conveyor.api.request_id` (2), :mod:`~conveyor.api.http_call` (the request
in flight: 1, 3 and the ``send`` that completes 4), :mod:`~conveyor.api.response_headers`
(4 and the CORS policy of 5), :mod:`~conveyor.api.guards` (6-8).

Error bodies written here (400, 413, 429, 500) have the routes' shape (:func:`error_body`,
as ``errors.error_response``): ``{"detail", "request_id"}``, plus the seed's ``success``
and ``message`` under ``/api/``.

A ``HEAD`` request is answered as its ``GET`` would be, headers included, without the
body (the probes: ``HEAD /health``).

Wiring (``app.py``), once, after the routes' app is built and before it serves::

    from conveyor.api.metrics import Metrics
    from conveyor.api.middleware import install_middleware, request_id

    metrics = Metrics(stats_source=client.queues)  # see conveyor.api.metrics
    install_middleware(app, settings, metrics=metrics)
    app.include_router(metrics.router())

    # in a route:
    NewRequest(..., http_request_id=request_id(request))

``install_middleware`` also builds the rate limiter from the settings and stores it as
``app.state.rate_limiter`` (see :mod:`conveyor.api.ratelimit` for ``limit_caller``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.guards import Guards, error_body
from conveyor.api.http_call import (
    HTTP_CALL_KEY,
    HttpCall,
    docs_page_send,
    route_path,
    without_body,
)
from conveyor.api.metrics import Metrics, route_template
from conveyor.api.ratelimit import (
    DEFAULT_EXEMPT_PATHS,
    DEFAULT_EXEMPT_PREFIXES,
    RateLimiter,
    client_address,
)
from conveyor.api.request_id import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    accepted_request_id,
    new_request_id,
    request_id,
)
from conveyor.api.response_headers import (
    API_CSP,
    CORS_ALLOW_HEADERS,
    CORS_ALLOW_METHODS,
    CORS_EXPOSE_HEADERS,
    docs_csp,
)
from conveyor.config import Settings
from conveyor.logs import get_logger

__all__ = [
    "API_CSP",
    "REQUEST_ID_HEADER",
    "ConveyorMiddleware",
    "docs_csp",
    "error_body",
    "install_middleware",
    "new_request_id",
    "request_id",
]

QUIET_PATHS: frozenset[str] = DEFAULT_EXEMPT_PATHS
"""Paths whose access lines are logged at debug: probes and scrapes."""

_access_log = get_logger("access")


class ConveyorMiddleware:
    """The API's cross-cutting HTTP behaviour, as the module docstring lists it.

    ``limiter``: the per-address limit (None: no rate limiting); closed at lifespan
    shutdown when ``owns_limiter``. ``exception_handlers``: the app's, read at each error
    (so handlers registered after the middleware count).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limiter: RateLimiter | None = None,
        owns_limiter: bool = False,
        metrics: Metrics | None = None,
        cors_origins: Sequence[str] = (),
        docs_paths: Iterable[str] = (),
        exception_handlers: Mapping[Any, Any] | None = None,
        quiet_paths: Iterable[str] = QUIET_PATHS,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        exempt_prefixes: Iterable[str] = DEFAULT_EXEMPT_PREFIXES,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.owns_limiter = owns_limiter
        self.metrics = metrics
        self.docs_paths = frozenset(docs_paths)
        self.quiet_paths = frozenset(quiet_paths)
        self._guarded: ASGIApp = Guards(
            app,
            max_body_bytes=max_body_bytes,
            limiter=limiter,
            exception_handlers=exception_handlers if exception_handlers is not None else {},
            exempt_paths=exempt_paths,
            exempt_prefixes=exempt_prefixes,
        )
        if cors_origins:
            self._guarded = CORSMiddleware(
                self._guarded,
                allow_origins=cors_origins,
                allow_methods=CORS_ALLOW_METHODS,
                allow_headers=CORS_ALLOW_HEADERS,
                expose_headers=CORS_EXPOSE_HEADERS,
                allow_credentials=False,
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan" and self.owns_limiter and self.limiter is not None:
            await self.app(scope, receive, self._closing_send(send))
        else:
            await self.app(scope, receive, send)

    # -- stages 1-4: metrics, request id, access log, security headers -----------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered: bytes | None = None
        forwarded: bytes | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_KEY:
                if offered is None:
                    offered = value
            elif name == b"x-forwarded-proto" and forwarded is None:
                forwarded = value
        rid = accepted_request_id(offered)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid
        https = scope.get("scheme") == "https" or (
            forwarded is not None and forwarded.split(b",")[0].strip().lower() == b"https"
        )
        call = HttpCall(scope, send, rid, https, self.metrics)
        scope[HTTP_CALL_KEY] = call
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            send_on = docs_page_send(call) if route_path(scope) in self.docs_paths else call.send
            if scope["method"] == "HEAD":
                send_on = without_body(send_on)
            await self._guarded(scope, receive, send_on)
        finally:
            call.observe()
            self._access_log(scope, call)
            structlog.contextvars.reset_contextvars(**tokens)

    def _access_log(self, scope: Scope, call: HttpCall) -> None:
        status = call.status if call.status is not None else 500
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "route": route_template(scope),
            "status": status,
            "duration_ms": round((time.perf_counter() - call.start) * 1000, 3),
            "client": client_address(scope),
            "request_id": call.request_id,
        }
        if status >= 500:
            _access_log.error("request", **fields)
        elif scope["path"] in self.quiet_paths:
            _access_log.debug("request", **fields)
        else:
            _access_log.info("request", **fields)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = next((v for k, v in scope["headers"] if k == REQUEST_ID_KEY), None)
        rid = accepted_request_id(offered)
        scope.setdefault("state", {})["request_id"] = rid
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    def _closing_send(self, send: Send) -> Send:
        async def closing_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                assert self.limiter is not None
                await self.limiter.aclose()
            await send(message)

        return closing_send


def _docs_paths(app: FastAPI) -> set[str]:
    """FastAPI's own docs pages, if on, and those :func:`conveyor.api.docs.install_docs`
    added."""
    own = {app.docs_url, app.redoc_url}
    if app.docs_url is not None:
        own.add(app.swagger_ui_oauth2_redirect_url)
    return {p for p in own if p is not None} | set(getattr(app.state, "docs_paths", ()))


def install_middleware(
    app: FastAPI,
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    rate_limiter: RateLimiter | None = None,
) -> None:
    """Add :class:`ConveyorMiddleware` to ``app``, configured from ``settings``.

    ``rate_limiter``: None builds one from ``settings`` that the app owns (closed at
    lifespan shutdown); a given one is the caller's to close. Either way it becomes
    ``app.state.rate_limiter``, which :func:`~conveyor.api.ratelimit.limit_caller` uses.
    ``metrics``: when given, every request is timed into it. ``settings.metrics_token``
    becomes ``app.state.metrics_token``, which the ``/metrics`` route checks.
    """
    limiter = rate_limiter if rate_limiter is not None else RateLimiter.from_settings(settings)
    app.state.rate_limiter = limiter
    app.state.metrics_token = settings.metrics_token
    app.add_middleware(
        ConveyorMiddleware,
        max_body_bytes=settings.max_body_bytes,
        limiter=limiter,
        owns_limiter=rate_limiter is None,
        metrics=metrics,
        cors_origins=settings.cors_origins,
        docs_paths=_docs_paths(app),
        exception_handlers=app.exception_handlers,
    )
