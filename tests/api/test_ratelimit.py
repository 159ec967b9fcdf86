"""Rate limiting: per address and per caller, 429 with Retry-After and RateLimit-*, in
memory and in Redis shared by two API instances, failing open when Redis is down."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
import redis
import redis.asyncio
from fastapi import Depends, FastAPI, Header, Request
from limits.aio.storage import MemoryStorage
from limits.errors import StorageError
from structlog.testing import capture_logs

from conveyor.api.middleware import install_middleware
from conveyor.api.ratelimit import RateLimiter, caller_key, limit_caller
from conveyor.config import Settings
from missing_service import unavailable

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    caller_id: str
    rate_limit: str | None = None


def make_settings(**overrides: Any) -> Settings:
    # Hour windows: a sliding window counter counts a request made just before a window
    # boundary at slightly less than one just after it, so a test crossing a boundary could
    # see one request more allowed; with an hour that is 60 times less likely than with a
    # minute.
    values: dict[str, Any] = {
        "redis_url": None,
        "rate_limit_per_ip": "3/hour",
        "rate_limit_per_caller": "1000/hour",
        "cors_origins": [],
    }
    values.update(overrides)
    return Settings(**values)


async def current_caller(
    request: Request, x_caller: Annotated[str, Header()] = "anonymous"
) -> Caller:
    """The test app's authentication dependency: the caller named by X-Caller."""
    caller = Caller(tenant_id="t1", caller_id=x_caller)
    await limit_caller(request, caller)
    return caller


def make_app(settings: Settings, limiter: RateLimiter | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me")
    async def me(caller: Annotated[Caller, Depends(current_caller)]) -> dict[str, str]:
        return {"caller": caller.caller_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    install_middleware(app, settings, rate_limiter=limiter)
    return app


def client_for(app: FastAPI, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def apps() -> AsyncIterator[Callable[..., FastAPI]]:
    """Builds apps with in-memory limiters, closed at the end."""
    built: list[FastAPI] = []

    def build(**overrides: Any) -> FastAPI:
        app = make_app(make_settings(**overrides))
        built.append(app)
        return app

    yield build
    for app in built:
        await app.state.rate_limiter.aclose()


def assert_ratelimit_headers(
    response: httpx.Response, *, limit: int, remaining: int, window: int = 3600
) -> None:
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == str(remaining)
    assert 0 < int(response.headers["RateLimit-Reset"]) <= window
    assert response.headers["RateLimit-Policy"] == f"{limit};w={window}"


# --- per address -------------------------------------------------------------------------


async def test_per_ip_limit_429_with_retry_after_and_ratelimit_headers(
    apps: Callable[..., FastAPI],
) -> None:
    async with client_for(apps()) as client:
        for remaining in (2, 1, 0):
            response = await client.get("/ping")
            assert response.status_code == 200
            assert_ratelimit_headers(response, limit=3, remaining=remaining)
            assert "Retry-After" not in response.headers
        refused = await client.get("/ping")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert_ratelimit_headers(refused, limit=3, remaining=0)
    body = refused.json()
    assert body["detail"].startswith("Rate limit exceeded: 3 requests per 3600 seconds")
    assert body["request_id"] == refused.headers["X-Request-ID"]
    # Still a normal API response: security headers too.
    assert refused.headers["X-Content-Type-Options"] == "nosniff"


async def test_separate_buckets_per_ip(apps: Callable[..., FastAPI]) -> None:
    app = apps()
    async with client_for(app, "10.0.0.1") as first, client_for(app, "10.0.0.2") as second:
        for _ in range(3):
            assert (await first.get("/ping")).status_code == 200
        assert (await first.get("/ping")).status_code == 429
        response = await second.get("/ping")
        assert response.status_code == 200
        assert response.headers["RateLimit-Remaining"] == "2"


async def test_refused_requests_do_not_consume_quota(apps: Callable[..., FastAPI]) -> None:
    app = apps(rate_limit_per_ip="2/hour")
    async with client_for(app) as client:
        statuses = [(await client.get("/ping")).status_code for _ in range(6)]
    assert statuses == [200, 200, 429, 429, 429, 429]
    limiter: RateLimiter = app.state.rate_limiter
    status = await limiter.hit_ip("10.0.0.1")
    assert status is not None
    assert not status.allowed
    assert status.remaining == 0


async def test_probes_are_not_limited(apps: Callable[..., FastAPI]) -> None:
    async with client_for(apps(rate_limit_per_ip="1/hour")) as client:
        assert (await client.get("/ping")).status_code == 200
        for _ in range(5):
            response = await client.get("/health")
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers


# --- per caller --------------------------------------------------------------------------


async def test_per_caller_limit_with_separate_buckets(apps: Callable[..., FastAPI]) -> None:
    app = apps(rate_limit_per_ip="100/hour", rate_limit_per_caller="2/hour")
    async with client_for(app) as client:
        first = await client.get("/me", headers={"X-Caller": "alice"})
        assert first.status_code == 200
        # The caller's limit is the closer one: the headers describe it.
        assert_ratelimit_headers(first, limit=2, remaining=1)
        assert (await client.get("/me", headers={"X-Caller": "alice"})).status_code == 200
        refused = await client.get("/me", headers={"X-Caller": "alice"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        assert_ratelimit_headers(refused, limit=2, remaining=0)
        assert "this caller" in refused.json()["detail"]

        bob = await client.get("/me", headers={"X-Caller": "bob"})
        assert bob.status_code == 200
        assert_ratelimit_headers(bob, limit=2, remaining=1)
        # A route without the caller dependency is limited by address only.
        ping = await client.get("/ping")
        assert ping.status_code == 200
        assert_ratelimit_headers(ping, limit=100, remaining=100 - 5)


async def test_caller_key_is_per_tenant() -> None:
    assert caller_key(Caller("t1", "alice")) != caller_key(Caller("t2", "alice"))
    assert caller_key(Caller("t1", "alice")) == "t1/alice"


async def test_limit_caller_without_a_limiter_is_a_no_op() -> None:
    app = FastAPI()

    @app.get("/me")
    async def me(request: Request) -> dict[str, bool]:
        await limit_caller(request, Caller("t", "c"))
        return {"ok": True}

    async with client_for(app) as client:
        response = await client.get("/me")
    assert response.status_code == 200
    assert "RateLimit-Limit" not in response.headers


async def test_limit_caller_counts_once_per_request() -> None:
    limiter = RateLimiter.in_memory(per_ip="100/hour", per_caller="2/hour")
    app = FastAPI()
    app.state.rate_limiter = limiter

    @app.get("/twice")
    async def twice(request: Request) -> dict[str, bool]:
        await limit_caller(request, Caller("t", "c"))
        await limit_caller(request, Caller("t", "c"))
        return {"ok": True}

    async with client_for(app) as client:
        assert (await client.get("/twice")).status_code == 200
        assert (await client.get("/twice")).status_code == 200
        assert (await client.get("/twice")).status_code == 429
    await limiter.aclose()


# --- backends ----------------------------------------------------------------------------


async def test_memory_counters_are_swept_at_most_once_a_second() -> None:
    limiter = RateLimiter.in_memory(per_ip="100/hour", per_caller="100/hour")
    storage = limiter._storage
    assert isinstance(storage, MemoryStorage)
    await limiter.hit_ip("10.0.0.1")
    sweep = storage.timer
    assert sweep is not None
    await sweep
    for i in range(50):
        await limiter.hit_ip(f"10.0.1.{i}")
        await asyncio.sleep(0)
    # limits alone starts a sweep after each request once the last one has finished.
    assert storage.timer is sweep
    # Past the interval, the next request sweeps the expired counters away.
    for key in storage.expirations:
        storage.expirations[key] = 0.0
    storage._next_sweep = 0.0  # type: ignore[attr-defined]
    await limiter.hit_ip("10.0.0.2")
    assert storage.timer is not sweep
    await storage.timer
    assert storage.expirations
    assert all("10.0.0.2" in key for key in storage.expirations)
    await limiter.aclose()


async def test_from_settings_picks_the_backend() -> None:
    memory = RateLimiter.from_settings(make_settings())
    remote = RateLimiter.from_settings(make_settings(redis_url="redis://127.0.0.1:1/0"))
    assert memory.backend == "memory"
    assert remote.backend == "redis"
    assert remote.per_ip.amount == 3
    await memory.aclose()
    await remote.aclose()


def redis_url() -> str:
    """The test Redis's URL, once it answers (else the test fails or skips: missing_service)."""
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        unavailable(
            "redis",
            f"Redis at {REDIS_URL} is unreachable ({exc}); start it (e.g. `redis-server`) "
            "or point CONVEYOR_TEST_REDIS_URL at one",
        )
    return REDIS_URL


async def test_redis_counters_are_shared_by_two_api_instances() -> None:
    url = redis_url()
    prefix = f"conveyor-test:{uuid.uuid4().hex}"
    settings = make_settings(redis_url=url)
    limiters = [
        RateLimiter.with_redis(url, per_ip="3/hour", per_caller="2/hour", key_prefix=prefix)
        for _ in range(2)
    ]
    one, two = (make_app(settings, limiter) for limiter in limiters)
    try:
        async with client_for(one) as a, client_for(two) as b:
            statuses = [(await c.get("/ping")).status_code for c in (a, b, a)]
            assert statuses == [200, 200, 200]
            refused = await b.get("/ping")
            assert refused.status_code == 429
            assert_ratelimit_headers(refused, limit=3, remaining=0)
            assert 1 <= int(refused.headers["Retry-After"]) <= 3600
            # Another address has its own bucket on both instances.
            async with client_for(two, "10.9.9.9") as other:
                assert (await other.get("/ping")).status_code == 200

        # Per caller, through the dependency, across instances too.
        callers = [
            await lim.hit_caller(caller_key(Caller("t", "x"))) for lim in (*limiters, limiters[0])
        ]
        assert [s.allowed for s in callers if s is not None] == [True, True, False]

        raw = redis.asyncio.Redis.from_url(url)
        try:
            keys = [k async for k in raw.scan_iter(match=f"{prefix}:*")]
        finally:
            await raw.aclose()
        assert keys, "the counters live in Redis under the limiter's prefix"
    finally:
        await limiters[0].reset()
        for limiter in limiters:
            await limiter.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_fails_open_with_one_warning_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    limiter = RateLimiter.with_redis(
        url, per_ip="1/hour", per_caller="1/hour", retry_after_failure_s=0.0
    )
    app = make_app(make_settings(redis_url=url), limiter)
    try:
        with capture_logs() as logs:
            async with client_for(app) as client:
                responses = [await client.get("/me") for _ in range(4)]
    finally:
        await limiter.aclose()
    assert [r.status_code for r in responses] == [200] * 4
    assert all("RateLimit-Limit" not in r.headers for r in responses)
    warnings = [e for e in logs if e["event"] == "rate limit storage unavailable; failing open"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["backend"] == "redis"
    assert "Error" in warnings[0]["error"]


class FlakyStorage(MemoryStorage):
    """A memory storage that fails while ``down`` is set."""

    down = False

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if self.down:
            raise StorageError(ConnectionError("storage down"))
        return await super().acquire_sliding_window_entry(key, limit, expiry, amount)


async def test_fails_open_then_recovers_and_skips_the_storage_meanwhile() -> None:
    storage = FlakyStorage()
    limiter = RateLimiter(storage, per_ip="2/hour", per_caller="2/hour", retry_after_failure_s=3600)
    with capture_logs() as logs:
        assert await limiter.hit_ip("a") is not None
        storage.down = True
        assert await limiter.hit_ip("a") is None
        storage.down = False
        # Within the back-off the storage is not asked: still open.
        assert await limiter.hit_ip("a") is None
        limiter._skip_until = 0.0  # the back-off has passed
        status = await limiter.hit_ip("a")
    assert status is not None
    assert status.remaining == 0
    events = [e["event"] for e in logs]
    assert events == [
        "rate limit storage unavailable; failing open",
        "rate limit storage available again",
    ]
    await limiter.aclose()


async def test_an_owned_limiter_is_closed_at_lifespan_shutdown() -> None:
    app = make_app(make_settings())
    limiter: RateLimiter = app.state.rate_limiter
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert await limiter.hit_ip("x") is None  # closed: no more counting
