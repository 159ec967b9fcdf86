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
   :func:`docs_csp` instead (see below).
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

One layer, not eight: every ASGI layer costs a call and a ``send`` wrapper per message, and
at 1,000 requests/s the API has about half a millisecond of CPU per request in all. The
request's headers are read once; the response's headers are completed in one pass.

Error bodies written here (400, 413, 429, 500) have the routes' shape (:func:`error_body`,
as ``errors.error_response``): ``{"detail", "request_id"}``, plus the seed's ``success``
and ``message`` under ``/api/``.

Content-Security-Policy
-----------------------
API responses (JSON): ``default-src 'none'; frame-ancestors 'none'; base-uri 'none';
form-action 'none'`` — a JSON document needs nothing, and may not be framed.

The docs pages (``/docs``, Swagger UI; ``/redoc``; the OAuth2 redirect page) load their
JS/CSS from the app itself (:mod:`conveyor.api.docs`) and start with an inline
``<script>``. They get :func:`docs_csp`: scripts from ``'self'`` plus the SHA-256 hash of
each inline script of *that* response (computed here, so no ``'unsafe-inline'`` for
scripts), styles from ``'self'`` with ``'unsafe-inline'`` (Swagger UI and Redoc set inline
styles), images ``'self' data:``, fonts ``'self'``, ``connect-src 'self'`` (the schema and
"Try it out"), ``worker-src blob:`` (Redoc), and still ``frame-ancestors 'none'``: no
other host, so a page that tried to reach one would be refused by the browser.

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

import base64
import hashlib
import inspect
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.metrics import Metrics, route_template
from conveyor.api.ratelimit import (
    DEFAULT_EXEMPT_PATHS,
    DEFAULT_EXEMPT_PREFIXES,
    RateLimiter,
    client_address,
    ratelimit_headers,
    record_limit,
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

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The Content-Security-Policy of every response but the docs pages."""

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

_REQUEST_ID_KEY = b"x-request-id"
_CSP_KEY = b"content-security-policy"
_HSTS_HEADER = (b"strict-transport-security", HSTS.encode())
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_EXCHANGE_KEY = "conveyor.exchange"
"""Key in the ASGI scope of the request's :class:`_Exchange`."""

_access_log = get_logger("access")
_http_log = get_logger("http")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    """The id of the request being handled: the accepted ``X-Request-ID`` or a new one.

    Routes store it with what they create (``NewRequest.http_request_id``). Without
    :class:`ConveyorMiddleware` (a bare test app), a new id is made and kept for the
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


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def docs_csp(inline_script_hashes: Iterable[str] = ()) -> str:
    """The Content-Security-Policy of the docs pages (see the module docstring)."""
    hashes = "".join(f" 'sha256-{h}'" for h in inline_script_hashes)
    return (
        "default-src 'none'; "
        f"script-src 'self'{hashes}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "font-src 'self'; "
        "connect-src 'self'; "
        "worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _inline_script_hashes(html: bytes) -> list[str]:
    return [
        base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
        for m in _INLINE_SCRIPT_RE.finditer(html)
    ]


class _Exchange:
    """One HTTP request on its way through :class:`ConveyorMiddleware`: what the stages
    share, and the ``send`` that completes the response's headers and times it."""

    __slots__ = ("https", "metrics", "request_id", "scope", "send_downstream", "start", "status")

    def __init__(
        self, scope: Scope, send: Send, request_id: str, https: bool, metrics: Metrics | None
    ) -> None:
        self.scope = scope
        self.send_downstream = send
        self.request_id = request_id
        self.https = https
        self.metrics = metrics
        self.start = time.perf_counter()
        self.status: int | None = None
        """The response's status once it started."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.complete_headers(message, API_CSP)
            await self.send_downstream(message)
            return
        await self.send_downstream(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.observe()

    def complete_headers(self, message: Message, csp: str) -> None:
        """Add the request id, the security headers the app did not set, and the rate
        limits'; in one pass over the app's headers."""
        headers = list(message.get("headers", ()))
        present = {name.lower() for name, _ in headers}
        extra = ratelimit_headers(self.scope, message["status"])
        replaced = {_REQUEST_ID_KEY, *(name for name, _ in extra)} & present
        if replaced:
            headers = [h for h in headers if h[0].lower() not in replaced]
        headers.append((_REQUEST_ID_KEY, self.request_id.encode()))
        headers.extend(extra)
        if _CSP_KEY not in present:
            headers.append((_CSP_KEY, csp.encode()))
        headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
        if self.https and _HSTS_HEADER[0] not in present:
            headers.append(_HSTS_HEADER)
        message["headers"] = headers

    def observe(self) -> None:
        """Count the request in the metrics, once."""
        if self.metrics is not None:
            status = self.status if self.status is not None else 500
            self.metrics.observe_http(
                self.scope["method"],
                route_template(self.scope),
                status,
                time.perf_counter() - self.start,
            )
            self.metrics = None


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
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter
        self.owns_limiter = owns_limiter
        self.metrics = metrics
        self.docs_paths = frozenset(docs_paths)
        self.exception_handlers = exception_handlers if exception_handlers is not None else {}
        self.quiet_paths = frozenset(quiet_paths)
        self.exempt_paths = frozenset(exempt_paths)
        self.exempt_prefixes = tuple(exempt_prefixes)
        self._too_large = f"Request body too large: the limit is {max_body_bytes} bytes."
        self._guarded: ASGIApp = self._limited
        if cors_origins:
            self._guarded = CORSMiddleware(
                self._limited,
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
            if name == _REQUEST_ID_KEY:
                if offered is None:
                    offered = value
            elif name == b"x-forwarded-proto" and forwarded is None:
                forwarded = value
        rid = _accepted_request_id(offered)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid
        https = scope.get("scheme") == "https" or (
            forwarded is not None and forwarded.split(b",")[0].strip().lower() == b"https"
        )
        exchange = _Exchange(scope, send, rid, https, self.metrics)
        scope[_EXCHANGE_KEY] = exchange
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            send_on = (
                self._docs_page_send(exchange)
                if _route_path(scope) in self.docs_paths
                else exchange.send
            )
            if scope["method"] == "HEAD":
                send_on = _without_body(send_on)
            await self._guarded(scope, receive, send_on)
        finally:
            exchange.observe()
            self._access_log(scope, exchange)
            structlog.contextvars.reset_contextvars(**tokens)

    def _access_log(self, scope: Scope, exchange: _Exchange) -> None:
        status = exchange.status if exchange.status is not None else 500
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "route": route_template(scope),
            "status": status,
            "duration_ms": round((time.perf_counter() - exchange.start) * 1000, 3),
            "client": client_address(scope),
            "request_id": exchange.request_id,
        }
        if status >= 500:
            _access_log.error("request", **fields)
        elif scope["path"] in self.quiet_paths:
            _access_log.debug("request", **fields)
        else:
            _access_log.info("request", **fields)

    def _docs_page_send(self, exchange: _Exchange) -> Send:
        """Hold the (small) docs page to hash its inline scripts into its CSP."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffering_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await exchange.send_downstream(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            exchange.status = start["status"]
            exchange.complete_headers(start, docs_csp(_inline_script_hashes(body)))
            await exchange.send_downstream(start)
            await exchange.send_downstream({"type": "http.response.body", "body": body})
            exchange.observe()

        return buffering_send

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = next((v for k, v in scope["headers"] if k == _REQUEST_ID_KEY), None)
        rid = _accepted_request_id(offered)
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

    # -- stages 6-8: rate limit, body size, unhandled errors ------------------------------
    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if (
            self.limiter is not None
            and path not in self.exempt_paths
            and not path.startswith(self.exempt_prefixes)
        ):
            status = await self.limiter.hit_ip(client_address(scope))
            if status is not None:
                record_limit(scope, status)
                if not status.allowed:
                    await _send_json(send, 429, error_body(scope, status.message()))
                    return
        query: bytes = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query or "\x00" in scope["path"]:
            await _send_json(send, 422, _nul_refused(scope))
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is None:
            body = await self._read_undeclared(scope, receive, send)
            if body is None:
                return
            await self._run(scope, _replay(body, receive), send)
            return
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            await _send_json(send, 400, error_body(scope, "Invalid Content-Length header."))
        elif length > self.max_body_bytes:
            await _send_json(send, 413, error_body(scope, self._too_large))
        else:
            await self._run(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counting_receive() -> Message:
            # The server holds the client to its Content-Length; this only guards against
            # one that does not.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large)
            return message

        return counting_receive

    async def _read_undeclared(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """No Content-Length (chunked, or no body): read it all first, counting. None when
        answered (413) or the client left."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                _client_left(scope)
                return None
            body: bytes = message.get("body", b"")
            received += len(body)
            if received > self.max_body_bytes:
                await _send_json(send, 413, error_body(scope, self._too_large))
                return None
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with an exception no handler took answered here (stage 8)."""
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            _client_left(scope)
        except Exception as exc:
            exchange: _Exchange = scope[_EXCHANGE_KEY]
            if exchange.status is not None:
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


CLIENT_CLOSED_REQUEST = 499
"""The status logged (and counted) for a request whose client left before sending all of
it (nginx's code): nobody is left to answer, and it is not the server's error."""


def _client_left(scope: Scope) -> None:
    exchange: _Exchange = scope[_EXCHANGE_KEY]
    if exchange.status is None:
        exchange.status = CLIENT_CLOSED_REQUEST


def _nul_refused(scope: Scope) -> dict[str, Any]:
    """The 422 for a NUL in the path or a query parameter, naming where: PostgreSQL
    cannot compare text holding one, so no route may pass it on (neither store takes it,
    for the same answers on both)."""
    loc: list[str] = ["path"]
    if "\x00" not in scope["path"]:
        text = scope.get("query_string", b"").decode("latin-1")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
        name = next((k for k, v in pairs if "\x00" in k or "\x00" in v), "")
        loc = ["query", name.replace("\x00", "\\x00")[:100]]
    msg = "NUL (\\x00) is not allowed in the path or a query parameter"
    body = error_body(scope, msg)
    body["detail"] = [{"loc": loc, "msg": msg, "type": "value_error"}]
    return body


def _accepted_request_id(offered: bytes | None) -> str:
    if offered is not None:
        text = offered.decode("latin-1")
        if _REQUEST_ID_RE.fullmatch(text) is not None:
            return text
    return new_request_id()


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _without_body(send: Send) -> Send:
    """``send`` for a HEAD request: the response's headers, and an empty body."""

    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return head_send


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
    ``metrics``: when given, every request is timed into it.
    """
    limiter = rate_limiter if rate_limiter is not None else RateLimiter.from_settings(settings)
    app.state.rate_limiter = limiter
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
