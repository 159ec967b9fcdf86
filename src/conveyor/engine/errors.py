"""Errors of the engine.

::

    ConveyorError
    ├── UnknownKind        enqueue of a kind no module registered
    ├── InvalidJob         bad options or a payload the kind's model rejects
    │   └── LimitError     a value outside conveyor.engine.limits (``loc`` says where)
    ├── NotFound           no such thing
    │   ├── JobNotFound    an id that names no job
    │   └── QueueNotFound  a queue with no setting, job or live worker
    ├── JobConflict        cancel or retry of a job whose state does not allow it
    ├── JobFailed          Client.wait: the job failed (its last error)
    │   └── JobCancelled   Client.wait: the job was cancelled
    └── Discard            raised by a handler: fail the job now, no retry
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.store.records import Job


class ConveyorError(Exception):
    """Base of Conveyor's own errors."""


class UnknownKind(ConveyorError):
    """No job kind of that name is registered."""

    def __init__(self, kind: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none (import a module that defines kinds)"
        super().__init__(f"unknown job kind {kind!r}; registered kinds: {names}")
        self.kind = kind


class InvalidJob(ConveyorError):
    """An enqueue whose options or payload are not acceptable; nothing was stored."""


class NotFound(ConveyorError):
    """What was named does not exist (the CLI exits 1, the API answers 404)."""


class JobNotFound(NotFound):
    """No job has that id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class QueueNotFound(NotFound):
    """No queue of that name exists: none has a setting, a job or a live worker serving
    it. Pausing or limiting such a queue would only create a new one, which is most often
    a typo."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"no queue named {queue!r}: it has no jobs, no setting and no live worker "
            "(see `conveyor queues` for the queues there are)"
        )
        self.queue = queue


class JobConflict(ConveyorError):
    """The job's state does not allow the operation (cancel a finished job, retry one
    that has not failed or been cancelled); nothing was changed. The API answers 409."""

    def __init__(self, message: str, job_id: int, state: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        """The job's state (``completed``...) when it was refused."""


class JobFailed(ConveyorError):
    """:meth:`~conveyor.Client.wait` on a job that failed: ``error_type`` and the message
    are its last error's (the handler's exception), ``job`` the job as it ended."""

    def __init__(self, job: Job) -> None:
        last = job.errors[-1] if job.errors else None
        self.job = job
        self.error_type = last.type if last else None
        message = f"{last.type}: {last.message}" if last else "no error recorded"
        super().__init__(
            f"job {job.id} ({job.kind}) {job.state.value} after attempt {job.attempt}: {message}"
        )


class JobCancelled(JobFailed):
    """:meth:`~conveyor.Client.wait` on a job that was cancelled."""

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.args = (f"job {job.id} ({job.kind}) was cancelled",)


class Discard(ConveyorError):
    """Raise from a handler to fail the job at once, whatever attempts are left."""
