"""One HTTP request and its response on their way through
:class:`~conveyor.api.middleware.ConveyorMiddleware`: what its stages share (the request
id, the response's status, the clock) and the ``send`` wrappers that complete and time
the response."""

from __future__ import annotations

import time

from starlette.types import Message, Scope, Send

from conveyor.api.metrics import Metrics, route_template
from conveyor.api.response_headers import (
    API_CSP,
    complete_headers,
    docs_csp,
    inline_script_hashes,
)

HTTP_CALL_KEY = "conveyor.http_call"
"""Key in the ASGI scope of the request's :class:`HttpCall`."""

CLIENT_CLOSED_REQUEST = 499
"""The status logged (and counted) for a request whose client left before sending all of
it (nginx's code): nobody is left to answer, and it is not the server's error."""


class HttpCall:
    """One HTTP request on its way through the middleware, and the ``send`` that
    completes its response's headers and times it."""

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
            complete_headers(message, API_CSP, self.scope, self.request_id, self.https)
            await self.send_downstream(message)
            return
        await self.send_downstream(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.observe()

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


def client_left(scope: Scope) -> None:
    """Note that the client of ``scope`` left before its request was complete."""
    call: HttpCall = scope[HTTP_CALL_KEY]
    if call.status is None:
        call.status = CLIENT_CLOSED_REQUEST


def route_path(scope: Scope) -> str:
    """The path without the app's ``root_path`` (what routes match against)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def docs_page_send(call: HttpCall) -> Send:
    """``call.send`` for a docs page: the (small) page is held to hash its inline scripts
    into its CSP."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def buffering_send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await call.send_downstream(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        call.status = start["status"]
        csp = docs_csp(inline_script_hashes(body))
        complete_headers(start, csp, call.scope, call.request_id, call.https)
        await call.send_downstream(start)
        await call.send_downstream({"type": "http.response.body", "body": body})
        call.observe()

    return buffering_send


def without_body(send: Send) -> Send:
    """``send`` for a HEAD request: the response's headers, and an empty body."""

    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return head_send
