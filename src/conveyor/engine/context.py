"""What a handler gets besides its payload."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from conveyor.logs import Logger
from conveyor.store.records import JSON, Job, Progress

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` with what no store can hold replaced by U+FFFD: NUL (PostgreSQL refuses it
    in text and JSON) and lone surrogates (not encodable as UTF-8). Only for diagnostics
    (error messages, tracebacks, progress messages), where a replaced character beats a
    lost report; a job's result is refused instead (see the executor)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
    return text


class JobContext:
    """The running job, as its handler sees it.

    Attributes:
        job: the job row as claimed (read-only).
        id, attempt, max_attempts, kind, queue, tenant_id, payload: from the row;
            ``attempt`` is 1 on the first run.
        log: a logger bound with the worker's id and the job's id, queue, kind, tenant,
            attempt and request id.
        idempotency_key: the same on every attempt of this job; pass it to external
            services so a retried attempt does not repeat a side effect.
    """

    __slots__ = ("_base_log", "_cancelled", "_log", "_loop", "_report", "job")

    def __init__(
        self,
        job: Job,
        log: Logger,
        report: Callable[[Progress], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job = job
        self._base_log = log
        self._log: Logger | None = None
        self._report = report
        self._loop = loop
        # A plain flag, not a threading.Event: threads only read it, and a job's start is
        # on the enqueue-to-start path, where every microsecond of set-up shows.
        self._cancelled = False

    @property
    def log(self) -> Logger:
        """The logger of ``log`` (see the class), bound the first time it is used."""
        if self._log is None:
            job = self.job
            bound = self._base_log.bind(
                job_id=job.id,
                queue=job.queue,
                kind=job.kind,
                tenant=job.tenant_id,
                attempt=job.attempt,
            )
            request_id = job.meta.get("request_id")
            self._log = bound if request_id is None else bound.bind(request_id=request_id)
        return self._log

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def tenant_id(self) -> str:
        return self.job.tenant_id

    @property
    def payload(self) -> JSON:
        return self.job.payload

    @property
    def idempotency_key(self) -> str:
        return f"conveyor-job-{self.job.id}"

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, timed out or lost its lease. Async handlers are
        also interrupted; sync handlers (in threads) should poll this and return."""
        return self._cancelled

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress, 0.0 to 1.0, with an optional message. Safe to call from a sync
        handler's thread; the latest report is written with the next batch."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction {fraction!r} must be between 0.0 and 1.0")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"progress message {message!r} must be a str or None")
            message = storable_text(message)
        report = Progress(self.job.id, self.job.attempt, float(fraction), message)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._report(report)
        else:
            self._loop.call_soon_threadsafe(self._report, report)

    def _mark_cancelled(self) -> None:
        self._cancelled = True
