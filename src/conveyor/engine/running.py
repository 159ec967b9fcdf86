"""The attempts a worker runs: start them as tasks, stop them, keep their leases, and
hold how each ended for the next exchange.

An attempt is the worker's only while it holds the job's lease: the lease keeper stops an
attempt whose lease was lost, and the end of such an attempt records nothing. A sync
handler runs in a thread that cannot be interrupted, so its attempt keeps its slot and
lease until the thread returns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.engine import services
from conveyor.engine.context import JobContext
from conveyor.engine.exchange import Exchanger
from conveyor.engine.executor import StopReason, execute, stopped
from conveyor.engine.kinds import Kind, Registry
from conveyor.engine.live import LivePublisher
from conveyor.engine.signals import WorkerSignals
from conveyor.engine.threads import JobThreads
from conveyor.logs import get_logger, is_enabled
from conveyor.store.base import Store
from conveyor.store.records import Job, Outcome, OutcomeKind, Progress

log = get_logger("worker")


@dataclass(slots=True)
class _Running:
    job: Job
    ctx: JobContext
    task: asyncio.Task[Outcome | None]
    sync: bool
    """Its handler runs in a thread, which cannot be interrupted: once started, the
    attempt ends only when the thread returns, and keeps its slot and lease until then."""
    started: bool = False
    """The handler has started (its task took its first step)."""
    deadline: asyncio.TimerHandle | None = None
    """Stops the attempt at the job's timeout, counted from the handler's start."""


class RunningJobs:
    """The attempts running under one worker."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        kinds: Registry,
        exchanger: Exchanger,
        signals: WorkerSignals,
        *,
        slot_freed: Callable[[str], None],
        wake: Callable[[], None],
        lease_s: float,
        heartbeat_interval: float,
        slow_job_s: float,
        live: LivePublisher,
    ) -> None:
        self.store = store
        self._live = live
        self.worker_id = worker_id
        self.kinds = kinds
        self._exchanger = exchanger
        self._signals = signals
        self._slot_freed = slot_freed
        self._wake = wake
        self._lease_s = lease_s
        self._heartbeat_interval = heartbeat_interval
        self._last_renew = float("-inf")
        self._slow_job_s = slow_job_s
        self._running: dict[int, _Running] = {}
        self._stop_reasons: dict[tuple[int, int], StopReason] = {}
        self._threads = JobThreads()
        self._abandoned: set[JobContext] = set()
        """Attempts whose thread still ran when the worker stopped: nothing is recorded."""
        self.kind_names: tuple[str, ...] = ()
        """The kinds this worker runs: those registered when it started."""
        self._job_log: Any = log
        self._log_info = True
        self._log_debug = True
        self.most = 0
        """Highest number of jobs run at once."""

    def begin(self) -> None:
        """At the worker's start: take the kinds registered now, and resolve the job
        logger once under the configuration of the moment (a context bound to the lazy
        module logger rebuilt it for every job)."""
        self.kind_names = tuple(self.kinds.names())
        self._job_log = log.bind(worker_id=self.worker_id)
        self._log_info = is_enabled(self._job_log, logging.INFO)
        self._log_debug = is_enabled(self._job_log, logging.DEBUG)

    # -- what runs ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._running)

    def __bool__(self) -> bool:
        return bool(self._running)

    def jobs(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    def ids(self) -> list[int]:
        return list(self._running)

    def abandoned_ids(self) -> list[int]:
        return [ctx.job.id for ctx in self._abandoned]

    def runs(self, job_id: int, attempt: int) -> bool:
        running = self._running.get(job_id)
        return running is not None and running.job.attempt == attempt

    def free_slots(self, limits: dict[str, int]) -> dict[str, int]:
        busy: dict[str, int] = {}
        for running in self._running.values():
            busy[running.job.queue] = busy.get(running.job.queue, 0) + 1
        free = {q: limit - busy.get(q, 0) for q, limit in limits.items()}
        return {q: n for q, n in free.items() if n > 0}

    # -- starting ----------------------------------------------------------------------
    def start(self, job: Job) -> None:
        if job.id in self._running:
            # The store handed the job out again: its lease expired and it was rescued
            # before the lease keeper noticed. The attempt still running here is not ours
            # any more; it must stop, and its end must not touch the new attempt's entry.
            self.stop(job.id, StopReason.LEASE_LOST)
        loop = asyncio.get_running_loop()
        ctx = JobContext(job, self._job_log, self._report_progress, loop)
        self._live.started(job)
        kind = self.kinds.find(job.kind)
        task = asyncio.create_task(self._run(ctx, kind), name=f"conveyor-job-{job.id}")
        # The bookkeeping is a done callback, not a finally in _run: a task cancelled
        # before its first step ends without running a line of its coroutine.
        task.add_done_callback(functools.partial(self._done, ctx, time.perf_counter()))
        sync = kind is not None and not kind.is_async
        self._running[job.id] = _Running(job, ctx, task, sync)
        self.most = max(self.most, len(self._running))
        self._signals.job_started.emit(job)

    async def _run(self, ctx: JobContext, kind: Kind | None) -> Outcome | None:
        """Run one attempt: its outcome, or None if its lease was lost."""
        if kind is None:
            # Claims ask only for this worker's kinds, and so do its offers; a job of
            # another kind can still reach it in a handoff from a process of an older
            # release (whose enqueue does not read the offer's kinds), or adopted after
            # such a handoff's notice was lost. Handed back uncharged, it waits for a
            # worker that runs it: this one's claims never take it again.
            ctx.log.warning(
                "job of a kind this worker does not run: handed back, attempt not charged",
                kinds=list(self.kind_names),
            )
            return Outcome(ctx.job.id, ctx.job.attempt, OutcomeKind.RELEASED, ctx.job.queue)
        running = self._running.get(ctx.job.id)
        if running is not None and running.ctx is ctx:
            running.started = True
            # The clock starts with the handler, not at the claim: a sync handler's thread
            # starts at once (JobThreads never makes a call wait).
            if ctx.job.timeout_s is not None:
                running.deadline = asyncio.get_running_loop().call_later(
                    ctx.job.timeout_s, self._time_out, ctx
                )
        return await execute(kind, ctx, self._threads, self._stop_reasons)

    def _done(self, ctx: JobContext, started: float, task: asyncio.Task[Outcome | None]) -> None:
        job = ctx.job
        reason = self._stop_reasons.pop((job.id, job.attempt), None)
        current = self._running.get(job.id)
        if current is not None and current.ctx is ctx:
            del self._running[job.id]
            if current.deadline is not None:
                current.deadline.cancel()
            self._slot_freed(job.queue)
        elif self._abandoned and ctx in self._abandoned:
            # Its thread returned after the worker let go of it: the job is not ours.
            self._abandoned.discard(ctx)
            return
        self._wake()
        if task.cancelled():
            if reason is None:
                return  # not stopped by this worker (the loop is closing): nothing to say
            # Stopped before the handler started: the same rules apply.
            outcome = stopped(job, reason, self.kinds.find(job.kind))
        elif (error := task.exception()) is not None:
            # Only a BaseException gets here (execute turns every Exception into an
            # outcome). Nothing is recorded: the lease runs out and the job is rescued.
            ctx.log.error("job attempt crashed", error=f"{type(error).__name__}: {error}")
            return
        else:
            outcome = task.result()
        if outcome is None:
            ctx.log.warning("job stopped: its lease was lost (rescued by another worker)")
            return
        # A progress report still held here goes with the outcome: it is the last one.
        self._exchanger.hold(outcome)
        took = time.perf_counter() - started
        if outcome.kind is not OutcomeKind.COMPLETED:
            if self._log_info or outcome.kind in _WARNED:
                _log_outcome(ctx, outcome, took)
        elif self._log_debug or (self._log_info and took >= self._slow_job_s):
            _log_completed(ctx, took, slow=took >= self._slow_job_s)

    def _report_progress(self, progress: Progress) -> None:
        running = self._running.get(progress.job_id)
        if running is not None and running.job.attempt == progress.attempt:
            self._exchanger.hold_progress(progress)
            self._live.progress(running.job, progress)
            self._wake()

    # -- stopping ----------------------------------------------------------------------
    def _time_out(self, ctx: JobContext) -> None:
        current = self._running.get(ctx.job.id)
        if current is not None and current.ctx is ctx:
            self.stop(ctx.job.id, StopReason.TIMEOUT)

    def stop(self, job_id: int, reason: StopReason) -> None:
        running = self._running.get(job_id)
        if running is None or running.task.done():
            return
        key = (job_id, running.job.attempt)
        if not (running.sync and running.started):
            self._stop_reasons[key] = reason
            running.ctx._mark_cancelled()
            running.task.cancel()
            return
        # A thread cannot be interrupted. The attempt keeps its slot and its lease until
        # the thread returns, so that its retry (or the next job) never runs beside it.
        if self._stop_reasons.get(key) is StopReason.LEASE_LOST:
            return  # not ours any more, whatever else happens
        self._stop_reasons[key] = reason
        running.ctx._mark_cancelled()
        if reason is StopReason.TIMEOUT:
            running.ctx.log.warning(
                "job past its timeout: its sync handler's thread cannot be interrupted and "
                "still runs; the job keeps its slot and lease until it returns "
                "(ctx.cancelled is set for it to poll)",
                timeout_s=running.job.timeout_s,
            )
        elif reason is StopReason.SHUTDOWN:
            self._abandon(running)

    def stop_all(self, reason: StopReason) -> None:
        for job_id in list(self._running):
            self.stop(job_id, reason)

    def _abandon(self, running: _Running) -> None:
        """Let go of a sync attempt whose thread still runs as the worker exits. It is not
        handed back: it would run again while this thread runs."""
        job = running.job
        self._stop_reasons[(job.id, job.attempt)] = StopReason.ABANDONED
        del self._running[job.id]
        if running.deadline is not None:
            running.deadline.cancel()
        self._abandoned.add(running.ctx)
        running.ctx.log.warning(
            "worker stopping while a sync handler's thread still runs: the job is not "
            "handed back; its lease expires and it will be rescued",
            lease_s=self._lease_s,
        )
        self._wake()

    async def ended(self) -> None:
        """Until every task stopped ends."""
        await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- leases ------------------------------------------------------------------------
    async def keep_leases(self) -> None:
        """One pass of the lease keeper: ask which attempts still hold their lease and
        which have a cancel request (renewing the leases every ``heartbeat_interval``),
        and stop those that lost it or were cancelled."""
        now = time.monotonic()
        renew = now - self._last_renew >= self._heartbeat_interval
        if not self._running and not renew:
            return
        jobs = {job_id: r.job.attempt for job_id, r in self._running.items()}
        # The RSS rides on the renewal (every heartbeat_interval, not every check) for
        # GET /health: one /proc read.
        memory = round(services.rss_mb(), 1) if renew else None
        status = await self.store.heartbeat(self.worker_id, jobs, self._lease_s, renew, memory)
        if renew:
            self._last_renew = now
        for job_id, attempt in jobs.items():
            if not self.runs(job_id, attempt):
                continue  # ended, or claimed again as a new attempt, while we asked
            if job_id not in status.held:
                self.stop(job_id, StopReason.LEASE_LOST)
            elif job_id in status.cancel_requested:
                self.stop(job_id, StopReason.CANCELLED)


_WARNED = frozenset({OutcomeKind.RETRY, OutcomeKind.FAILED})
"""Outcomes logged above INFO."""


def _log_completed(ctx: JobContext, seconds: float, *, slow: bool) -> None:
    (ctx.log.info if slow else ctx.log.debug)("job completed", took_s=round(seconds, 4))


def _log_outcome(ctx: JobContext, outcome: Outcome, seconds: float) -> None:
    """A job's end other than completion (see _log_completed)."""
    took = round(seconds, 4)
    if outcome.kind is OutcomeKind.RETRY:
        error = outcome.error
        ctx.log.warning(
            "job attempt failed; will retry",
            took_s=took,
            error_type=error.type if error else None,
            error=error.message if error else None,
            retry_in_s=round(outcome.retry_in_s, 3),
        )
    elif outcome.kind is OutcomeKind.FAILED:
        error = outcome.error
        ctx.log.error(
            "job failed",
            took_s=took,
            error_type=error.type if error else None,
            error=error.message if error else None,
        )
    elif outcome.kind is OutcomeKind.CANCELLED:
        ctx.log.info("job cancelled while running", took_s=took)
    else:
        ctx.log.info("job handed back to the queue, attempt not charged", took_s=took)
