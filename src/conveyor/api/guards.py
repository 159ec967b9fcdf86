"""What a request must pass before the app runs, and the answer to an error the app did
not handle: stages 6-8 of :class:`~conveyor.api.middleware.ConveyorMiddleware`, inside its
CORS stage (so every answer here carries the CORS headers).

- **Rate limit** per client address (:mod:`conveyor.api.ratelimit`) of a request that
  carries no ``Authorization``: 429 (see :mod:`conveyor.api.access` for the others).
- **NUL** in the path or a query parameter (``%00``): 422 naming the parameter
  (PostgreSQL cannot compare text holding one; SQLite refuses it the same).
- **Body size**: 413 when ``Content-Length`` exceeds the limit; a body without one
  (chunked) is read here first, counting, and answered 413 as soon as it passes it. In
  both cases the app is never called.
- **Unhandled errors**: answered by the app's ``Exception`` handler, else by a 500 logged
  once with its traceback; a client that left before its body was complete is a 499,
  answered with nothing.

Error bodies written here have the routes' shape (:func:`error_body`).
"""

from __future__ import annotations

import inspect
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.errors import SEED_PREFIX
from conveyor.api.http_call import HTTP_CALL_KEY, HttpCall, client_left, route_path
from conveyor.api.metrics import route_template
from conveyor.api.ratelimit import (
    RateLimiter,
    client_address,
    mark_address_counted,
    record_limit,
)
from conveyor.api.request_id import scope_request_id
from conveyor.logs import get_logger

_http_log = get_logger("http")


def error_body(scope: Scope, detail: str) -> dict[str, Any]:
    """An error body written by a middleware, in the shape ``errors.error_response``
    gives the routes' errors: ``{"detail", "request_id"}``, and under ``/api/`` the seed's
    ``{"success": false, "message", ...}`` too."""
    body: dict[str, Any] = {"detail": detail, "request_id": scope_request_id(scope)}
    if route_path(scope).startswith(SEED_PREFIX):
        body = {"success": False, "message": detail, **body}
    return body


async def send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    """Answer ``status`` with ``payload`` as JSON."""
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guards:
    """The ASGI app that runs ``app`` behind the guards of the module docstring.

    ``limiter``: the per-address limit (None: none), not applied to ``exempt_paths`` and
    paths under ``exempt_prefixes``. ``exception_handlers``: the app's, read at each error
    (so handlers registered after the middleware count).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limiter: RateLimiter | None,
        exception_handlers: Mapping[Any, Any],
        exempt_paths: Iterable[str],
        exempt_prefixes: Iterable[str],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter
        self.exception_handlers = exception_handlers
        self.exempt_paths = frozenset(exempt_paths)
        self.exempt_prefixes = tuple(exempt_prefixes)
        self._too_large = f"Request body too large: the limit is {max_body_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if (
            self.limiter is not None
            and path not in self.exempt_paths
            and not path.startswith(self.exempt_prefixes)
            and not any(name == b"authorization" for name, _ in scope["headers"])
        ):
            # A request with credentials is counted against its caller once they are
            # checked, or against its address if they fail (conveyor.api.access).
            mark_address_counted(scope)
            status = await self.limiter.hit_ip(client_address(scope))
            if status is not None:
                record_limit(scope, status)
                if not status.allowed:
                    await send_json(send, 429, error_body(scope, status.message()))
                    return
        query: bytes = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query or "\x00" in scope["path"]:
            await send_json(send, 422, _nul_refused(scope))
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
            await send_json(send, 400, error_body(scope, "Invalid Content-Length header."))
        elif length > self.max_body_bytes:
            await send_json(send, 413, error_body(scope, self._too_large))
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
                client_left(scope)
                return None
            body: bytes = message.get("body", b"")
            received += len(body)
            if received > self.max_body_bytes:
                await send_json(send, 413, error_body(scope, self._too_large))
                return None
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with an exception no handler took answered here."""
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            client_left(scope)
        except Exception as exc:
            call: HttpCall = scope[HTTP_CALL_KEY]
            if call.status is not None:
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
                await send_json(send, 500, error_body(scope, "Internal server error"))
                return
            request = Request(scope, receive)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, send)


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


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
