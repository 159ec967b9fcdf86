"""How a worker behaves: :class:`WorkerConfig`, and the queue specs it is built from."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from conveyor.config import Settings
from conveyor.engine.limits import MAX_CONCURRENCY, check_queue_name, excerpt


def parse_queues(spec: list[str], concurrency: int) -> dict[str, int]:
    """``["video:2", "qa"]`` with a default of 10 -> ``{"video": 2, "qa": 10}``."""
    queues: dict[str, int] = {}
    for item in spec:
        name, _, limit = item.partition(":")
        name = check_queue_name(name.strip())
        if limit:
            digits = limit.strip()
            if not (digits.isdigit() and len(digits) <= 6 and 1 <= int(digits) <= MAX_CONCURRENCY):
                raise ValueError(
                    f"queue {excerpt(item)}: the limit after ':' must be an integer from 1 to "
                    f"{MAX_CONCURRENCY}"
                )
            queues[name] = int(digits)
        else:
            queues[name] = concurrency
    if not queues:
        raise ValueError("a worker needs at least one queue")
    return queues


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a worker behaves. :meth:`from_settings` reads the ``CONVEYOR_*`` settings."""

    queues: dict[str, int] = field(default_factory=lambda: {"default": 100})
    """Concurrency limit per queue served."""
    lease_s: float = 30.0
    heartbeat_interval: float = 10.0
    cancel_check_interval: float = 0.5
    rescue_interval: float = 5.0
    shutdown_grace: float = 30.0
    max_memory_mb: float = 1600.0
    memory_check_interval: float = 1.0
    retention_s: float = 7 * 24 * 3600.0
    prune_interval: float = 60.0
    flush_interval: float = 0.002
    slow_job_s: float = 1.0
    """A completed job that ran at least this long is logged at INFO, a quicker one at
    DEBUG: a line for every job cost more than a no-op job's own work in the worker."""
    safety_poll_interval: float = 5.0
    """Claim at least this often even without a notice (a missed notice costs no more)."""
    handoff: bool = True
    """Offer free slots for handoff (stores that can hand off: PostgreSQL with LISTEN)."""
    live_events: bool = True
    """Publish ``job.started`` and ``job.progress`` to the listening stores (the streams)."""
    event_retention_s: float = 7 * 24 * 3600.0
    """Events older than this are pruned with the finished jobs."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval >= self.lease_s:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be below lease_s "
                f"({self.lease_s}), or leases expire between heartbeats"
            )
        if not self.queues or any(limit < 1 for limit in self.queues.values()):
            raise ValueError(f"queues {self.queues!r}: give at least one queue, limits >= 1")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        queues: list[str] | None = None,
        concurrency: int | None = None,
    ) -> WorkerConfig:
        return cls(
            queues=parse_queues(queues or settings.queues, concurrency or settings.concurrency),
            lease_s=settings.lease_seconds,
            heartbeat_interval=settings.heartbeat_interval,
            cancel_check_interval=settings.cancel_check_interval,
            rescue_interval=settings.rescue_interval,
            shutdown_grace=settings.shutdown_grace,
            max_memory_mb=settings.max_memory_mb,
            memory_check_interval=settings.memory_check_interval,
            retention_s=settings.retention_seconds,
            prune_interval=settings.prune_interval,
            flush_interval=settings.flush_interval,
            slow_job_s=settings.slow_job_seconds,
            safety_poll_interval=settings.poll_interval,
            handoff=settings.handoff,
            live_events=settings.events,
            event_retention_s=settings.event_retention_seconds,
        )


def new_worker_id() -> str:
    """A fresh identity per process start, so a restarted worker never inherits the
    leases (and late completions) of its previous life."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
