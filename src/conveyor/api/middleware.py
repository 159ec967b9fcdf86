"""The API's cross-cutting HTTP behaviour, as pure ASGI middlewares.

Outermost first, as :func:`install_middleware` stacks them:

1. :class:`~conveyor.api.metrics.MetricsMiddleware` (when ``metrics`` is given): request
   latency by route template and status, 413/429/500 included.
2. :class:`RequestIdMiddleware`: takes ``X-Request-ID`` when it is 1-128 characters of
   ``[A-Za-z0-9._-]``, else makes one (``uuid4().hex``); echoes it in the response's
   ``X-Request-ID``; binds ``request_id`` into structlog's contextvars for the request
   (reset afterwards), so every log line written while handling it carries it; routes read
   it with :func:`request_id` (``request.state.request_id``) and store it with the request
   they create, so the job's logs carry it too.
3. :class:`AccessLogMiddleware`: one ``request`` line per request on the ``access``
   logger: ``method``, ``path``, ``route`` (template, None when unmatched), ``status``,
   ``duration_ms``, ``client``, ``request_id``. Level info (error for 5xx); the probe and
   scrape paths (``/health``, ``/ready``, ``/metrics``) log at debug.
4. :class:`SecurityHeadersMiddleware`: on every response, unless the route set its own:
   ``Content-Security-Policy`` (:data:`API_CSP`), ``X-Content-Type-Options: nosniff``,
   ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``, and
   ``Strict-Transport-Security`` only when the request came over HTTPS (ASGI scheme
   ``https``, or ``X-Forwarded-Proto: https`` from a proxy). The docs pages get
   :func:`docs_csp` instead (see below).
5. Starlette's ``CORSMiddleware`` with ``settings.cors_origins`` (not installed when the
   list is empty: browsers then allow same-origin calls only). No credentials (the API
   takes bearer tokens, not cookies); the ``RateLimit-*``, ``Retry-After``,
   ``X-Request-ID`` and ``Location`` headers are exposed to scripts.
6. :class:`~conveyor.api.ratelimit.RateLimitMiddleware`: the per-address limit.
7. :class:`BodySizeLimitMiddleware`: 413 when ``Content-Length`` exceeds
   ``settings.max_body_bytes``; a body without ``Content-Length`` (chunked) is read here
   first, counting, and answered 413 as soon as it passes the limit. In both cases the
   app is never called, so nothing reaches a route.
8. :class:`UnhandledErrorMiddleware`: an exception no handler took is answered by the
   app's own ``Exception`` handler (``app.exception_handlers``, as registered by
   ``errors.install_error_handlers``), else by a 500 ``{"detail": "Internal server
   error", "request_id"}`` logged once with its traceback (``component=http``). Either
   way the answer passes through layers 1-7 (request id, security and CORS headers,
   access log, metrics), which Starlette's outermost ``ServerErrorMiddleware`` would
   bypass; the exception is not re-raised to the server once answered.

Error bodies written here (400, 413, 429, 500) have the routes' shape (:func:`error_body`,
as ``errors.error_response``): ``{"detail", "request_id"}``, plus the seed's ``success``
and ``message`` under ``/api/``.

Content-Security-Policy
-----------------------
API responses (JSON): ``default-src 'none'; frame-ancestors 'none'; base-uri 'none';
form-action 'none'`` — a JSON document needs nothing, and may not be framed.

FastAPI's ``/docs`` (Swagger UI) and ``/redoc`` load their JS/CSS from
``https://cdn.jsdelivr.net`` and start with one inline ``<script>``. Their pages (and the
OAuth2 redirect page) get :func:`docs_csp`: scripts from ``'self'`` and that CDN plus the
SHA-256 hash of each inline script of *that* response (computed here, so no
``'unsafe-inline'`` for scripts), styles from ``'self'``, the CDN and Google Fonts with
``'unsafe-inline'`` (Swagger UI and Redoc set inline styles), images ``'self' data:`` and
the favicon's host, fonts from Google Fonts, ``connect-src 'self'`` (the schema and "Try
it out"), ``worker-src blob:`` (Redoc), and still ``frame-ancestors 'none'``. When the
dashboard issue vendors the Swagger UI assets, point ``swagger_js_url``/``swagger_css_url``
at them and drop the CDN from :data:`DOCS_CDN_SOURCES`.

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

import base64
import hashlib
import inspect
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.metrics import Metrics, MetricsMiddleware, route_template
from conveyor.api.ratelimit import (
    DEFAULT_EXEMPT_PATHS,
    RateLimiter,
    RateLimitMiddleware,
    client_address,
)
from conveyor.config import Settings
from conveyor.logs import get_logger

__all__ = [
    "API_CSP",
    "DOCS_CDN_SOURCES",
    "REQUEST_ID_HEADER",
    "AccessLogMiddleware",
    "BodySizeLimitMiddleware",
    "RequestIdMiddleware",
    "SecurityHeadersMiddleware",
    "UnhandledErrorMiddleware",
    "docs_csp",
    "error_body",
    "install_middleware",
    "new_request_id",
    "request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The Content-Security-Policy of every response but the docs pages."""

DOCS_CDN_SOURCES = ("https://cdn.jsdelivr.net",)
"""Where FastAPI's docs pages load Swagger UI and Redoc from by default."""

HSTS = "max-age=31536000"
"""Strict-Transport-Security over HTTPS: one year, this host only (no includeSubDomains:
the API does not decide for its sibling hosts)."""

CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID")
CORS_EXPOSE_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Location",
)
CORS_ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

QUIET_PATHS: frozenset[str] = DEFAULT_EXEMPT_PATHS
"""Paths whose access lines are logged at debug: probes and scrapes."""

_INLINE_SCRIPT_RE = re.compile(
    rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE
)

_access_log = get_logger("access")
_http_log = get_logger("http")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID_RE.fullmatch(value) is not None


def request_id(request: Request) -> str:
    """The id of the request being handled: the accepted ``X-Request-ID`` or a new one.

    Routes store it with what they create (``NewRequest.http_request_id``). Without
    :class:`RequestIdMiddleware` (a bare test app), a new id is made and kept for the
    request.
    """
    rid = getattr(request.state, "request_id", None)
    if isinstance(rid, str):
        return rid
    rid = new_request_id()
    request.state.request_id = rid
    return rid


def _scope_request_id(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    rid = state.get("request_id")
    return rid if isinstance(rid, str) else None


def _route_path(scope: Scope) -> str:
    """The path without the app's ``root_path`` (what routes match against)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


SEED_PREFIX = "/api/"
"""The QuDemo seed's routes, whose errors keep the seed's shape (as ``errors.py``)."""


def error_body(scope: Scope, detail: str) -> dict[str, Any]:
    """An error body written by a middleware, in the shape ``errors.error_response``
    gives the routes' errors: ``{"detail", "request_id"}``, and under ``/api/`` the seed's
    ``{"success": false, "message", ...}`` too."""
    body: dict[str, Any] = {"detail": detail, "request_id": _scope_request_id(scope)}
    if _route_path(scope).startswith(SEED_PREFIX):
        body = {"success": False, "message": detail, **body}
    return body


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> None:
    body = orjson.dumps(payload)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Accept or make the request id, echo it, and bind it into the log context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER)
        rid = offered if offered is not None and _valid_request_id(offered) else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


class AccessLogMiddleware:
    """One structured line per HTTP request on the ``access`` logger."""

    def __init__(self, app: ASGIApp, *, quiet_paths: Iterable[str] = QUIET_PATHS) -> None:
        self.app = app
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            fields = {
                "method": scope["method"],
                "path": scope["path"],
                "route": route_template(scope),
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "client": client_address(scope),
                "request_id": _scope_request_id(scope),
            }
            if status >= 500:
                _access_log.error("request", **fields)
            elif scope["path"] in self.quiet_paths:
                _access_log.debug("request", **fields)
            else:
                _access_log.info("request", **fields)


def _is_https(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    forwarded = Headers(scope=scope).get("x-forwarded-proto")
    return forwarded is not None and forwarded.split(",")[0].strip().lower() == "https"


def docs_csp(inline_script_hashes: Iterable[str] = ()) -> str:
    """The Content-Security-Policy of the docs pages (see the module docstring)."""
    cdn = " ".join(DOCS_CDN_SOURCES)
    hashes = "".join(f" 'sha256-{h}'" for h in inline_script_hashes)
    return (
        "default-src 'none'; "
        f"script-src 'self' {cdn}{hashes}; "
        f"style-src 'self' {cdn} https://fonts.googleapis.com 'unsafe-inline'; "
        "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
        "font-src 'self' https://fonts.gstatic.com; "
        "connect-src 'self'; "
        "worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _inline_script_hashes(html: bytes) -> list[str]:
    return [
        base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
        for m in _INLINE_SCRIPT_RE.finditer(html)
    ]


class SecurityHeadersMiddleware:
    """Security headers on every HTTP response (a route's own values are kept)."""

    def __init__(self, app: ASGIApp, *, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)

    def _add(self, message: Message, csp: str, https: bool) -> None:
        headers = MutableHeaders(scope=message)
        headers.setdefault("Content-Security-Policy", csp)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        if https:
            headers.setdefault("Strict-Transport-Security", HSTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = _is_https(scope)
        if _route_path(scope) in self.docs_paths:
            await self._docs_page(scope, receive, send, https)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._add(message, API_CSP, https)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send, https: bool) -> None:
        """Hold the (small) docs page to hash its inline scripts into its CSP."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffering_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            self._add(start, docs_csp(_inline_script_hashes(body)), https)
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffering_send)


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_body_bytes``, before the app sees the request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return f"Request body too large: the limit is {self.max_body_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            await self._declared(scope, receive, send, declared)
        else:
            await self._undeclared(scope, receive, send)

    async def _declared(self, scope: Scope, receive: Receive, send: Send, declared: str) -> None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            await _send_json(send, 400, error_body(scope, "Invalid Content-Length header."))
            return
        if length > self.max_body_bytes:
            await _send_json(send, 413, error_body(scope, self._too_large()))
            return
        received = 0

        async def counting_receive() -> Message:
            # The server holds the client to its Content-Length; this only guards
            # against one that does not.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counting_receive, send)

    async def _undeclared(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No Content-Length (chunked, or no body): read it all first, counting."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            body: bytes = message.get("body", b"")
            received += len(body)
            if received > self.max_body_bytes:
                await _send_json(send, 413, error_body(scope, self._too_large()))
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class UnhandledErrorMiddleware:
    """Innermost: answer an exception no handler took, through the other middlewares.

    The answer comes from the app's own handler for ``Exception`` (or 500) when one is
    registered in ``exception_handlers`` (read at each error, so handlers registered
    after :func:`install_middleware` count); it then logs as it sees fit. Without one:
    500 ``{"detail": "Internal server error", "request_id"}``, logged here once with the
    traceback. The exception is not re-raised once answered: the log line is its record.
    """

    def __init__(
        self, app: ASGIApp, *, exception_handlers: Mapping[Any, Any] | None = None
    ) -> None:
        self.app = app
        self.exception_handlers = exception_handlers if exception_handlers is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                _http_log.error("error after the response started", exc_info=exc)
                raise  # too late for a clean answer; the server closes the connection
            handler = self.exception_handlers.get(Exception) or self.exception_handlers.get(500)
            if handler is None:
                _http_log.error(
                    "unhandled error",
                    method=scope["method"],
                    path=scope["path"],
                    route=route_template(scope),
                    exc_info=exc,
                )
                await _send_json(send, 500, error_body(scope, "Internal server error"))
                return
            request = Request(scope, receive)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, send)


def _docs_paths(app: FastAPI) -> set[str]:
    return {
        p
        for p in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
        if p is not None
    }


def install_middleware(
    app: FastAPI,
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    rate_limiter: RateLimiter | None = None,
) -> None:
    """Add the API's middlewares to ``app`` in the order the module docstring lists.

    ``rate_limiter``: None builds one from ``settings`` that the app owns (closed at
    lifespan shutdown); a given one is the caller's to close. Either way it becomes
    ``app.state.rate_limiter``, which :func:`~conveyor.api.ratelimit.limit_caller` uses.
    ``metrics``: when given, its :class:`MetricsMiddleware` goes outermost.
    """
    limiter = rate_limiter if rate_limiter is not None else RateLimiter.from_settings(settings)
    app.state.rate_limiter = limiter
    # Each add_middleware call wraps everything added before it: innermost first.
    app.add_middleware(UnhandledErrorMiddleware, exception_handlers=app.exception_handlers)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        owns_limiter=rate_limiter is None,
        error_body=error_body,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_ALLOW_METHODS,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=_docs_paths(app))
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
