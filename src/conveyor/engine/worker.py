"""The worker: claims jobs for its free slots, runs them, records how they ended.

One loop (:meth:`Worker._loop`) talks to the store: each pass sends what the worker holds
(finished attempts, progress, freed slots) and claims jobs for the slots that are free,
in one exchange (:mod:`conveyor.engine.exchange`). Jobs run as asyncio tasks, sync
handlers in threads (:mod:`conveyor.engine.running`). Beside the loop run small services,
each a periodic task: the lease keeper (heartbeats, cancel requests, lost leases), the
pruner, the memory guard and the scheduler; the rescue rides on the exchange.

A worker fetches only for free slots (no prefetch that would starve other workers), takes
a new identity at every start, and never trusts its memory about a job's state: every
change it asks for is guarded in the store on state, attempt and owner. What it is doing
(running, memory high, draining, stopping) is one mode (:mod:`conveyor.engine.mode`).

A worker claims only jobs of the kinds in its registry, in every queue it serves: workers
with different kinds (a web box, a video box, a GPU box) share queues, and a job no live
worker can run waits, queued. A job of a kind it does not know that reaches it all the
same (adopted, say) is handed back without charging the attempt.

Jobs also reach it by handoff, on stores that hand off, and by adoption
(:mod:`conveyor.engine.handoffs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from conveyor.engine import services
from conveyor.engine.due import DueQueues
from conveyor.engine.exchange import Exchanger
from conveyor.engine.executor import StopReason
from conveyor.engine.handoffs import Handoffs
from conveyor.engine.kinds import Registry, registry
from conveyor.engine.live import LivePublisher
from conveyor.engine.mode import Mode, WorkerMode
from conveyor.engine.periodic import Scheduler
from conveyor.engine.running import RunningJobs
from conveyor.engine.signals import Exchanged, Idle, Pruned, WorkerSignals
from conveyor.engine.worker_config import WorkerConfig, new_worker_id
from conveyor.logs import get_logger
from conveyor.store.base import (
    CancelRequested,
    JobHandedOff,
    JobsAvailable,
    Notice,
    NoticesLost,
    Store,
    StoreError,
    handoff_queue,
)
from conveyor.store.records import (
    ClaimRequest,
    Job,
    Outcome,
    OutcomeKind,
    RescueResult,
    WorkerInfo,
)

__all__ = ["Worker", "WorkerConfig"]

log = get_logger("worker")


class Worker:
    """Runs jobs of the given queues until stopped.

    ``await worker.run()`` serves until :meth:`stop` (or SIGTERM/SIGINT when
    ``handle_signals`` is set); ``await worker.run(burst=True)`` returns once no due job is
    left and nothing runs, which makes tests deterministic.
    """

    def __init__(
        self,
        store: Store,
        config: WorkerConfig | None = None,
        *,
        kinds: Registry | None = None,
    ) -> None:
        self.store = store
        self.config = c = config or WorkerConfig()
        self.kinds = kinds if kinds is not None else registry
        self.id = new_worker_id()
        self.signals = WorkerSignals()
        """Points a test can await instead of sleeping (:mod:`conveyor.engine.signals`);
        off, and free, unless a test calls ``signals.enable()``."""
        self._mode = WorkerMode()
        self._wake = asyncio.Event()
        handoff = handoff_queue(store) if c.handoff else None
        self._exchanger = Exchanger(store, self.id, self.kinds, c.flush_interval, handoff=handoff)
        # The offers first: every job's end tells them of its slot, directly; they reach
        # the running jobs only on the handoff and adoption paths.
        self._handoffs = Handoffs(
            store,
            self.id,
            self._exchanger,
            self.signals,
            enabled=handoff is not None,
            accept=self._accept,
            runs=lambda job_id, attempt: self._jobs.runs(job_id, attempt),
            running_ids=lambda: self._jobs.ids(),
            wake=self._wake.set,
        )
        self._live = LivePublisher(store, self.id, enabled=c.live_events)
        self._jobs = RunningJobs(
            store,
            self.id,
            self.kinds,
            self._exchanger,
            self.signals,
            slot_freed=self._handoffs.slot_freed,
            wake=self._wake.set,
            lease_s=c.lease_s,
            heartbeat_interval=c.heartbeat_interval,
            slow_job_s=c.slow_job_s,
            live=self._live,
        )
        self._due = DueQueues(c.queues)
        self._next_rescue = float("-inf")
        self._drain: asyncio.Task[None] | None = None

    # -- public ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop fetching; running jobs get ``shutdown_grace`` seconds to finish. A second
        call hands them back at once."""
        self._mode.stop()
        self._wake.set()

    @property
    def running_jobs(self) -> list[Job]:
        return self._jobs.jobs()

    @property
    def max_seen_running(self) -> int:
        """Highest number of jobs this worker ran at once (for operators and tests)."""
        return self._jobs.most

    async def run(self, *, burst: bool = False, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self._jobs.begin()
        kinds = self._jobs.kind_names
        remove_listener = self.store.add_listener(self._on_notice)
        side_tasks: list[asyncio.Task[None]] = []
        try:
            await self._register(kinds)
            side_tasks = self._start_services()
            await self._loop(burst)
        finally:
            remove_listener()
            if self._drain is not None:
                side_tasks.append(self._drain)
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._handoffs.cancel_reads()
            await self._abandon_running()
            with contextlib.suppress(StoreError):
                await self._handoffs.close(self._jobs.abandoned_ids())
            with contextlib.suppress(StoreError):
                await self.store.unregister_worker(self.id)
            self._jobs.close()
            await self._live.close()
            log.info("worker stopped", worker_id=self.id)

    async def _register(self, kinds: tuple[str, ...]) -> None:
        await self.store.register_worker(
            WorkerInfo(
                self.id,
                socket.gethostname(),
                os.getpid(),
                dict(self.config.queues),
                kinds=kinds,
                memory_mb=round(services.rss_mb(), 1),
            ),
            self.config.lease_s,
        )
        log.info("worker started", worker_id=self.id, queues=self.config.queues, kinds=list(kinds))
        if not kinds:
            log.warning(
                "worker has no job kinds registered, so it claims nothing; import the "
                "modules that define them (--import or CONVEYOR_IMPORTS)",
                worker_id=self.id,
            )
        if self.config.max_memory_mb > 0:
            # Before the first claim: the guard's own first pass would come after it.
            await self._check_memory()

    # -- the loop ----------------------------------------------------------------------
    async def _loop(self, burst: bool) -> None:
        mode, exchanger, handoffs = self._mode, self._exchanger, self._handoffs
        while True:
            if mode.stopping and self._drain is None:
                self._drain = asyncio.create_task(self._drain_running())
                handoffs.withdraw()
            now = time.monotonic()
            claim = self._claim_request()
            rescue = now >= self._next_rescue
            due = (
                claim is not None
                or rescue
                or exchanger.due(now, mode.stopping)
                or handoffs.withdraw_due
            )
            if due or handoffs.adopt_due:
                try:
                    if handoffs.adopt_due:
                        await handoffs.adopt()
                    claimed = await self._exchange(claim, rescue, now) if due else False
                except Exception as exc:
                    if await exchanger.recover(exc, mode.hard_stop):
                        handoffs.adopt_due = True
                    if mode.hard_stop.is_set() and exchanger.held:
                        self._log_reports_lost()
                        return
                    continue
                exchanger.passed()
                if claimed:
                    continue
            idle = not self._jobs and not exchanger.holds_outcomes
            if idle and (mode.stopping or (burst and not self._due.maybe)):
                return
            await self._sleep()

    def _log_reports_lost(self) -> None:
        # A hard stop does not wait for the store to come back: the jobs whose reports
        # are lost are rescued when their leases expire.
        log.error(
            "worker stopped with reports it could not record; their jobs return to their "
            "queues when their leases expire",
            worker_id=self.id,
            job_ids=self._exchanger.outcome_job_ids(),
            held=self._exchanger.held,
        )

    def _claim_request(self) -> ClaimRequest | None:
        if self._mode.now is not Mode.RUNNING or not self._due.maybe:
            return None
        slots = self._due.slots(self._jobs.free_slots(self.config.queues))
        if not slots:
            return None
        return ClaimRequest(
            self.id,
            slots,
            self.config.lease_s,
            kinds=self._jobs.kind_names,
        )

    async def _exchange(self, claim: ClaimRequest | None, rescue: bool, began: float) -> bool:
        """One exchange: record what is held, claim for free slots and, when due, rescue
        expired leases; True if jobs were claimed.

        The rescue rides on the exchange instead of running as a service of its own, so an
        idle worker costs one statement per safety poll, not two."""
        notices_before = self._due.notices
        withdraw = self._handoffs.begin_exchange()
        freed = self._exchanger.holds_freed
        try:
            result = await self._exchanger.exchange(
                claim, began=began, rescue=rescue, withdraw=withdraw
            )
        except BaseException:
            self._handoffs.exchange_failed(withdraw)
            raise
        self._handoffs.exchanged(claim, result, withdrew=withdraw, freed=freed)
        if rescue:
            self._next_rescue = time.monotonic() + self.config.rescue_interval
            if result.rescued is not None and result.rescued.total:
                _log_rescue(self.id, result.rescued)
        self._accept(result.claimed)
        if claim is not None:
            self._due.learn(claim, result, notices_before=notices_before)
        if self.signals.on:
            self.signals.exchanged.emit(Exchanged(began, claim, result))
        return bool(result.claimed)

    def _accept(self, jobs: Iterable[Job]) -> None:
        """Start jobs the store gave this worker, or hand back those no slot is free for
        (an enqueue took an offer while a claim was filling the slot) or that came when it
        does not fetch."""
        running = self._mode.now is Mode.RUNNING
        free = self._jobs.free_slots(self.config.queues) if running else {}
        for job in jobs:
            if free.get(job.queue, 0) > 0:
                free[job.queue] -= 1
                self._jobs.start(job)
                continue
            self._exchanger.hold(Outcome(job.id, job.attempt, OutcomeKind.RELEASED, job.queue))
            self._wake.set()

    async def _sleep(self) -> None:
        """Wait for a notice, a finished job, the next due time, the rescue, the safety
        poll or the flush of held reports, whichever comes first."""
        now = time.monotonic()
        rescue_in = max(0.0, self._next_rescue - now)
        poll = timeout = self._due.poll_in(min(self.config.safety_poll_interval, rescue_in))
        flush_at = self._exchanger.wake_at()
        if flush_at is not None:
            timeout = min(timeout, max(0.0, flush_at - now))
        if not self._wake.is_set() and timeout > 0:
            if self.signals.on:
                self._signal_idle()
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own,
            # and this wait ends on every notice and every finished job.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()
        if time.monotonic() - now >= poll:
            self._due.polled()

    def _signal_idle(self) -> None:
        ex = self._exchanger
        self.signals.idle.emit(Idle(len(self._jobs), ex.held, ex.exchanged_at, ex.claimed_at))

    # -- stopping ----------------------------------------------------------------------
    async def _drain_running(self) -> None:
        """Give running jobs the grace period, then hand them back to the queue."""
        if self._jobs:
            log.info(
                "worker stopping: waiting for running jobs",
                worker_id=self.id,
                running=len(self._jobs),
                grace_s=self.config.shutdown_grace,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mode.hard_stop.wait(), self.config.shutdown_grace)
        self._mode.move(Mode.DRAINING, Mode.STOPPING)  # unless a second stop came first
        self._jobs.stop_all(StopReason.SHUTDOWN)
        self._wake.set()

    async def _abandon_running(self) -> None:
        """On an unexpected exit, stop tasks and hand their jobs back if the store allows."""
        if not self._jobs and not self._exchanger.holds_outcomes:
            return
        self._jobs.stop_all(StopReason.SHUTDOWN)
        await self._jobs.ended()
        with contextlib.suppress(StoreError):
            await self._exchange(None, False, time.monotonic())

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received", worker_id=self.id, signal=sig.name)
        self.stop()

    # -- notices -----------------------------------------------------------------------
    def _on_notice(self, notice: Notice) -> None:
        if isinstance(notice, JobsAvailable):
            if self._due.notice(notice.queues):
                self._wake.set()
        elif isinstance(notice, CancelRequested):
            for job_id in notice.job_ids:
                self._jobs.stop(job_id, StopReason.CANCELLED)
        elif isinstance(notice, JobHandedOff):
            if notice.worker_id == self.id:
                self._handoffs.take(notice)
        elif isinstance(notice, NoticesLost):
            self._handoffs.adopt_soon()

    # -- services ----------------------------------------------------------------------
    def _start_services(self) -> list[asyncio.Task[None]]:
        c = self.config
        jobs: list[tuple[str, float, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("lease-keeper", c.cancel_check_interval, self._jobs.keep_leases),
        ]
        if c.retention_s > 0:
            jobs.append(("pruner", c.prune_interval, self._prune))
        if c.max_memory_mb > 0:
            jobs.append(("memory-guard", c.memory_check_interval, self._check_memory))
        scheduler = Scheduler(self.store, self.kinds, c.queues)
        tasks = [
            asyncio.create_task(services.every(interval, fn, name=name, worker_id=self.id))
            for name, interval, fn in jobs
        ]
        tasks.append(asyncio.create_task(scheduler.run(), name="conveyor-scheduler"))
        return tasks

    async def _prune(self) -> None:
        began = time.monotonic()
        deleted = 0
        while True:
            n = await self.store.prune(self.config.retention_s)
            deleted += n
            if n < 1000:
                break
        if deleted:
            log.info("pruned finished jobs", worker_id=self.id, deleted=deleted)
        events = 0
        while (n := await self.store.prune_events(self.config.event_retention_s)) > 0:
            events += n
        if events:
            log.info("pruned events", worker_id=self.id, deleted=events)
        if self.signals.on:
            self.signals.pruned.emit(Pruned(began, deleted))

    async def _check_memory(self) -> None:
        """Stop fetching while the process is above ``max_memory_mb``; start again once it
        is below."""
        rss_mb = services.rss_mb()
        limit = self.config.max_memory_mb
        if rss_mb > limit:
            if self._mode.move(Mode.RUNNING, Mode.MEMORY_HIGH):
                self._handoffs.withdraw()
                self._wake.set()
                log.warning(
                    "memory above limit: not fetching jobs until it falls",
                    worker_id=self.id,
                    rss_mb=round(rss_mb, 1),
                    max_memory_mb=limit,
                )
        elif self._mode.move(Mode.MEMORY_HIGH, Mode.RUNNING):
            log.info(
                "memory below limit again: fetching jobs",
                worker_id=self.id,
                rss_mb=round(rss_mb, 1),
                max_memory_mb=limit,
            )
            self._due.mark_all()
            self._wake.set()


def _log_rescue(worker_id: str, result: RescueResult) -> None:
    log.warning(
        "rescued jobs whose worker stopped renewing its lease",
        worker_id=worker_id,
        requeued=list(result.requeued),
        failed=list(result.failed),
        cancelled=list(result.cancelled),
    )
