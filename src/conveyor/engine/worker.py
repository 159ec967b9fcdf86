"""The worker: claims jobs for its free slots, runs them, records how they ended.

One loop (:meth:`Worker._exchange_loop`) talks to the store: each pass records the attempts
that finished since the last one and claims jobs for the slots that are free, in one
transaction. Jobs run as asyncio tasks; sync handlers run in threads. Beside the
loop run small services, each a periodic task: the lease keeper (heartbeats, cancel
requests, lost leases), the rescuer, the pruner and the memory guard.

A worker fetches only for free slots (no prefetch that would starve other workers), takes
a new identity at every start, and never trusts its memory about a job's state: every
change it asks for is guarded in the store on state, attempt and owner.

A worker claims only jobs of the kinds in its registry, in every queue it serves: workers
with different kinds (a web box, a video box, a GPU box) share queues, and a job no live
worker can run waits, queued. A job of a kind it does not know that reaches it all the
same (adopted, say) is handed back without charging the attempt.

Handoff (PostgreSQL): a claim that comes back short offers the slots it left free, and an
enqueue may then hand its job straight to this worker in a notice, already running under
it. The worker keeps its offers in step (slots its jobs free are added; all are taken
back when it stops fetching), hands back a job it has no slot for, and after notices were
lost adopts the jobs running under it that it never heard of.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.config import Settings
from conveyor.engine import services
from conveyor.engine.context import JobContext, storable_text
from conveyor.engine.executor import StopReason, execute, failure, stopped
from conveyor.engine.kinds import Kind, Registry, registry
from conveyor.engine.limits import MAX_CONCURRENCY, check_queue_name, excerpt
from conveyor.engine.periodic import Scheduler
from conveyor.engine.threads import JobThreads
from conveyor.logs import get_logger, is_enabled
from conveyor.store.base import (
    CancelRequested,
    DataRejected,
    JobHandedOff,
    JobsAvailable,
    Notice,
    NoticesLost,
    Offers,
    Store,
    StoreError,
    handoff_queue,
)
from conveyor.store.records import (
    ClaimRequest,
    ErrorEntry,
    Job,
    JobState,
    Outcome,
    OutcomeKind,
    Progress,
    RescueResult,
    SettleResult,
    WorkerInfo,
)

log = get_logger("worker")

_ADOPTED_MEMORY_S = 60.0
"""How long an adopted attempt is remembered, so that its late handoff notice (if it
comes at all) does not start it twice."""


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
        )


def new_worker_id() -> str:
    """A fresh identity per process start, so a restarted worker never inherits the
    leases (and late completions) of its previous life."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


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
        self.config = config or WorkerConfig()
        self._handoff = handoff_queue(store) if self.config.handoff else None
        """The store, when this worker offers its free slots for handoff."""
        self.kinds = kinds if kinds is not None else registry
        self._kind_names = tuple(self.kinds.names())
        """What its claims ask for: the kinds registered when it starts."""
        self.id = new_worker_id()
        self._job_log: Any = log
        self._log_info = True
        self._log_debug = True
        self._running: dict[int, _Running] = {}
        self._outcomes: list[Outcome] = []
        self._progress: dict[int, Progress] = {}
        self._stop_reasons: dict[tuple[int, int], StopReason] = {}
        self._wake = asyncio.Event()
        self._maybe_due: set[str] = set(self.config.queues)
        """Queues that may hold due jobs; a claim that comes back short clears its queue,
        a notice, a due time or the safety poll sets it again."""
        self._notices = 0
        """Counts the notices that marked queues as maybe due: an exchange's "drained"
        verdict must not erase a notice that arrived while it was in flight."""
        self._next_due: float | None = None
        self._flush_at = 0.0
        """When the reports held in _outcomes and _progress must go (monotonic)."""
        self._last_renew = float("-inf")
        self._next_rescue = float("-inf")
        self._shutdown_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._memory_high = False
        self._offered: set[str] = set()
        """Queues in which the store holds an offer of this worker's free slots."""
        self._freed: dict[str, int] = {}
        """Slots freed in offered queues since the last exchange: added to the offers."""
        self._withdraw_due = False
        """Take every offer back at the next exchange (stopping, memory high)."""
        self._adopt_due = False
        self._adopting: set[tuple[int, int]] | None = None
        """While an adoption is in flight: the attempts started meanwhile."""
        self._adopted: dict[tuple[int, int], float] = {}
        """Attempts adopted lately (monotonic time): their handoff notice may still come."""
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._threads = JobThreads()
        self._abandoned: set[JobContext] = set()
        """Attempts whose thread still ran when the worker stopped: nothing is recorded."""
        self.max_seen_running = 0
        """Highest number of jobs this worker ran at once (for operators and tests)."""

    # -- public ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop fetching; running jobs get ``shutdown_grace`` seconds to finish. A second
        call hands them back at once."""
        if self._stopping.is_set():
            self._hard_stop.set()
        self._stopping.set()
        self._wake.set()

    @property
    def running_jobs(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    async def run(self, *, burst: bool = False, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self._kind_names = tuple(self.kinds.names())
        remove_listener = self.store.add_listener(self._on_notice)
        await self.store.register_worker(
            WorkerInfo(
                self.id,
                socket.gethostname(),
                os.getpid(),
                dict(self.config.queues),
                kinds=self._kind_names,
                memory_mb=round(services.rss_mb(), 1),
            ),
            self.config.lease_s,
        )
        log.info(
            "worker started",
            worker_id=self.id,
            queues=self.config.queues,
            kinds=list(self._kind_names),
        )
        if not self._kind_names:
            log.warning(
                "worker has no job kinds registered, so it claims nothing; import the "
                "modules that define them (--import or CONVEYOR_IMPORTS)",
                worker_id=self.id,
            )
        # Resolved once, under the configuration of the moment: a job's context bound to
        # the lazy module logger rebuilt the logger from the configuration for every job
        # (4.9 against 1.4 us a bind), and a completion logged below the level still paid
        # for that bind.
        self._job_log = log.bind(worker_id=self.id)
        self._log_info = is_enabled(self._job_log, logging.INFO)
        self._log_debug = is_enabled(self._job_log, logging.DEBUG)
        if self.config.max_memory_mb > 0:
            # Before the first claim: the guard's own first pass would come after it.
            await self._check_memory()
        side_tasks = self._start_services()
        try:
            await self._exchange_loop(burst)
        finally:
            remove_listener()
            if self._shutdown_task is not None:
                side_tasks.append(self._shutdown_task)
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            for task in self._side_tasks:
                task.cancel()
            await self._abandon_running()
            with contextlib.suppress(StoreError):
                await self._hand_back_offers()
            with contextlib.suppress(StoreError):
                await self.store.unregister_worker(self.id)
            self._threads.shutdown(wait=False, cancel_futures=True)
            log.info("worker stopped", worker_id=self.id)

    # -- the exchange loop -------------------------------------------------------------
    async def _exchange_loop(self, burst: bool) -> None:
        failures = 0
        while True:
            if self._stopping.is_set() and self._shutdown_task is None:
                self._shutdown_task = asyncio.create_task(self._drain_running())
                self._withdraw_due = True
            claim = self._claim_request()
            rescue = time.monotonic() >= self._next_rescue
            due = claim is not None or rescue or self._reports_due() or self._withdraw_due
            if due or self._adopt_due:
                try:
                    if self._adopt_due:
                        await self._adopt()
                    claimed = await self._exchange(claim, rescue) if due else False
                except DataRejected as exc:
                    # The statement failed whole: nothing was recorded or claimed.
                    if self._outcomes or self._progress:
                        try:
                            await self._settle_apart(exc)
                        except StoreError as again:
                            failures += 1
                            await self._wait_after_failure(again, failures)
                        continue
                    failures += 1
                    await self._wait_after_failure(exc, failures)
                    continue
                except StoreError as exc:
                    # A claim whose answer was lost left jobs running under this worker.
                    self._adopt_due = True
                    failures += 1
                    await self._wait_after_failure(exc, failures)
                    continue
                except Exception:
                    # A bug, not an outage: shown every time, but the jobs running here
                    # must not die with the loop.
                    log.exception("worker exchange failed unexpectedly", worker_id=self.id)
                    self._adopt_due = True
                    failures += 1
                    await self._backoff(failures)
                    continue
                failures = 0
                if claimed:
                    continue
            if self._stopping.is_set() and not self._running and not self._outcomes:
                return
            if burst and not self._running and not self._outcomes and not self._maybe_due:
                return
            await self._sleep()

    def _reports_due(self) -> bool:
        """Whether the finished attempts and progress held here must go now: once the
        first of them has waited ``flush_interval``, or at once when stopping. Until then
        they wait for the next claim to carry them: each exchange is a round trip and a
        commit, and settling apart from the claims cost nearly two exchanges per job."""
        if not self._holding():
            return False
        return self._stopping.is_set() or time.monotonic() >= self._flush_at

    def _holding(self) -> bool:
        return bool(self._outcomes or self._progress or self._freed)

    def _hold_reports(self) -> None:
        """Start the flush clock, if this is the first report held since the last
        exchange."""
        if not self._holding():
            self._flush_at = time.monotonic() + self.config.flush_interval

    def _claim_request(self) -> ClaimRequest | None:
        if self._stopping.is_set() or self._memory_high or not self._maybe_due:
            return None
        slots = {q: n for q, n in self._free_slots().items() if q in self._maybe_due}
        if not slots:
            return None
        return ClaimRequest(self.id, slots, self.config.lease_s, kinds=self._kind_names)

    def _free_slots(self) -> dict[str, int]:
        busy: dict[str, int] = {}
        for running in self._running.values():
            busy[running.job.queue] = busy.get(running.job.queue, 0) + 1
        free = {q: limit - busy.get(q, 0) for q, limit in self.config.queues.items()}
        return {q: n for q, n in free.items() if n > 0}

    async def _exchange(self, claim: ClaimRequest | None, rescue: bool = False) -> bool:
        """Record finished attempts, claim for free slots and, when due, rescue expired
        leases; True if jobs were claimed.

        The rescue rides on the exchange instead of running as a service of its own, so an
        idle worker costs one statement per safety poll, not two."""
        notices_before = self._notices
        outcomes, self._outcomes = self._outcomes, []
        progress = list(self._progress.values())
        self._progress.clear()
        freed, self._freed = self._freed, {}
        withdraw, self._withdraw_due = self._withdraw_due, False
        if withdraw:
            self._offered.clear()
            freed = {}
        try:
            if self._handoff is None:
                result = await self.store.settle_and_claim(
                    outcomes, progress, self.id, claim, rescue=rescue
                )
            else:
                result = await self._handoff.settle_and_claim(
                    outcomes,
                    progress,
                    self.id,
                    claim,
                    rescue=rescue,
                    offers=Offers(freed, withdraw),
                )
        except BaseException:
            # Nothing was recorded: keep the reports for the next pass.
            self._outcomes[:0] = outcomes
            for p in progress:
                self._progress.setdefault(p.job_id, p)
            for queue, n in freed.items():
                self._freed[queue] = self._freed.get(queue, 0) + n
            self._withdraw_due = self._withdraw_due or withdraw
            raise
        if claim is not None:
            self._offered.difference_update(claim.slots)
            self._offered.update(result.offered)
        self._check_applied(outcomes, result)
        if rescue:
            self._next_rescue = time.monotonic() + self.config.rescue_interval
            if result.rescued is not None and result.rescued.total:
                _log_rescue(self.id, result.rescued)
        self._accept(result.claimed)
        if claim is not None:
            self._learn_from_claim(claim, result, drained_valid=self._notices == notices_before)
        return bool(result.claimed)

    def _check_applied(self, outcomes: Sequence[Outcome], result: SettleResult) -> None:
        for outcome, applied in zip(outcomes, result.applied, strict=True):
            if not applied:
                log.warning(
                    "job outcome not recorded: the job is no longer running under this "
                    "worker (rescued or cancelled meanwhile)",
                    job_id=outcome.job_id,
                    queue=outcome.queue,
                    attempt=outcome.attempt,
                    outcome=outcome.kind.value,
                )

    def _learn_from_claim(
        self, claim: ClaimRequest, result: SettleResult, *, drained_valid: bool
    ) -> None:
        """Mark the queues a claim drained, unless a notice came in meanwhile, and keep
        the earliest time a scheduled job falls due."""
        if drained_valid:
            got: dict[str, int] = {}
            for job in result.claimed:
                got[job.queue] = got.get(job.queue, 0) + 1
            for queue, wanted in claim.slots.items():
                if got.get(queue, 0) < wanted:
                    self._maybe_due.discard(queue)
        # The answer covers only the queues of this claim: keep an earlier due time learnt
        # for another queue. A stale one costs one empty claim, after which _sleep forgets
        # it; dropping a live one would leave its job waiting for the safety poll.
        upcoming = result.next_run_at
        if upcoming is not None and (self._next_due is None or upcoming < self._next_due):
            self._next_due = upcoming

    async def _sleep(self) -> None:
        """Wait for a notice, a finished job, the next due time, the rescue, the safety
        poll or the flush of held reports, whichever comes first."""
        now = time.monotonic()
        timeout = min(self.config.safety_poll_interval, max(0.0, self._next_rescue - now))
        poll = timeout
        if self._next_due is not None:
            poll = timeout = min(timeout, max(0.0, self._next_due - time.time()))
        if self._outcomes or self._progress:
            timeout = min(timeout, max(0.0, self._flush_at - now))
        if not self._wake.is_set() and timeout > 0:
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own,
            # and this wait ends on every notice and every finished job.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()
        if time.monotonic() - now >= poll:
            self._maybe_due.update(self.config.queues)
            self._next_due = None

    async def _wait_after_failure(self, exc: StoreError, failures: int) -> None:
        log.error(
            "store unavailable, retrying",
            worker_id=self.id,
            error=str(exc),
            retry_in_s=_backoff_delay(failures),
        )
        await self._backoff(failures)

    async def _backoff(self, failures: int) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hard_stop.wait(), _backoff_delay(failures))

    async def _settle_apart(self, refused: DataRejected) -> None:
        """Record the held reports one at a time, after the database refused a batch of
        them: the good ones are recorded, a refused outcome becomes a failed attempt that
        quotes the database, and a refused progress report is dropped. Rare, so simple: one
        statement per report. A StoreError (the connection lost) keeps what is left for
        the next pass."""
        log.warning(
            "the database refused a batch of job reports; recording them one by one",
            worker_id=self.id,
            error=str(refused),
        )
        outcomes, self._outcomes = self._outcomes, []
        progress = list(self._progress.values())
        self._progress.clear()
        for i, outcome in enumerate(outcomes):
            try:
                await self._settle_one(outcome)
            except StoreError:
                self._outcomes[:0] = outcomes[i:]
                for p in progress:
                    self._progress.setdefault(p.job_id, p)
                raise
        for i, report in enumerate(progress):
            try:
                await self.store.settle_and_claim((), (report,), self.id, None)
            except DataRejected as exc:
                log.warning(
                    "progress report dropped: the database refused it",
                    worker_id=self.id,
                    job_id=report.job_id,
                    attempt=report.attempt,
                    error=str(exc),
                )
            except StoreError:
                for p in progress[i:]:
                    self._progress.setdefault(p.job_id, p)
                raise

    async def _settle_one(self, outcome: Outcome) -> None:
        candidate: Outcome | None = outcome
        while candidate is not None:
            try:
                result = await self.store.settle_and_claim((candidate,), (), self.id, None)
            except DataRejected as exc:
                candidate = await self._instead_of_refused(outcome, candidate, exc)
                continue
            self._check_applied((candidate,), result)
            return

    async def _instead_of_refused(
        self, outcome: Outcome, refused: Outcome, exc: DataRejected
    ) -> Outcome | None:
        """What to record after the database refused ``refused`` (``outcome`` itself, or a
        failure recorded in its place); None: nothing more to try."""
        if refused is outcome:
            return await self._refused(outcome, exc)
        if refused.kind is OutcomeKind.RETRY:
            # The retry itself was refused (e.g. a backoff past the database's dates).
            return dataclasses.replace(refused, kind=OutcomeKind.FAILED)
        # The lease runs out and the job is rescued.
        log.error(
            "job outcome dropped: the database refused it and its failure too",
            worker_id=self.id,
            job_id=outcome.job_id,
            queue=outcome.queue,
            attempt=outcome.attempt,
            error=str(exc),
        )
        return None

    async def _refused(self, outcome: Outcome, exc: DataRejected) -> Outcome | None:
        """The failed attempt to record in place of an outcome the database refused, or
        None if the job is no longer this worker's to report on."""
        job = await self.store.get_job(outcome.job_id)
        if (
            job is None
            or job.state is not JobState.RUNNING
            or job.attempt != outcome.attempt
            or job.locked_by != self.id
        ):
            return None
        error = ErrorEntry(
            at=time.time(),
            attempt=job.attempt,
            type="DataRejected",
            message=storable_text(
                f"the database refused to record this attempt's {outcome.kind.value} outcome: {exc}"
            ),
        )
        # Another attempt may return a result the database takes; a refused failure would
        # only be refused again.
        retryable = outcome.kind is OutcomeKind.COMPLETED
        replacement = failure(self.kinds.find(job.kind), job, error, retryable=retryable)
        log.error(
            "job outcome refused by the database; recorded as a failed attempt",
            worker_id=self.id,
            job_id=job.id,
            queue=job.queue,
            attempt=job.attempt,
            outcome=outcome.kind.value,
            recorded=replacement.kind.value,
            error=str(exc),
        )
        return replacement

    # -- running jobs ------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        if self._adopting is not None:
            self._adopting.add((job.id, job.attempt))
        if job.id in self._running:
            # The store handed the job out again: its lease expired and it was rescued
            # before the lease keeper noticed. The attempt still running here is not ours
            # any more; it must stop, and its end must not touch the new attempt's entry.
            self._stop_job(job.id, StopReason.LEASE_LOST)
        loop = asyncio.get_running_loop()
        ctx = JobContext(job, self._job_log, self._report_progress, loop)
        kind = self.kinds.find(job.kind)
        task = asyncio.create_task(self._run_job(ctx, kind), name=f"conveyor-job-{job.id}")
        # The bookkeeping is a done callback, not a finally in _run_job: a task cancelled
        # before its first step ends without running a line of its coroutine.
        task.add_done_callback(functools.partial(self._job_done, ctx, time.perf_counter()))
        sync = kind is not None and not kind.is_async
        self._running[job.id] = _Running(job, ctx, task, sync)
        self.max_seen_running = max(self.max_seen_running, len(self._running))

    async def _run_job(self, ctx: JobContext, kind: Kind | None) -> Outcome | None:
        """Run one attempt: its outcome, or None if its lease was lost."""
        kind = self.kinds.find(ctx.job.kind)
        if kind is None:
            # Claims ask only for this worker's kinds, and so do its offers; a job of
            # another kind can still reach it in a handoff from a process of an older
            # release (whose enqueue does not read the offer's kinds), or adopted after
            # such a handoff's notice was lost. Handed back uncharged, it waits for a
            # worker that runs it: this one's claims never take it again.
            ctx.log.warning(
                "job of a kind this worker does not run: handed back, attempt not charged",
                kinds=list(self._kind_names),
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

    def _job_done(
        self, ctx: JobContext, started: float, task: asyncio.Task[Outcome | None]
    ) -> None:
        job = ctx.job
        reason = self._stop_reasons.pop((job.id, job.attempt), None)
        current = self._running.get(job.id)
        if current is not None and current.ctx is ctx:
            del self._running[job.id]
            if current.deadline is not None:
                current.deadline.cancel()
            if job.queue in self._offered and not self._withdraw_due:
                self._hold_reports()
                self._freed[job.queue] = self._freed.get(job.queue, 0) + 1
        elif self._abandoned and ctx in self._abandoned:
            # Its thread returned after the worker let go of it: the job is not ours.
            self._abandoned.discard(ctx)
            return
        self._wake.set()
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
        self._hold_reports()
        # A progress report still held here goes with the outcome: it is the last one.
        self._outcomes.append(outcome)
        took = time.perf_counter() - started
        if outcome.kind is not OutcomeKind.COMPLETED:
            if self._log_info or outcome.kind in _WARNED:
                _log_outcome(ctx, outcome, took)
        elif self._log_debug or (self._log_info and took >= self.config.slow_job_s):
            _log_completed(ctx, took, slow=took >= self.config.slow_job_s)

    def _report_progress(self, progress: Progress) -> None:
        running = self._running.get(progress.job_id)
        if running is not None and running.job.attempt == progress.attempt:
            self._hold_reports()
            self._progress[progress.job_id] = progress
            self._wake.set()

    def _time_out(self, ctx: JobContext) -> None:
        current = self._running.get(ctx.job.id)
        if current is not None and current.ctx is ctx:
            self._stop_job(ctx.job.id, StopReason.TIMEOUT)

    def _stop_job(self, job_id: int, reason: StopReason) -> None:
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
            lease_s=self.config.lease_s,
        )
        self._wake.set()

    async def _drain_running(self) -> None:
        """Give running jobs the grace period, then hand them back to the queue."""
        if self._running:
            log.info(
                "worker stopping: waiting for running jobs",
                worker_id=self.id,
                running=len(self._running),
                grace_s=self.config.shutdown_grace,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hard_stop.wait(), self.config.shutdown_grace)
        for job_id in list(self._running):
            self._stop_job(job_id, StopReason.SHUTDOWN)
        self._wake.set()

    async def _abandon_running(self) -> None:
        """On an unexpected exit, stop tasks and hand their jobs back if the store allows."""
        if not self._running and not self._outcomes:
            return
        for job_id in list(self._running):
            self._stop_job(job_id, StopReason.SHUTDOWN)
        await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self._exchange(None)

    # -- notices and services ------------------------------------------------------------
    def _on_notice(self, notice: Notice) -> None:
        if isinstance(notice, JobsAvailable):
            queues = set(self.config.queues)
            if notice.queues is not None:
                queues &= notice.queues
            if queues:
                self._maybe_due |= queues
                self._notices += 1
                self._wake.set()
        elif isinstance(notice, CancelRequested):
            for job_id in notice.job_ids:
                self._stop_job(job_id, StopReason.CANCELLED)
        elif isinstance(notice, JobHandedOff):
            if notice.worker_id == self.id:
                self._take_handoff(notice)
        elif isinstance(notice, NoticesLost):
            self._adopt_due = True
            self._wake.set()

    # -- handoff -------------------------------------------------------------------------
    def _runs(self, job_id: int, attempt: int) -> bool:
        running = self._running.get(job_id)
        return running is not None and running.job.attempt == attempt

    def _take_handoff(self, notice: JobHandedOff) -> None:
        if (notice.job_id, notice.attempt) in self._adopted:
            return  # adopted before its notice came
        if self._runs(notice.job_id, notice.attempt):
            return
        if notice.job is not None:
            self._accept((notice.job,))
            return
        task = asyncio.create_task(self._fetch_handoff(notice))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _fetch_handoff(self, notice: JobHandedOff) -> None:
        """A job too large for its notice: read it, and take it if it is still ours."""
        try:
            job = await self.store.get_job(notice.job_id)
        except StoreError as exc:
            log.warning(
                "could not read a job handed to this worker; it will be adopted",
                worker_id=self.id,
                job_id=notice.job_id,
                error=str(exc),
            )
            self._adopt_due = True
            return
        if (
            job is not None
            and job.state is JobState.RUNNING
            and job.locked_by == self.id
            and job.attempt == notice.attempt
        ):
            # Checked again: the attempt may have been adopted (and even finished) while
            # the read was in flight.
            self._take_handoff(dataclasses.replace(notice, job=job))

    def _accept(self, jobs: Iterable[Job]) -> None:
        """Start jobs the store gave this worker, or hand back those no slot is free for
        (an enqueue took an offer while a claim was filling the slot) or that came after
        the worker stopped fetching."""
        free = {} if self._stopping.is_set() or self._memory_high else self._free_slots()
        for job in jobs:
            if free.get(job.queue, 0) > 0:
                free[job.queue] -= 1
                self._start(job)
                continue
            self._hold_reports()
            self._outcomes.append(Outcome(job.id, job.attempt, OutcomeKind.RELEASED, job.queue))
            self._wake.set()

    async def _adopt(self) -> None:
        """Take up the jobs running under this worker that it never heard of."""
        self._adopt_due = False
        now = time.monotonic()
        self._adopted = {k: t for k, t in self._adopted.items() if now - t < _ADOPTED_MEMORY_S}
        known = [*self._running, *(o.job_id for o in self._outcomes)]
        self._adopting = set()
        try:
            jobs = await self.store.adopt(self.id, known)
        finally:
            started, self._adopting = self._adopting, None
        adopted: list[Job] = []
        for job in jobs:
            key = (job.id, job.attempt)
            if key in started or self._runs(job.id, job.attempt):
                continue
            self._adopted[key] = now
            adopted.append(job)
            log.warning(
                "adopting a job running under this worker that it had not heard of",
                worker_id=self.id,
                job_id=job.id,
                queue=job.queue,
                attempt=job.attempt,
            )
        self._accept(adopted)

    async def _hand_back_offers(self) -> None:
        """On the way out: take the offers back, then hand back any job an enqueue handed
        over before that and whose notice came too late to be heard."""
        if self._handoff is None:
            await self.store.settle_and_claim(self._outcomes, [], self.id, None)
        else:
            offers = Offers(withdraw=True)
            await self._handoff.settle_and_claim(self._outcomes, [], self.id, None, offers=offers)
        self._outcomes = []
        self._offered.clear()
        # Never a job whose thread still runs here (see _abandon).
        late = await self.store.adopt(self.id, [ctx.job.id for ctx in self._abandoned])
        if late:
            released = [Outcome(j.id, j.attempt, OutcomeKind.RELEASED, j.queue) for j in late]
            await self.store.settle_and_claim(released, [], self.id, None)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received", worker_id=self.id, signal=sig.name)
        self.stop()

    def _start_services(self) -> list[asyncio.Task[None]]:
        c = self.config
        jobs: list[tuple[str, float, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("lease-keeper", c.cancel_check_interval, self._keep_leases),
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

    async def _keep_leases(self) -> None:
        now = time.monotonic()
        renew = now - self._last_renew >= self.config.heartbeat_interval
        if not self._running and not renew:
            return
        jobs = {job_id: r.job.attempt for job_id, r in self._running.items()}
        # The RSS rides on the renewal (every heartbeat_interval, not every check) for
        # GET /health: one /proc read.
        memory = round(services.rss_mb(), 1) if renew else None
        status = await self.store.heartbeat(self.id, jobs, self.config.lease_s, renew, memory)
        if renew:
            self._last_renew = now
        for job_id, attempt in jobs.items():
            running = self._running.get(job_id)
            if running is None or running.job.attempt != attempt:
                continue  # ended, or claimed again as a new attempt, while we asked
            if job_id not in status.held:
                self._stop_job(job_id, StopReason.LEASE_LOST)
            elif job_id in status.cancel_requested:
                self._stop_job(job_id, StopReason.CANCELLED)

    async def _prune(self) -> None:
        deleted = 0
        while True:
            n = await self.store.prune(self.config.retention_s)
            deleted += n
            if n < 1000:
                break
        if deleted:
            log.info("pruned finished jobs", worker_id=self.id, deleted=deleted)

    async def _check_memory(self) -> None:
        rss_mb = services.rss_mb()
        high = rss_mb > self.config.max_memory_mb
        if high == self._memory_high:
            return
        self._memory_high = high
        if high:
            self._withdraw_due = True
            self._wake.set()
            log.warning(
                "memory above limit: not fetching jobs until it falls",
                worker_id=self.id,
                rss_mb=round(rss_mb, 1),
                max_memory_mb=self.config.max_memory_mb,
            )
        else:
            log.info(
                "memory below limit again: fetching jobs",
                worker_id=self.id,
                rss_mb=round(rss_mb, 1),
                max_memory_mb=self.config.max_memory_mb,
            )
            self._maybe_due.update(self.config.queues)
            self._wake.set()


def _backoff_delay(failures: int) -> float:
    return min(5.0, 0.1 * 2.0 ** min(failures, 6))


def _log_rescue(worker_id: str, result: RescueResult) -> None:
    log.warning(
        "rescued jobs whose worker stopped renewing its lease",
        worker_id=worker_id,
        requeued=list(result.requeued),
        failed=list(result.failed),
        cancelled=list(result.cancelled),
    )


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
