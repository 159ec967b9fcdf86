"""Rate limiting with the ``limits`` library: per client address and per caller.

Each request counts against one of two limits:

- **per caller** (a tenant's ``rate_limit``, else ``CONVEYOR_RATE_LIMIT_PER_CALLER``):
  an authenticated call, by :func:`limit_caller`, which the access dependency
  (:mod:`conveyor.api.access`) calls once it knows the caller; one budget per user and
  per API key, whatever address it calls from;
- **per client address** (``CONVEYOR_RATE_LIMIT_PER_IP``, the seed's ``200/15minutes``):
  every other request. :class:`~conveyor.api.middleware.ConveyorMiddleware` counts a
  request without ``Authorization`` before routing (with :meth:`RateLimiter.hit_ip`), so
  even malformed ones count; :func:`limit_address` counts, from the access dependency,
  a request whose credential fails and a public call (login, signup) that carries one.

A login also counts against its **account** (``CONVEYOR_LOGIN_RATE_PER_ACCOUNT``, keyed
by the email as typed, normalised), failed or not, by :func:`limit_account`: guessing
one account's password from many addresses is held to that budget as well.

Counters live in memory (one process), or in Redis when ``CONVEYOR_REDIS_URL`` is set, so
that several API processes share them. The Redis path uses limits' asyncio storage with
``implementation="redispy"`` (``redis.asyncio``): limits' default asyncio Redis client is
``coredis``, which is not installed here and is what "failed silently" in DESIGN.md.

Strategy: limits' **sliding window counter**. A key holds two counters, this fixed window's
and the previous one's; a request is allowed while ``previous * (share of the previous
window still inside the sliding window) + current`` stays below the limit. So there is no
double burst at a window boundary as with a plain fixed window, and a refused request does
not consume quota (a client hammering while limited is not locked out for longer).
``RateLimit-Reset`` and ``Retry-After`` are limits' reset time: when the weighted count next
drops by one request, i.e. when a retry can pass. Each check costs O(1): two counters per
key in memory (expired ones are dropped once a second, see :class:`_MemoryStorage`), and in
Redis two round trips (one Lua script to acquire, one read for the headers). The moving
window, exact to the request, keeps one timestamp per counted request and costs O(limit)
per check in memory, too much at the API's request rate (docs/benchmarks.md).

Responses: every response to a limited request carries ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds) and ``RateLimit-Policy``
(``200;w=900``), the IETF draft names; when both limits were checked, the headers describe
the one with fewer requests remaining. A refused request gets **429** with
``Retry-After`` (seconds) and a JSON body: ``{"detail", "request_id"}`` from the
middleware, or whatever the app's ``HTTPException`` handler renders for the per-caller
limit. The probes (``/health``, ``/ready``, ``/metrics``) and the documentation
(``/docs``, ``/redoc``, ``/openapi.json`` and the pages' assets) are not limited.

Client address: the ASGI ``client`` of the connection. Behind a proxy, run uvicorn with
``--proxy-headers --forwarded-allow-ips=<proxy>`` so that it is the real client's;
``X-Forwarded-For`` is never read here (any client could forge it).

Redis down: the limiter **fails open** — requests are served without a limit and without
``RateLimit-*`` headers, and one warning is logged (``rate limit storage unavailable;
failing open``) per outage, then ``rate limit storage available again`` when it returns.
After a failure Redis is not asked again for ``retry_after_failure_s`` (5 s), so a
black-holed Redis costs at most one connect timeout (0.5 s) per 5 s, not one per request.

Wiring (``app.py`` / ``access.py``)::

    from conveyor.api.middleware import install_middleware
    from conveyor.api.ratelimit import RateLimiter, limit_caller

    # app.py: install_middleware builds RateLimiter.from_settings(settings) itself, stores
    # it as app.state.rate_limiter and gives it to ConveyorMiddleware, which closes it
    # (Redis pool) at lifespan shutdown. To own it instead (tests, a custom key prefix):
    limiter = RateLimiter.from_settings(settings)
    install_middleware(app, settings, rate_limiter=limiter)
    ...  # lifespan finally: await limiter.aclose()

    # access.py, once the caller is authenticated (caller_for's dependency):
    await limit_caller(request, caller)  # 429 HTTPException when over the limit
    # routes/auth.py, a login, before the password is checked:
    await limit_account(request, email)  # 429 when the account's budget is spent
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import redis.asyncio
import redis.exceptions
from fastapi import HTTPException, Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import Scope

from conveyor.api import docs
from conveyor.config import Settings
from conveyor.logs import get_logger

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_EXEMPT_PREFIXES",
    "CallerLike",
    "LimitStatus",
    "RateLimiter",
    "caller_key",
    "client_address",
    "limit_account",
    "limit_address",
    "limit_caller",
    "mark_address_counted",
    "ratelimit_headers",
    "record_limit",
]

DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset(
    {"/health", "/ready", "/metrics", "/openapi.json", *docs.PAGE_PATHS}
)
"""Paths never limited per address: probes and scrapes must not be refused, and the
documentation pages are static (a page load alone fetches several files)."""

DEFAULT_EXEMPT_PREFIXES: tuple[str, ...] = (docs.ASSETS_PATH + "/",)
"""Path prefixes never limited per address: the documentation's assets."""

DEFAULT_KEY_PREFIX = "conveyor:ratelimit"
"""Prefix of every Redis key the limiter writes."""

_STATE_KEY = "conveyor.rate_limits"
"""Key in ``scope["state"]`` holding the :class:`LimitStatus` list of this request."""

_CALLER_DONE_KEY = "conveyor.rate_limit_caller_done"
_ADDRESS_DONE_KEY = "conveyor.rate_limit_address_done"

_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
)

_log = get_logger("ratelimit")


class CallerLike(Protocol):
    """What :func:`caller_key` needs of the authenticated caller (deps.Caller)."""

    @property
    def tenant_id(self) -> str | None: ...

    @property
    def caller_id(self) -> str: ...

    @property
    def rate_limit(self) -> str | None: ...


def caller_key(caller: CallerLike) -> str:
    """The rate-limit identity of a caller: one bucket per caller within its tenant."""
    return f"{caller.tenant_id or '-'}/{caller.caller_id}"


def client_address(scope: Scope) -> str:
    """The connection's client address (see the module docstring about proxies)."""
    client = scope.get("client")
    if client:
        return str(client[0])
    return "unknown"


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """The state of one limit after a request was counted (or refused) against it."""

    scope: Literal["ip", "caller", "account", "submission"]
    allowed: bool
    limit: int
    remaining: int
    window_s: int
    reset_after_s: float
    """Seconds until the window frees a slot for one more request."""

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait before a retry can succeed (at least 1)."""
        return max(1, math.ceil(self.reset_after_s))

    def headers(self) -> dict[str, str]:
        """The IETF draft ``RateLimit-*`` headers, plus ``Retry-After`` when refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_after_s))),
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def raw_headers(self, refused: bool) -> list[tuple[bytes, bytes]]:
        """The ``RateLimit-*`` headers as ASGI pairs, and ``Retry-After`` if ``refused``
        (the response is a 429)."""
        headers = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % max(0, math.ceil(self.reset_after_s))),
            (b"ratelimit-policy", b"%d;w=%d" % (self.limit, self.window_s)),
        ]
        if refused:
            headers.append((b"retry-after", b"%d" % self.retry_after))
        return headers

    def message(self) -> str:
        if self.scope == "account":
            return (
                f"Too many login attempts for this account: {self.limit} per "
                f"{self.window_s} seconds; retry in {self.retry_after} seconds."
            )
        who = "this address" if self.scope == "ip" else "this caller"
        return (
            f"Rate limit exceeded: {self.limit} requests per {self.window_s} seconds from "
            f"{who}; retry in {self.retry_after} seconds."
        )


SWEEP_INTERVAL_S = 1.0
"""How often the memory storage drops expired counters."""


class _MemoryStorage(MemoryStorage):
    """limits' asyncio memory storage, dropping expired counters at most once a second.

    limits starts a sweep over every key after each counted request: a task per request,
    whose work grows with the number of clients (docs/benchmarks.md). Counters are
    checked for expiry when read, so the sweep only frees memory, and once a second is as
    good. The hook is a private method of limits (5.x); a test fails if it goes away.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            await _SCHEDULE_EXPIRY(self)


_SCHEDULE_EXPIRY: Callable[[MemoryStorage], Awaitable[None]] = MemoryStorage.__dict__[
    "_MemoryStorage__schedule_expiry"
]


def _async_redis_url(url: str) -> str:
    """limits' asyncio storages are chosen by an ``async+`` scheme."""
    if url.startswith("async+"):
        return url
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


class RateLimiter:
    """Per-address and per-caller sliding-window limits over one ``limits`` storage.

    Build it with :meth:`from_settings`, :meth:`in_memory` or :meth:`with_redis`; close it
    with :meth:`aclose` (idempotent). ``hit_*`` return None when the storage failed and the
    request is let through (fail open).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        per_ip: str,
        per_caller: str,
        per_account: str = "10/15minutes",
        backend: Literal["memory", "redis"] = "memory",
        pool: redis.asyncio.ConnectionPool | None = None,
        retry_after_failure_s: float = 5.0,
    ) -> None:
        self.per_ip: RateLimitItem = parse(per_ip)
        self.per_caller: RateLimitItem = parse(per_caller)
        self.per_account: RateLimitItem = parse(per_account)
        self.backend = backend
        self._items: dict[str, RateLimitItem] = {}
        self._storage = storage
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._pool = pool
        self._retry_after_failure_s = retry_after_failure_s
        self._skip_until = 0.0
        self._failing = False
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, key_prefix: str = DEFAULT_KEY_PREFIX
    ) -> RateLimiter:
        """Redis when ``settings.redis_url`` is set, else memory."""
        if settings.redis_url:
            return cls.with_redis(
                settings.redis_url,
                per_ip=settings.rate_limit_per_ip,
                per_caller=settings.rate_limit_per_caller,
                per_account=settings.login_rate_per_account,
                key_prefix=key_prefix,
            )
        return cls.in_memory(
            per_ip=settings.rate_limit_per_ip,
            per_caller=settings.rate_limit_per_caller,
            per_account=settings.login_rate_per_account,
        )

    @classmethod
    def in_memory(
        cls, *, per_ip: str, per_caller: str, per_account: str = "10/15minutes"
    ) -> RateLimiter:
        return cls(
            _MemoryStorage(),
            per_ip=per_ip,
            per_caller=per_caller,
            per_account=per_account,
            backend="memory",
        )

    @classmethod
    def with_redis(
        cls,
        url: str,
        *,
        per_ip: str,
        per_caller: str,
        per_account: str = "10/15minutes",
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = 0.5,
        retry_after_failure_s: float = 5.0,
    ) -> RateLimiter:
        """Counters in Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        Nothing connects here: the pool connects on first use, inside the running loop.
        """
        pool = redis.asyncio.ConnectionPool.from_url(
            url.removeprefix("async+"),
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
        )
        # The pool is ours so that aclose() can close its connections; limits passes
        # ``connection_pool`` through to redis.asyncio.Redis (typed as a scalar option).
        storage = storage_from_string(
            _async_redis_url(url),
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            connection_pool=cast(Any, pool),
        )
        return cls(
            cast(Storage, storage),
            per_ip=per_ip,
            per_caller=per_caller,
            per_account=per_account,
            backend="redis",
            pool=pool,
            retry_after_failure_s=retry_after_failure_s,
        )

    async def hit_ip(self, address: str) -> LimitStatus | None:
        """Count one request from ``address``; None when failing open."""
        return await self._hit("ip", self.per_ip, address)

    async def hit_caller(self, key: str, limit: str | None = None) -> LimitStatus | None:
        """Count one request by the caller ``key`` (see :func:`caller_key`) against
        ``limit`` (a tenant's own budget, ``"1000/minute"``), else ``per_caller``."""
        item = self.per_caller if limit is None else self._parsed(limit)
        return await self._hit("caller", item, key)

    async def hit_account(self, account: str) -> LimitStatus | None:
        """Count one login attempt for ``account`` (a normalised email)."""
        return await self._hit("account", self.per_account, account)

    async def hit_submission(self, queue: str, tenant_id: str, limit: str) -> LimitStatus | None:
        """Count one submission by ``tenant_id`` into ``queue`` against ``limit``, the
        tenant's cap there (``conveyor_tenant_limits.rate``, see :mod:`conveyor.api.submit`)."""
        # A queue name holds no '/', so the key names one (queue, tenant) whatever the id.
        return await self._hit("submission", self._parsed(limit), f"{queue}/{tenant_id}")

    def _parsed(self, limit: str) -> RateLimitItem:
        item = self._items.get(limit)
        if item is None:
            try:
                item = parse(limit)
            except ValueError:
                # A tenant's budget the limiter cannot read must not lock its callers
                # out: the setting applies, and the store's value is logged for a fix.
                _log.warning("unreadable tenant rate limit; using the default", limit=limit)
                item = self.per_caller
            self._items[limit] = item
        return item

    async def _hit(
        self, scope: Literal["ip", "caller", "account", "submission"], item: RateLimitItem, key: str
    ) -> LimitStatus | None:
        if self._closed or time.monotonic() < self._skip_until:
            return None
        try:
            allowed = await self._strategy.hit(item, scope, key)
            stats = await self._strategy.get_window_stats(item, scope, key)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)
            return None
        if self._failing:
            self._failing = False
            _log.warning("rate limit storage available again", backend=self.backend)
        return LimitStatus(
            scope=scope,
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            window_s=item.get_expiry(),
            reset_after_s=max(0.0, stats.reset_time - time.time()),
        )

    def _storage_failed(self, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + self._retry_after_failure_s
        if not self._failing:
            self._failing = True
            _log.warning(
                "rate limit storage unavailable; failing open",
                backend=self.backend,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=self._retry_after_failure_s,
            )

    async def reset(self) -> None:
        """Forget every counter (tests; Redis: the keys under this limiter's prefix)."""
        await self._storage.reset()

    async def aclose(self) -> None:
        """Close the Redis connections (or the memory storage's expiry task)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.aclose()
        timer = getattr(self._storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()


def record_limit(scope: Scope, status: LimitStatus) -> None:
    """Keep ``status`` with the request, for :func:`ratelimit_headers`."""
    state: dict[str, Any] = scope.setdefault("state", {})
    statuses: list[LimitStatus] = state.setdefault(_STATE_KEY, [])
    statuses.append(status)


def _most_restrictive(statuses: Iterable[LimitStatus]) -> LimitStatus | None:
    """A refused limit first, then the one with the fewest requests left."""
    return min(
        statuses,
        key=lambda s: (s.allowed, s.remaining, -s.reset_after_s),
        default=None,
    )


def ratelimit_headers(scope: Scope, status_code: int) -> list[tuple[bytes, bytes]]:
    """The response headers of the limits this request was counted against (the most
    restrictive one's, see the module docstring); none when it was not counted."""
    state = scope.get("state")
    statuses: list[LimitStatus] | None = state.get(_STATE_KEY) if state else None
    chosen = _most_restrictive(statuses) if statuses else None
    if chosen is None:
        return []
    return chosen.raw_headers(refused=status_code == 429)


async def limit_caller(request: Request, caller: CallerLike) -> None:
    """Count this request against ``caller``'s limit; raise 429 when it is exceeded.

    Call it from the authentication dependency once the caller is known. A no-op when no
    limiter is installed (``app.state.rate_limiter``) or when already counted for this
    request. The 429 is an ``HTTPException`` (the app's handler renders it) carrying
    ``Retry-After`` and ``RateLimit-*``; on success the middleware adds ``RateLimit-*``.
    """
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    state: dict[str, Any] = request.scope.setdefault("state", {})
    if state.get(_CALLER_DONE_KEY):
        return
    state[_CALLER_DONE_KEY] = True
    status = await limiter.hit_caller(caller_key(caller), caller.rate_limit)
    if status is None:
        return
    record_limit(request.scope, status)
    if not status.allowed:
        raise HTTPException(status_code=429, detail=status.message(), headers=status.headers())


async def limit_address(request: Request) -> None:
    """Count this request against its client address; raise 429 when it is over the
    limit. A no-op when no limiter is installed or when already counted (the middleware
    counts every request without ``Authorization`` before routing)."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    state: dict[str, Any] = request.scope.setdefault("state", {})
    if state.get(_ADDRESS_DONE_KEY):
        return
    state[_ADDRESS_DONE_KEY] = True
    status = await limiter.hit_ip(client_address(request.scope))
    if status is None:
        return
    record_limit(request.scope, status)
    if not status.allowed:
        raise HTTPException(status_code=429, detail=status.message(), headers=status.headers())


async def limit_account(request: Request, account: str) -> None:
    """Count a login attempt against ``account`` (the email, normalised); raise 429 when
    the account's budget is spent. A no-op when no limiter is installed."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    status = await limiter.hit_account(account)
    if status is None:
        return
    record_limit(request.scope, status)
    if not status.allowed:
        raise HTTPException(status_code=429, detail=status.message(), headers=status.headers())


def mark_address_counted(scope: Scope) -> None:
    """Note that this request was counted against its address (by the middleware)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    state[_ADDRESS_DONE_KEY] = True
