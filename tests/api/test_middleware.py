"""The API's middlewares on a tiny app: request ids, access logs, security headers, CORS,
body size limits and unhandled errors."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from structlog.testing import capture_logs

from conveyor.api.docs import install_docs
from conveyor.api.middleware import (
    API_CSP,
    ConveyorMiddleware,
    install_middleware,
    request_id,
)
from conveyor.config import Settings
from conveyor.logs import get_logger

MAX_BODY = 1024


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": None,
        "max_body_bytes": MAX_BODY,
        "cors_origins": ["https://app.example.com"],
        "rate_limit_per_ip": "1000/minute",
        "rate_limit_per_caller": "1000/minute",
    }
    values.update(overrides)
    return Settings(**values)


class Calls:
    def __init__(self) -> None:
        self.echo = 0


def make_app(settings: Settings | None = None) -> tuple[FastAPI, Calls]:
    app = FastAPI(docs_url=None, redoc_url=None)
    install_docs(app)
    calls = Calls()
    log = get_logger("test")

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, request: Request) -> dict[str, Any]:
        log.info("inside the route", item_id=item_id)
        return {"item_id": item_id, "request_id": request_id(request)}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        calls.echo += 1  # counts bodies the route got to act on
        return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/own-csp")
    async def own_csp() -> Response:
        return JSONResponse({}, headers={"Content-Security-Policy": "default-src 'self'"})

    install_middleware(app, settings or make_settings())
    return app, calls


@pytest.fixture
async def app_calls() -> AsyncIterator[tuple[FastAPI, Calls]]:
    app, calls = make_app()
    yield app, calls
    await app.state.rate_limiter.aclose()


@pytest.fixture
async def client(app_calls: tuple[FastAPI, Calls]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_calls[0])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


# --- request id ---------------------------------------------------------------------


async def test_request_id_is_generated_and_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/1")
    assert response.status_code == 200
    rid = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid
    again = await client.get("/items/1")
    assert again.headers["X-Request-ID"] != rid


@pytest.mark.parametrize("offered", ["abc-123_X.y", "a" * 128])
async def test_valid_request_id_is_accepted(client: httpx.AsyncClient, offered: str) -> None:
    response = await client.get("/items/1", headers={"X-Request-ID": offered})
    assert response.headers["X-Request-ID"] == offered
    assert response.json()["request_id"] == offered


@pytest.mark.parametrize("offered", ["a" * 129, "has space", "semi;colon", "new\tline", ""])
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, offered: str) -> None:
    response = await client.get("/items/1", headers={"X-Request-ID": offered})
    rid = response.headers["X-Request-ID"]
    assert rid != offered
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid


async def test_request_id_is_in_the_route_logs_and_the_access_log(
    client: httpx.AsyncClient,
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = await client.get("/items/7?secret=1", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    inside = [e for e in logs if e["event"] == "inside the route"]
    assert inside == [
        {
            "event": "inside the route",
            "item_id": 7,
            "component": "test",
            "request_id": "req-42",
            "log_level": "info",
        }
    ]
    (access,) = [e for e in logs if e.get("component") == "access"]
    assert access["event"] == "request"
    assert access["log_level"] == "info"
    assert access["method"] == "GET"
    assert access["path"] == "/items/7"  # no query string: it may hold secrets
    assert access["route"] == "/items/{item_id}"
    assert access["status"] == 200
    assert access["request_id"] == "req-42"
    assert access["client"] == "127.0.0.1"
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0
    # The binding ends with the request.
    assert "request_id" not in structlog.contextvars.get_contextvars()


async def test_access_log_of_an_unmatched_path(client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        response = await client.get("/nowhere")
    assert response.status_code == 404
    (access,) = [e for e in logs if e.get("component") == "access"]
    assert access["route"] is None
    assert access["status"] == 404


# --- security headers -----------------------------------------------------------------


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["Content-Security-Policy"] == API_CSP
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for path in ("/items/1", "/nowhere", "/items/not-a-number"):
        response = await client.get(path)
        assert_security_headers(response)
        assert "Strict-Transport-Security" not in response.headers


async def test_hsts_only_over_https(app_calls: tuple[FastAPI, Calls]) -> None:
    transport = httpx.ASGITransport(app=app_calls[0])
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        response = await c.get("/items/1")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert_security_headers(response)


async def test_hsts_behind_a_tls_proxy(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/1", headers={"X-Forwarded-Proto": "https"})
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = await client.get("/items/1", headers={"X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in plain.headers


async def test_a_routes_own_csp_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/own-csp")
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_docs_page_csp_allows_its_assets_and_hashes_its_inline_script(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    script_src = directives["script-src"].split()
    # Changed by issue 10: the assets are the app's own, so no other host is allowed.
    assert script_src == ["'self'", f"'sha256-{digest}'"]
    assert "'unsafe-eval'" not in csp
    assert "http" not in csp
    assert directives["style-src"] == "'self' 'unsafe-inline'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert response.headers["X-Frame-Options"] == "DENY"
    # The page is sent whole and unchanged.
    assert int(response.headers["content-length"]) == len(response.content)
    assert "SwaggerUIBundle" in response.text

    redoc = await client.get("/redoc")
    assert "worker-src 'self' blob:" in redoc.headers["Content-Security-Policy"]
    schema = await client.get("/openapi.json")
    assert schema.headers["Content-Security-Policy"] == API_CSP


# --- CORS ------------------------------------------------------------------------------


async def test_cors_preflight_from_an_allowed_origin(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/echo",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, Idempotency-Key, Authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for header in ("content-type", "idempotency-key", "authorization"):
        assert header in allowed
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers["X-Request-ID"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_cors_preflight_from_another_origin_is_refused(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options(
        "/echo",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_simple_request_exposes_the_api_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/1", headers={"Origin": "https://app.example.com"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    for header in ("x-request-id", "retry-after", "ratelimit-remaining", "ratelimit-reset"):
        assert header in exposed


async def test_no_cors_without_configured_origins() -> None:
    app, _ = make_app(make_settings(cors_origins=[]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.options(
            "/echo",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        simple = await c.get("/items/1", headers={"Origin": "https://app.example.com"})
    await app.state.rate_limiter.aclose()
    assert response.status_code == 405
    assert "Access-Control-Allow-Origin" not in simple.headers


# --- body size -------------------------------------------------------------------------


async def test_body_within_the_limit_reaches_the_route(
    client: httpx.AsyncClient, app_calls: tuple[FastAPI, Calls]
) -> None:
    body = b"x" * MAX_BODY
    response = await client.post("/echo", content=body)
    assert response.status_code == 200
    assert response.json() == {"size": MAX_BODY, "sha256": hashlib.sha256(body).hexdigest()}
    assert app_calls[1].echo == 1


async def test_content_length_over_the_limit_is_413(
    client: httpx.AsyncClient, app_calls: tuple[FastAPI, Calls]
) -> None:
    response = await client.post("/echo", content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    body = response.json()
    assert body["detail"] == f"Request body too large: the limit is {MAX_BODY} bytes."
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert_security_headers(response)
    assert app_calls[1].echo == 0


async def test_streamed_chunked_body_over_the_limit_is_413(
    client: httpx.AsyncClient, app_calls: tuple[FastAPI, Calls]
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(20):
            sent += 1
            yield b"y" * 300

    response = await client.post("/echo", content=chunks())
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["detail"].startswith("Request body too large")
    assert app_calls[1].echo == 0
    # Counted while receiving: reading stopped at the chunk that crossed the limit.
    assert sent == 4


async def test_streamed_chunked_body_within_the_limit_is_passed_whole(
    client: httpx.AsyncClient, app_calls: tuple[FastAPI, Calls]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(4):
            yield bytes([65 + i]) * 200

    response = await client.post("/echo", content=chunks())
    expected = b"".join(bytes([65 + i]) * 200 for i in range(4))
    assert response.status_code == 200
    assert response.json() == {"size": 800, "sha256": hashlib.sha256(expected).hexdigest()}
    assert app_calls[1].echo == 1


async def call_raw(
    app: FastAPI, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[str, Any]]:
    """Drive the app as a server would, with whatever headers and body we like."""
    sent = await drive(app, headers, chunks)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, httpx.Response(status, content=body).json()


async def drive(
    app: FastAPI, headers: list[tuple[bytes, bytes]], chunks: list[bytes], *, ends: bool = True
) -> list[dict[str, Any]]:
    """The messages the app sends for this request; ``ends=False``: the last chunk says
    more is coming, and then the client is gone."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    messages = [
        {"type": "http.request", "body": c, "more_body": not ends or i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_body_longer_than_its_content_length_is_413(
    app_calls: tuple[FastAPI, Calls],
) -> None:
    app, calls = app_calls
    status, body = await call_raw(app, [(b"content-length", b"10")], [b"z" * 700, b"z" * 700])
    assert status == 413
    assert body["detail"].startswith("Request body too large")
    assert calls.echo == 0


async def test_an_invalid_content_length_is_400(app_calls: tuple[FastAPI, Calls]) -> None:
    app, calls = app_calls
    status, body = await call_raw(app, [(b"content-length", b"-5")], [b"abc"])
    assert status == 400
    assert body["detail"] == "Invalid Content-Length header."
    assert calls.echo == 0


@pytest.mark.parametrize(
    "headers", [[(b"content-length", b"1000")], []], ids=["content-length", "chunked"]
)
async def test_a_client_that_leaves_mid_body_is_a_499_not_an_error(
    app_calls: tuple[FastAPI, Calls], headers: list[tuple[bytes, bytes]]
) -> None:
    app, calls = app_calls
    with capture_logs() as logs:
        sent = await drive(app, headers, [b"z" * 100], ends=False)
    assert sent == []  # nobody is left to answer
    assert calls.echo == 0
    assert not [e for e in logs if e["log_level"] == "error"], logs
    (access,) = [e for e in logs if e.get("component") == "access"]
    assert (access["status"], access["log_level"]) == (499, "info")


# --- unhandled errors ------------------------------------------------------------------


async def test_unhandled_error_is_a_json_500_with_headers_and_one_log_line(
    client: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        response = await client.get("/boom", headers={"Origin": "https://app.example.com"})
    assert response.status_code == 500
    rid = response.headers["X-Request-ID"]
    assert response.json() == {"detail": "Internal server error", "request_id": rid}
    assert_security_headers(response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    (error,) = [e for e in logs if e["event"] == "unhandled error"]
    assert isinstance(error["exc_info"], RuntimeError)
    assert error["route"] == "/boom"
    (access,) = [e for e in logs if e.get("component") == "access"]
    assert access["status"] == 500
    assert access["log_level"] == "error"


async def test_the_apps_exception_handler_answers_unhandled_errors() -> None:
    app, _ = make_app()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "internal error", "request_id": request.state.request_id}, 500
        )

    app.add_exception_handler(Exception, on_unexpected)  # after install_middleware
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/boom")
    await app.state.rate_limiter.aclose()
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error",
        "request_id": response.headers["X-Request-ID"],
    }
    assert_security_headers(response)


async def test_seed_paths_get_the_seed_error_shape() -> None:
    app, _ = make_app()

    @app.post("/api/video/process")
    async def process(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body())}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.post("/api/video/process", content=b"v" * (MAX_BODY + 1))
    await app.state.rate_limiter.aclose()
    assert response.status_code == 413
    body = response.json()
    assert body["success"] is False
    assert body["message"] == body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]


# --- order -----------------------------------------------------------------------------


def test_one_middleware_layer(app_calls: tuple[FastAPI, Calls]) -> None:
    app, _ = app_calls
    names = [m.cls.__name__ for m in app.user_middleware]  # type: ignore[attr-defined]
    assert names == [ConveyorMiddleware.__name__]


async def test_cors_wraps_the_rate_limit() -> None:
    # Preflights are answered before the rate limit (never refused by it), and a 429
    # still carries the CORS headers a browser needs to read it.
    app, _ = make_app(make_settings(rate_limit_per_ip="1/hour"))
    origin = {"Origin": "https://app.example.com"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/items/1", headers=origin)).status_code == 200
        preflights = [
            await c.options("/echo", headers={**origin, "Access-Control-Request-Method": "POST"})
            for _ in range(3)
        ]
        refused = await c.get("/items/1", headers=origin)
    await app.state.rate_limiter.aclose()
    assert [p.status_code for p in preflights] == [200, 200, 200]
    assert all("RateLimit-Limit" not in p.headers for p in preflights)
    assert refused.status_code == 429
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert refused.headers["Retry-After"]
    assert_security_headers(refused)
