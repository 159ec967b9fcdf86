"""The HTTP server's own limits: how long a client may take to send a request, and how
large its head may be. Imported only by :mod:`conveyor.cli.serve`.

uvicorn's httptools protocol (what ``http="auto"`` picks when httptools is installed, as
it is with ``uvicorn[standard]``) has neither: a client that sends half a request and
stalls holds its connection for ever, and a 1 MB header line is buffered whole (httptools
joins a header's pieces before handing it over) and accepted. :func:`http_protocol`
returns a subclass with these limits, which ``serve`` passes to ``uvicorn.Config(http=)``:

**Read timeout** (``CONVEYOR_REQUEST_READ_TIMEOUT``, *N* seconds):

- A new connection must send its whole request head (request line and headers, up to the
  blank line) within *N* seconds of connecting, and a request on a kept-alive connection
  within *N* seconds of its first byte. A deadline for the whole head, not a gap between
  reads: slowloris trickles a byte every few seconds and would never trip a gap timer.
  A connection that sent nothing is closed without an answer (a browser's speculative
  connection gets no stray response); one that sent part of a head gets 408.
- The body must keep coming: no more than *N* seconds without a byte, and at least
  :data:`MIN_BODY_RATE` bytes a second on average after the first *N* seconds (the
  deadline is ``start + N + received / MIN_BODY_RATE``, Apache ``mod_reqtimeout``'s
  ``MinRate`` rule, and its default rate). A legitimate upload on the slowest link
  passes; a client trickling a 1 MiB body a byte at a time cannot hold the connection
  for days. Time while the server itself is not reading (the app has not taken what
  arrived, or a pipelined request waits its turn) does not count. Answered 408 when no
  response has started, else the connection is just closed.
- Once the response is complete (an early 413, say), what is left of the body must
  arrive within *N* more seconds, so a client cannot stream discarded bytes for ever.
- Between requests, uvicorn's own keep-alive timeout applies unchanged, and nothing here
  limits how long the app takes to answer.

**Head size** (``CONVEYOR_MAX_HEADER_BYTES``): a request head above the cap (counted as
it arrives, before httptools buffers it) is answered 431 and the connection closed, so at
most the cap plus one read is ever held. A head with more than :data:`MAX_HEADER_COUNT`
headers is answered 431 too (every header lookup of the app scans the list). The head of
a pipelined request that arrived in the same read as the end of the request before it is
counted from the next read on.

A connection answered 408 or 431 here is read (and what arrives dropped) for up to
:data:`LINGER_SECONDS` after the answer before it is closed, so the client gets to read it.

Cost: the parser callbacks note a phase and a time (docs/benchmarks.md); each connection
has one timer, armed lazily and re-armed when it fires, so a busy kept-alive connection
does not create and cancel timers per request.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from conveyor.logs import get_logger

__all__ = [
    "LINGER_SECONDS",
    "MAX_HEADER_COUNT",
    "MIN_BODY_RATE",
    "LimitedHttpToolsProtocol",
    "http_protocol",
]

MIN_BODY_RATE = 500
"""Bytes a second a request body must average after its first *N* seconds."""

MAX_HEADER_COUNT = 100
"""Headers a request may carry (Apache's ``LimitRequestFields``)."""

LINGER_SECONDS = 2.0
"""How long a refused connection is still read (and its bytes dropped) before it is
closed, unless the client closes first."""

log = get_logger("http")


class _Phase(enum.Enum):
    CONNECTED = "connected"  # nothing received yet on a new connection
    HEAD = "head"
    BODY = "body"


# Module names for the members: a global reads faster than a member looked up on its
# enum class, and these are read several times a request.
_CONNECTED, _HEAD, _BODY = _Phase


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring; built with
    its settings by :func:`http_protocol`.

    The parser callbacks call the base's methods by name, not through ``super()``, and
    read the clock through a bound method kept at hand: each is cheaper, several times a
    request.
    """

    read_timeout: float = 10.0
    max_header_bytes: int = 16_384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: _Phase | None = _CONNECTED  # None: no request being read
        self._since = 0.0  # start of the phase's deadline
        self._progress = 0.0  # last body byte
        self._received = 0  # body bytes so far
        self._head_bytes = 0
        self._answered_at: float | None = None  # response done while the body still came
        self._timer: asyncio.TimerHandle | None = None
        self._clock = self.loop.time

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._since = self._clock()
        self._timer = self.loop.call_later(self.read_timeout, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is not _BODY:
            if phase is None:
                # The first bytes after a complete request (uvicorn stops its keep-alive
                # timer on any byte, a lone CRLF included): the next head's clock starts.
                self._start_head()
            self._phase = _HEAD
            room = self.max_header_bytes - self._head_bytes
            if len(data) > room:
                self._feed_past_the_cap(data, room)
                return
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)

    def _feed_past_the_cap(self, data: bytes, room: int) -> None:
        """Feed what fits under the cap; the rest only if the head ended within it."""
        pending = self.cycle  # a head that completes makes a new cycle
        if room > 0:
            HttpToolsProtocol.data_received(self, data[:room])
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
        if self.cycle is pending:
            self._refuse(
                431,
                f"Request header fields too large: the limit is {self.max_header_bytes} "
                "bytes for the request line and headers.",
            )
            return
        HttpToolsProtocol.data_received(self, data[room:])

    def handle_websocket_upgrade(self) -> None:
        # The connection becomes the WebSocket protocol's; its timer must not close it.
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().handle_websocket_upgrade()

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if self._phase is None:  # pipelined: began in the read that ended the one before
            self._start_head()
            self._phase = _HEAD

    def _start_head(self) -> None:
        self._since = self._clock()
        if self._timer is None:
            self._timer = self.loop.call_later(self.read_timeout, self._check)

    def on_headers_complete(self) -> None:
        if len(self.headers) > MAX_HEADER_COUNT:
            # uvicorn takes the app to run when the head completes; this one answers 431
            # through the usual cycle, so the body is read and discarded as for any answer.
            app, self.app = self.app, _too_many_headers
            try:
                HttpToolsProtocol.on_headers_complete(self)
            finally:
                self.app = app
        else:
            HttpToolsProtocol.on_headers_complete(self)
        self._phase = _BODY
        self._since = self._progress = self._clock()
        self._received = 0
        self._answered_at = None

    def on_body(self, body: bytes) -> None:
        HttpToolsProtocol.on_body(self, body)
        self._received += len(body)
        self._progress = self._clock()

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._phase = None
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # never after an answer of ours
            super().send_400_response(msg)

    # -- the deadline -------------------------------------------------------------------
    def _check(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None:
            return  # no request being read; the next one arms the timer again
        now = self._clock()
        cycle = self.cycle
        if self.flow.read_paused or (
            phase is _HEAD and cycle is not None and not cycle.response_complete
        ):
            # The server is not reading (or still answering the request before this one):
            # the client is not late, and its clock starts again once the server reads.
            self._since = self._progress = now
            self._received = 0
            self._timer = self.loop.call_later(self.read_timeout, self._check)
            return
        deadline = self._since + self.read_timeout
        if phase is _BODY:
            deadline = min(
                self._progress + self.read_timeout, deadline + self._received / MIN_BODY_RATE
            )
            if cycle.response_complete:
                if self._answered_at is None:
                    self._answered_at = now
                deadline = min(deadline, self._answered_at + self.read_timeout)
        if now < deadline:
            self._timer = self.loop.call_later(deadline - now, self._check)
            return
        if phase is _CONNECTED:
            self.transport.close()
        elif phase is _HEAD or not cycle.response_started:
            self._refuse(
                408,
                f"Request timeout: the request was not received within the server's "
                f"read timeout ({self.read_timeout:g} s).",
            )
        else:
            log.info("request body timed out after the response", client=_client(self.client))
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` on a connection whose request was not handed to the app (or
        whose app has not started a response), and close it."""
        log.info(
            "request refused",
            status=status,
            detail=detail,
            client=_client(self.client),
            phase=self._phase.value if self._phase is not None else None,
        )
        cycle = self.cycle
        if self._phase is _BODY and cycle is not None:
            # The app's answer, if it comes, is not written, and its wait for the body ends.
            cycle.disconnected = True
            cycle.message_event.set()
        self._phase = None
        body = orjson.dumps({"detail": detail})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.set_protocol(_Lingering(self))
        else:
            self.transport.close()


class _Lingering(asyncio.Protocol):
    """A refused connection's last seconds: what the client still sends is read and
    dropped, for at most :data:`LINGER_SECONDS`. Closing at once with its bytes unread
    would make the kernel reset the connection, and the client would often lose the
    answer it was sent (a client still uploading a 1 MB header, say); Apache's
    lingering close does the same."""

    def __init__(self, owner: LimitedHttpToolsProtocol) -> None:
        self.owner = owner
        self.timer = owner.loop.call_later(LINGER_SECONDS, owner.transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.owner.connection_lost(exc)  # uvicorn's bookkeeping of the connection


async def _too_many_headers(scope: Any, receive: Any, send: Any) -> None:
    body = orjson.dumps(
        {"detail": f"Request header fields too large: at most {MAX_HEADER_COUNT} headers."}
    )
    client = _client(scope.get("client"))
    log.info("request refused", status=431, detail="too many headers", client=client)
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _client(client: tuple[str, int] | None) -> str | None:
    return client[0] if client else None


def http_protocol(read_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "ConveyorHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {"read_timeout": read_timeout, "max_header_bytes": max_header_bytes},
    )
