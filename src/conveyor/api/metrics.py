"""Prometheus metrics: HTTP latency, plus the engine's queue statistics at scrape time.

Every app gets its own :class:`prometheus_client.CollectorRegistry` (never the global
one), so tests and processes can build many apps. HTTP requests are timed by
:class:`~conveyor.api.middleware.ConveyorMiddleware` (:meth:`Metrics.observe_http`); the
job figures are read from ``stats_source`` (the engine's
``client.queues``, one :class:`~conveyor.store.records.QueueStats` per queue) when
``GET /metrics`` is scraped, so they are as fresh as the store and cost nothing between
scrapes. If the source fails or takes longer than ``stats_timeout_s`` (5 s), the scrape
still answers, with ``conveyor_queue_stats_up 0`` and no job figures, and a warning is
logged.

=============================================  =========  ==============================
metric                                         type       labels / meaning
=============================================  =========  ==============================
``conveyor_http_request_duration_seconds``     histogram  ``method``, ``route`` (the
                                                          route template, e.g.
                                                          ``/v1/jobs/{job_id}``;
                                                          ``<unmatched>`` for 404s
                                                          outside any route and for
                                                          413/429s refused before
                                                          routing),
                                                          ``status``; from the first
                                                          byte in to the last byte out
``conveyor_jobs``                              gauge      ``queue``, ``state``: jobs in
                                                          each state (queued includes
                                                          scheduled)
``conveyor_queue_due_jobs``                    gauge      ``queue``: queued jobs that
                                                          are due now (the depth)
``conveyor_queue_scheduled_jobs``              gauge      ``queue``: queued jobs whose
                                                          ``run_at`` is in the future
``conveyor_queue_oldest_due_age_seconds``      gauge      ``queue``: how long the oldest
                                                          due job has waited (0: none)
``conveyor_queue_running_jobs``                gauge      ``queue``: jobs running now
``conveyor_queue_limit``                       gauge      ``queue``: how many may run at
                                                          once (absent: no limit known)
``conveyor_queue_paused``                      gauge      ``queue``: 1 when paused
``conveyor_queue_finished_last_minute``        gauge      ``queue``, ``outcome``
                                                          (``completed``/``failed``)
``conveyor_job_run_time_seconds``              gauge      ``queue``, ``quantile``
                                                          (``0.5``, ``0.95``): run time
                                                          of recently finished jobs
                                                          (absent: none finished)
``conveyor_queue_stats_up``                    gauge      1 when the stats source
                                                          answered this scrape, else 0
=============================================  =========  ==============================

Run times are quantiles computed by the store over recent jobs, exposed as gauges: a real
histogram would have to be observed by the workers, which run in other processes.

Wiring (``app.py``)::

    from conveyor.api.metrics import Metrics

    metrics = Metrics(stats_source=client.queues)
    install_middleware(app, settings, metrics=metrics)  # times every request
    app.include_router(metrics.router())                # GET /metrics

When the engine client only exists once the database answered (``ApiState.client``
raises ``StoreError`` until then), pass a callable that looks it up at scrape time, e.g.
``stats_source=lambda: api.client.queues()``; a failure reads as
``conveyor_queue_stats_up 0``. Reusing the API's short statistics cache works too:
``async def stats(): return list((await api.stats.get(api.client)).values())``.

``/metrics`` is left out of the OpenAPI schema and of the per-address rate limit. Its
access level is ``METRICS`` (:mod:`conveyor.api.access`): open, or the bearer
``CONVEYOR_METRICS_TOKEN`` when that is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

from conveyor.api.access import Access, caller_for
from conveyor.logs import get_logger
from conveyor.store.records import QueueStats

__all__ = [
    "HTTP_BUCKETS",
    "Metrics",
    "StatsSource",
    "route_template",
]

StatsSource = Callable[[], Awaitable[list[QueueStats]]]
"""Returns one :class:`QueueStats` per queue; the engine's ``client.queues``."""

HTTP_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Latency buckets (seconds); dense around the 50 ms p99 target of ``POST /v1/requests``."""

UNMATCHED_ROUTE = "<unmatched>"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_log = get_logger("metrics")


def route_template(scope: Scope) -> str | None:
    """The template of the route that handled the request (``/v1/jobs/{job_id}``), once
    routing has run; None when no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class _Scrape(Collector):
    """One scrape: the app's registry plus the job families read for this scrape."""

    def __init__(self, registry: CollectorRegistry, extra: Sequence[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        yield from self._extra


class Metrics:
    """The metrics of one app: its registry, the HTTP histogram and the stats source."""

    def __init__(
        self,
        stats_source: StatsSource | None = None,
        *,
        registry: CollectorRegistry | None = None,
        stats_timeout_s: float = 5.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats_source = stats_source
        self.stats_timeout_s = stats_timeout_s
        self.http_duration = Histogram(
            "conveyor_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte, by route template "
            "and status.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        # The labelled child of each (method, route, status) seen: ``labels()`` validates
        # and locks at every call, which costs more than the observation itself.
        self._children: dict[tuple[str, str | None, int], Histogram] = {}

    def observe_http(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one HTTP request (``route``: its template, None when none matched)."""
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self.http_duration.labels(
                method if method in _METHODS else "other",
                route if route is not None else UNMATCHED_ROUTE,
                str(status),
            )
            if method in _METHODS:
                # Other methods share the "other" child; their names are not cached, so a
                # client cannot grow this dict with made-up methods.
                self._children[key] = child
        child.observe(seconds)

    async def render(self) -> bytes:
        """The Prometheus text exposition of everything, job figures read now."""
        families = await self._job_families()
        return generate_latest(_Scrape(self.registry, families))

    def router(self, path: str = "/metrics") -> APIRouter:
        """A router serving ``GET {path}`` (and ``HEAD``) in the Prometheus text format."""
        router = APIRouter(dependencies=[Depends(caller_for(Access.METRICS))])

        async def metrics_endpoint() -> Response:
            return Response(await self.render(), media_type=CONTENT_TYPE_LATEST)

        for method in ("GET", "HEAD"):
            router.add_api_route(
                path,
                metrics_endpoint,
                methods=[method],
                include_in_schema=False,
                response_class=Response,
                name="metrics",
            )
        return router

    async def _job_families(self) -> list[Metric]:
        if self.stats_source is None:
            return []
        up = GaugeMetricFamily(
            "conveyor_queue_stats_up", "1 when the queue statistics were read for this scrape."
        )
        try:
            async with asyncio.timeout(self.stats_timeout_s):
                stats = await self.stats_source()
        except Exception as exc:
            _log.warning("queue statistics unavailable for /metrics", error=repr(exc))
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *_queue_families(stats)]


def _queue_families(stats: Sequence[QueueStats]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "conveyor_jobs", "Jobs per queue and state.", labels=["queue", "state"]
    )
    due = GaugeMetricFamily(
        "conveyor_queue_due_jobs", "Queued jobs that are due now.", labels=["queue"]
    )
    scheduled = GaugeMetricFamily(
        "conveyor_queue_scheduled_jobs",
        "Queued jobs whose run_at is in the future.",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "conveyor_queue_oldest_due_age_seconds",
        "How long the oldest due job has waited since it became due (0: none waits).",
        labels=["queue"],
    )
    running = GaugeMetricFamily(
        "conveyor_queue_running_jobs", "Jobs running now.", labels=["queue"]
    )
    limit = GaugeMetricFamily(
        "conveyor_queue_limit",
        "How many jobs of the queue may run at once (cluster limit, else the live workers').",
        labels=["queue"],
    )
    paused = GaugeMetricFamily(
        "conveyor_queue_paused", "1 when the queue is paused.", labels=["queue"]
    )
    finished = GaugeMetricFamily(
        "conveyor_queue_finished_last_minute",
        "Jobs that finished in the last minute, by outcome.",
        labels=["queue", "outcome"],
    )
    run_time = GaugeMetricFamily(
        "conveyor_job_run_time_seconds",
        "Run time quantiles of recently finished jobs.",
        labels=["queue", "quantile"],
    )
    for q in stats:
        for state, count in sorted(q.counts.items()):
            jobs.add_metric([q.name, state], count)
        due.add_metric([q.name], max(0, q.counts.get("queued", 0) - q.scheduled))
        scheduled.add_metric([q.name], q.scheduled)
        oldest.add_metric([q.name], q.oldest_queued_age_s or 0.0)
        running.add_metric([q.name], q.running)
        if q.limit is not None:
            limit.add_metric([q.name], q.limit)
        paused.add_metric([q.name], 1 if q.paused else 0)
        finished.add_metric([q.name, "completed"], q.completed_last_minute)
        finished.add_metric([q.name, "failed"], q.failed_last_minute)
        if q.run_time_p50_s is not None:
            run_time.add_metric([q.name, "0.5"], q.run_time_p50_s)
        if q.run_time_p95_s is not None:
            run_time.add_metric([q.name, "0.95"], q.run_time_p95_s)
    yield from (jobs, due, scheduled, oldest, running, limit, paused, finished, run_time)
