"""Conveyor: durable asynchronous jobs for SaaS backends, on SQLite or PostgreSQL.

The public API is what this module exports; everything else is internal.
"""

from conveyor.config import Settings
from conveyor.engine.client import Client
from conveyor.engine.context import JobContext
from conveyor.engine.errors import (
    ConveyorError,
    Discard,
    InvalidJob,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobNotFound,
    QueueNotFound,
    UnknownKind,
)
from conveyor.engine.events import StreamOverflow
from conveyor.engine.kinds import Registry, job, registry
from conveyor.engine.periodic import periodic
from conveyor.engine.retry import Backoff
from conveyor.engine.worker import Worker, WorkerConfig
from conveyor.store.records import Event, EventType, Job, JobState, TenantLimits

__all__ = [
    "Backoff",
    "Client",
    "ConveyorError",
    "Discard",
    "Event",
    "EventType",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobConflict",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "QueueNotFound",
    "Registry",
    "Settings",
    "StreamOverflow",
    "TenantLimits",
    "UnknownKind",
    "Worker",
    "WorkerConfig",
    "job",
    "periodic",
    "registry",
]
