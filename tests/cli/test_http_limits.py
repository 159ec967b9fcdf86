"""The HTTP server's read timeout and head-size limits (:mod:`conveyor.cli.http_limits`),
against one real ``conveyor serve`` process on 127.0.0.1, spoken to over raw sockets.

The server runs with ``CONVEYOR_REQUEST_READ_TIMEOUT=1`` so the timeouts show in about a
second; every wait is a ``recv`` with a timeout, the thing under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import psutil
import pytest
from cli_runner import Served, launching

from conveyor.cli.http_limits import MAX_HEADER_COUNT
from conveyor.config import Settings

TIMEOUT = 1.0
"""The server's CONVEYOR_REQUEST_READ_TIMEOUT."""
MARGIN = 2.0
"""How late past its deadline an answer may come on a loaded test machine."""
MAX_BODY = 4096
MAX_HEAD = Settings().max_header_bytes  # the default, as shipped


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with launching(tmp_path_factory.mktemp("limits")) as start:
        served = start(
            "serve",
            CONVEYOR_IMPORTS="conveyor.workloads.demo",
            CONVEYOR_REQUEST_READ_TIMEOUT=str(TIMEOUT),
            CONVEYOR_MAX_BODY_BYTES=str(MAX_BODY),
            CONVEYOR_RATE_LIMIT_PER_IP="100000/minute",
        )
        deadline = time.monotonic() + 30
        while True:
            assert served.popen.poll() is None, served.log.read_text()
            try:
                if httpx.get(f"{served.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.1)  # the process starting up
        yield served
        assert not [e for e in served.logs() if e.get("level") in ("error", "raw")]


Connect = Callable[[], socket.socket]


@pytest.fixture
def connect(served: Served) -> Iterator[Connect]:
    """``connect()``: a new TCP connection to the server, closed when the test ends."""
    opened: list[socket.socket] = []

    def open_one() -> socket.socket:
        sock = socket.create_connection(served.address, timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def _logged(served: Served, check: Callable[[dict[str, object]], bool]) -> bool:
    """Whether the server writes a log line passing ``check`` within 5 s."""
    deadline = time.monotonic() + 5
    while not any(check(e) for e in served.logs()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # the server writes its log line on its own time
    return True


def _answer(sock: socket.socket, within: float) -> tuple[int | None, bytes]:
    """Everything the server sends until it closes the connection: (status, body); status
    None when it closed without answering. Fails if it is still open after ``within``."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within} s; received {data[:200]!r}") from None
    except ConnectionResetError:
        pass
    if not data:
        return None, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _status_of_one_request(sock: socket.socket) -> int:
    """Read one response on a kept-alive connection (its Content-Length body included)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def _post_head(
    length: int | None = None, *, chunked: bool = False, headers: dict[str, str] | None = None
) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())
    return (
        b"POST /v1/requests HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + extra
        + framing
        + b"\r\n\r\n"
    )


def _echo_body(size: int) -> bytes:
    body = orjson.dumps({"kind": "demo.echo", "input": {"pad": ""}})
    return body.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(body)) + b'"')


def test_half_a_body_then_silence_is_answered_408_while_others_are_served(
    served: Served, connect: Connect
) -> None:
    slow = connect()
    started = time.monotonic()
    slow.sendall(_post_head(100) + b'{"kind": "demo')
    with httpx.Client(base_url=served.url, timeout=5) as http:
        assert http.get("/health").status_code == 200  # the server is not held up
        key = asyncio.run(served.api_key())
        echo = {"kind": "demo.echo", "input": {}}
        assert http.post("/v1/requests", json=echo, headers=key).status_code == 202
    status, body = _answer(slow, TIMEOUT + MARGIN)
    elapsed = time.monotonic() - started
    assert status == 408
    assert b"read timeout" in body
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN
    # The app saw its client leave: a 499 in the access log (no 500, no traceback: the
    # module fixture checks there is no error line at all).
    assert _logged(served, lambda e: e.get("event") == "request" and e.get("status") == 499)


def _trickle(sock: socket.socket, byte: bytes, started: float) -> bytes:
    """Send ``byte`` every 0.3 s until the server answers or closes (or the test's time is
    up); what it answered, b"" for a close."""
    sock.settimeout(0.3)
    while time.monotonic() - started < TIMEOUT + MARGIN:
        try:
            sock.sendall(byte)
            return sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    return b""


def test_a_head_trickled_a_byte_at_a_time_is_dropped_at_the_heads_deadline(
    served: Served, connect: Connect
) -> None:
    sock = connect()
    started = time.monotonic()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    # A byte every 0.3 s: never a second's silence, so only a deadline for the whole head
    # can end it.
    answer = _trickle(sock, b"a", started)
    elapsed = time.monotonic() - started
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN


def test_a_body_trickled_a_byte_at_a_time_is_dropped_below_the_minimum_rate(
    served: Served, connect: Connect
) -> None:
    sock = connect()
    sock.sendall(_post_head(1000))
    started = time.monotonic()
    answer = _trickle(sock, b" ", started)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"", answer
    # Due at 1 s + (about 4 bytes) / 500 bytes/s.
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN


def test_a_slow_upload_that_keeps_its_rate_is_accepted(served: Served, connect: Connect) -> None:
    body = _echo_body(3000)
    sock = connect()
    sock.sendall(_post_head(len(body), headers=asyncio.run(served.api_key())))
    started = time.monotonic()
    sock.settimeout(0.35)
    for start in range(0, len(body) - 600, 600):
        sock.sendall(body[start : start + 600])
        with pytest.raises(TimeoutError):  # no answer yet: the client is not cut off
            sock.recv(1)
    assert time.monotonic() - started > TIMEOUT  # longer than the read timeout in all
    sock.settimeout(5)
    sock.sendall(body[len(body) - 600 :])
    assert _status_of_one_request(sock) == 202


def test_a_new_connection_that_sends_nothing_is_closed_without_an_answer(
    served: Served, connect: Connect
) -> None:
    sock = connect()
    started = time.monotonic()
    assert _answer(sock, TIMEOUT + MARGIN) == (None, b"")
    assert time.monotonic() - started >= TIMEOUT - 0.1


def test_an_idle_kept_alive_connection_keeps_uvicorns_keep_alive_timeout(
    served: Served, connect: Connect
) -> None:
    sock = connect()
    request = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
    sock.sendall(request)
    assert _status_of_one_request(sock) == 200
    sock.settimeout(TIMEOUT + 0.5)  # idle past the read timeout, within the keep-alive 5 s
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)
    sock.sendall(request)
    assert _status_of_one_request(sock) == 200


def _get_with_head_of(size: int, headers: int = 2) -> bytes:
    """A GET whose head is ``size`` bytes with ``headers`` headers (Host and X-Pad too)."""
    start = b"GET /health HTTP/1.1\r\nHost: test\r\n"
    extra = b"".join(b"X-N%d: n\r\n" % i for i in range(headers - 2))
    pad = size - len(start) - len(extra) - len(b"X-Pad: \r\n\r\n")
    return start + extra + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"


def test_a_head_exactly_at_the_cap_is_accepted_one_byte_more_is_431(
    served: Served, connect: Connect
) -> None:
    at_cap = _get_with_head_of(MAX_HEAD)
    assert len(at_cap) == MAX_HEAD
    sock = connect()
    sock.sendall(at_cap)
    assert _status_of_one_request(sock) == 200
    over = _get_with_head_of(MAX_HEAD + 1)
    sock.sendall(over)  # on the same kept-alive connection: counted per request
    status, body = _answer(sock, 5)
    assert status == 431
    assert b"%d bytes" % MAX_HEAD in body


def test_a_1_mb_header_is_431_and_not_buffered(served: Served, connect: Connect) -> None:
    rss_before = psutil.Process(served.popen.pid).memory_info().rss
    socks = [connect() for _ in range(20)]
    for sock in socks:
        # Sent without its end: the server must refuse before the head is complete.
        # Refused and closed while sending: the answer may still be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"b" * 1_048_576)
    for sock in socks:
        status, _ = _answer(sock, 5)
        assert status == 431
    grown = psutil.Process(served.popen.pid).memory_info().rss - rss_before
    assert grown < 8 * 1_048_576, f"RSS grew {grown / 1_048_576:.1f} MiB for 20 MiB of headers"


def test_too_many_headers_are_431(served: Served, connect: Connect) -> None:
    sock = connect()
    sock.sendall(_get_with_head_of(4000, headers=MAX_HEADER_COUNT + 1))
    status, body = _answer(sock, 5)
    assert status == 431
    assert b"%d headers" % MAX_HEADER_COUNT in body
    sock = connect()
    sock.sendall(_get_with_head_of(4000, headers=MAX_HEADER_COUNT))
    assert _status_of_one_request(sock) == 200


def test_an_oversized_chunked_body_is_413_before_it_is_all_sent(
    served: Served, connect: Connect
) -> None:
    sock = connect()
    sock.sendall(_post_head(chunked=True))
    sock.settimeout(0.05)
    status = None
    for _ in range(MAX_BODY // 1024 + 2):  # one chunk past the limit, never the end chunk
        sock.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        try:
            if sock.recv(65536).startswith(b"HTTP/1.1 413 "):
                status = 413
                break
        except TimeoutError:
            continue
    if status is None:  # the answer may follow the last chunk by more than 50 ms
        sock.settimeout(5)
        status = 413 if sock.recv(65536).startswith(b"HTTP/1.1 413 ") else None
    assert status == 413


def test_the_settings_are_in_range() -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        Settings(max_header_bytes=100)
    with pytest.raises(ValueError, match="request_read_timeout"):
        Settings(request_read_timeout=0)
