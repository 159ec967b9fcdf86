"""The worker: runs handlers, records results, orders and limits what it claims."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import pytest

import conveyor
from conveyor.store.base import Store

Done = conveyor.JobState.COMPLETED


# -- running handlers ------------------------------------------------------------------------
async def test_async_handler_result_is_stored(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.add", registry=kinds)
    async def add(ctx: conveyor.JobContext, payload: dict[str, int]) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"sum": payload["a"] + payload["b"]}

    enqueued = await client.enqueue("t.add", {"a": 2, "b": 3})
    await workers.burst()

    job = await client.get(enqueued.id)
    assert job.state == Done
    assert job.result == {"sum": 5}
    assert job.attempt == 1
    assert job.errors == ()
    assert job.progress == 1.0
    assert job.lease_expires_at is None
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at


async def test_sync_handler_runs_in_a_thread(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    threads: list[threading.Thread] = []

    @conveyor.job("t.sync", registry=kinds)
    def blocking(ctx: conveyor.JobContext, payload: Any) -> str:
        threads.append(threading.current_thread())
        time.sleep(0.01)
        return "done"

    enqueued = await client.enqueue("t.sync")
    await workers.burst()

    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (Done, "done")


async def test_sync_handlers_do_not_block_the_event_loop(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    release = threading.Event()

    @conveyor.job("t.sync", registry=kinds)
    def blocking(ctx: conveyor.JobContext, payload: Any) -> None:
        release.wait(5)

    enqueued = await client.enqueue("t.sync")
    worker = workers.start()

    # The loop keeps serving (this test's own awaits run) while the thread blocks.
    await asyncio.sleep(0.1)
    assert (await client.get(enqueued.id)).state == conveyor.JobState.RUNNING
    release.set()
    await workers.stop(worker)
    assert (await client.get(enqueued.id)).state == Done


@pytest.mark.parametrize("result", [None, 0, "text", [1, "two", None], {"nested": {"x": [1.5]}}])
async def test_any_json_result(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, result: Any
) -> None:
    @conveyor.job("t.echo", registry=kinds)
    async def echo(ctx: conveyor.JobContext, payload: Any) -> Any:
        return result

    enqueued = await client.enqueue("t.echo")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (Done, result)


async def test_context_fields(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    seen: list[dict[str, Any]] = []

    @conveyor.job(
        "t.ctx", queue="ctxq", max_attempts=2, backoff=conveyor.Backoff(base=0), registry=kinds
    )
    async def inspect(ctx: conveyor.JobContext, payload: Any) -> None:
        ctx.log.info("handler ran", note="bound logger works")
        seen.append(
            {
                "id": ctx.id,
                "attempt": ctx.attempt,
                "max_attempts": ctx.max_attempts,
                "payload": ctx.payload,
                "tenant_id": ctx.tenant_id,
                "queue": ctx.queue,
                "kind": ctx.kind,
                "idempotency_key": ctx.idempotency_key,
                "cancelled": ctx.cancelled,
                "job_state": ctx.job.state,
            }
        )
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    enqueued = await client.enqueue("t.ctx", {"x": 1}, tenant_id="acme")
    await workers.burst(queues={"ctxq": 1})

    first, second = seen
    key = first.pop("idempotency_key")
    assert first == {
        "id": enqueued.id,
        "attempt": 1,
        "max_attempts": 2,
        "payload": {"x": 1},
        "tenant_id": "acme",
        "queue": "ctxq",
        "kind": "t.ctx",
        "cancelled": False,
        "job_state": conveyor.JobState.RUNNING,
    }
    assert second["attempt"] == 2
    # A non-empty string, the same on every attempt of the job.
    assert isinstance(key, str)
    assert key
    assert second["idempotency_key"] == key
    assert (await client.get(enqueued.id)).state == Done


async def test_idempotency_keys_differ_between_jobs(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    keys: list[str] = []

    @conveyor.job("t.key", registry=kinds)
    async def key(ctx: conveyor.JobContext, payload: Any) -> None:
        keys.append(ctx.idempotency_key)

    await client.enqueue("t.key")
    await client.enqueue("t.key")
    await workers.burst()

    assert len(set(keys)) == 2


# -- progress --------------------------------------------------------------------------------
async def test_progress_is_visible_while_running(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_job: Any
) -> None:
    release = asyncio.Event()
    rejected: list[float] = []

    @conveyor.job("t.progress", registry=kinds)
    async def slow(ctx: conveyor.JobContext, payload: Any) -> None:
        ctx.progress(0.25, "a quarter")
        for bad in (1.5, -0.1, float("nan")):
            try:
                ctx.progress(bad)
            except ValueError:
                rejected.append(bad)
        await release.wait()

    enqueued = await client.enqueue("t.progress")
    workers.start()

    job = await wait_job(enqueued.id, lambda j: j.progress is not None)
    assert job.state == conveyor.JobState.RUNNING
    assert (job.progress, job.progress_message) == (0.25, "a quarter")
    assert rejected[:2] == [1.5, -0.1]
    assert len(rejected) == 3

    release.set()
    done = await wait_job(enqueued.id, lambda j: j.state == Done)
    assert done.progress == 1.0


async def test_progress_from_a_sync_handler(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_job: Any
) -> None:
    release = threading.Event()

    @conveyor.job("t.progress", registry=kinds)
    def slow(ctx: conveyor.JobContext, payload: Any) -> None:
        ctx.progress(0.5, "half way")
        release.wait(5)

    enqueued = await client.enqueue("t.progress")
    workers.start()

    job = await wait_job(enqueued.id, lambda j: j.progress == 0.5)
    assert (job.state, job.progress_message) == (conveyor.JobState.RUNNING, "half way")
    release.set()
    await wait_job(enqueued.id, lambda j: j.state == Done)


async def test_latest_progress_wins(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_job: Any
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.progress", registry=kinds)
    async def slow(ctx: conveyor.JobContext, payload: Any) -> None:
        for step in range(1, 5):
            ctx.progress(step / 10, f"step {step}")
        await release.wait()

    enqueued = await client.enqueue("t.progress")
    workers.start()

    job = await wait_job(enqueued.id, lambda j: j.progress == 0.4)
    assert job.progress_message == "step 4"
    release.set()


async def test_a_finished_job_keeps_its_last_report(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.progress", registry=kinds)
    async def steps(ctx: conveyor.JobContext, payload: Any) -> str:
        for step in range(1, 5):
            ctx.progress(step / 4, f"tile {step} of 4")
            await asyncio.sleep(0)
        return "done"

    @conveyor.job("t.sync_progress", registry=kinds)
    def sync_steps(ctx: conveyor.JobContext, payload: Any) -> None:
        ctx.progress(0.5, "first")
        ctx.progress(0.9, "second")
        raise conveyor.Discard("no")

    done = await client.enqueue("t.progress")
    discarded = await client.enqueue("t.sync_progress")
    await workers.burst()

    job = await client.get(done.id)
    assert (job.state, job.progress, job.progress_message) == (Done, 1.0, "tile 4 of 4")
    job = await client.get(discarded.id)
    assert (job.state, job.progress, job.progress_message) == (
        conveyor.JobState.FAILED,
        0.9,
        "second",
    )


# -- order -----------------------------------------------------------------------------------
async def test_strict_priority_then_fifo(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    order: list[str] = []

    @conveyor.job("t.record", registry=kinds)
    async def record(ctx: conveyor.JobContext, payload: str) -> None:
        order.append(payload)

    for name, priority in [
        ("c1", 3), ("a1", 1), ("b1", 2), ("c2", 3), ("a2", 1), ("b2", 2), ("a3", 1),
    ]:  # fmt: skip
        await client.enqueue("t.record", name, priority=priority)
    await workers.burst(queues={"default": 1})

    assert order == ["a1", "a2", "a3", "b1", "b2", "c1", "c2"]


async def test_priority_applies_per_queue(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    order: list[str] = []

    @conveyor.job("t.record", registry=kinds)
    async def record(ctx: conveyor.JobContext, payload: str) -> None:
        order.append(payload)

    await client.enqueue("t.record", "low-a", queue="a", priority=9)
    await client.enqueue("t.record", "high-b", queue="b", priority=1)
    await client.enqueue("t.record", "high-a", queue="a", priority=1)
    await workers.burst(queues={"a": 1})

    assert order == ["high-a", "low-a"]
    b_jobs = await client.list(queue="b")
    assert [j.state for j in b_jobs] == [conveyor.JobState.QUEUED]


async def test_worker_serves_only_its_queues(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    mine = await client.enqueue("t.noop", queue="mine")
    other = await client.enqueue("t.noop", queue="other")
    await workers.burst(queues={"mine": 2})

    assert (await client.get(mine.id)).state == Done
    assert (await client.get(other.id)).state == conveyor.JobState.QUEUED


# -- concurrency -----------------------------------------------------------------------------
async def test_queue_concurrency_limit_holds(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    gate = asyncio.Event()
    now_running = 0
    most = 0

    @conveyor.job("t.gated", registry=kinds)
    async def gated(ctx: conveyor.JobContext, payload: Any) -> None:
        nonlocal now_running, most
        now_running += 1
        most = max(most, now_running)
        try:
            await gate.wait()
            await asyncio.sleep(0.01)
        finally:
            now_running -= 1

    ids = [(await client.enqueue("t.gated")).id for _ in range(7)]
    worker = workers.start(queues={"default": 2})

    async def running_in_db() -> int:
        return len(await client.list(state="running"))

    await eventually(lambda: now_running == 2)
    # The worker holds its two jobs and claims nothing more while they run.
    for _ in range(10):
        assert await running_in_db() == 2
        await asyncio.sleep(0.02)
    stats = {q.name: q for q in await client.queues()}["default"]
    assert (stats.running, stats.counts["queued"], stats.limit) == (2, 5, 2)

    samples: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            samples.append(await running_in_db())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    gate.set()
    await eventually(lambda: all_done(client, ids))
    sampling = False
    await sampler
    await workers.stop(worker)

    assert most == 2
    assert worker.max_seen_running == 2
    assert max(samples) <= 2


async def all_done(client: conveyor.Client, ids: list[int]) -> bool:
    states = [(await client.get(i)).state for i in ids]
    return all(state == Done for state in states)


async def test_each_queue_has_its_own_limit(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    gate = asyncio.Event()
    running: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    @conveyor.job("t.gated", registry=kinds)
    async def gated(ctx: conveyor.JobContext, payload: Any) -> None:
        running[ctx.queue] += 1
        most[ctx.queue] = max(most[ctx.queue], running[ctx.queue])
        try:
            await gate.wait()
        finally:
            running[ctx.queue] -= 1

    ids = [(await client.enqueue("t.gated", queue=q)).id for q in "aaaabbbb"]
    workers.start(queues={"a": 3, "b": 1})

    await eventually(lambda: running == {"a": 3, "b": 1})
    await asyncio.sleep(0.1)
    stats = {q.name: q for q in await client.queues()}
    assert (stats["a"].running, stats["b"].running) == (3, 1)

    gate.set()
    await eventually(lambda: all_done(client, ids))
    assert most == {"a": 3, "b": 1}


async def test_two_workers_never_share_a_job(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    runs: list[tuple[int, str]] = []

    @conveyor.job("t.track", registry=kinds)
    async def track(ctx: conveyor.JobContext, payload: Any) -> None:
        runs.append((ctx.id, ctx.job.locked_by or ""))
        await asyncio.sleep(0.005)

    ids = [r.id for r in await client.enqueue_many(client.prepare("t.track") for _ in range(40))]
    one = workers.start(queues={"default": 3})
    two = workers.start(queues={"default": 3})

    await eventually(lambda: all_done(client, ids))

    assert sorted(job_id for job_id, _ in runs) == ids
    assert {owner for _, owner in runs} <= {one.id, two.id}


# -- recording results -----------------------------------------------------------------------
class RecordingStore:
    """The store, noting for each exchange how many results it recorded and how many
    jobs it claimed. Its claims offer no slots, so new jobs are claimed, never handed
    off (handoff has tests of its own)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.exchanges: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def settle_and_claim(
        self, outcomes: Any, progress: Any, worker_id: str, claim: Any, **kwargs: Any
    ) -> Any:
        kwargs.pop("offers", None)
        result = await self._inner.settle_and_claim(outcomes, progress, worker_id, claim, **kwargs)
        self.exchanges.append((len(outcomes), len(result.claimed)))
        return result


# Far away: no safety poll or rescue pass may carry the held result instead.
QUIET = {"safety_poll_interval": 30.0, "rescue_interval": 30.0}


async def test_a_claim_carries_the_result_held_for_it(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    ran = asyncio.Event()

    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        ran.set()

    recording = RecordingStore(store)
    workers.start(workers.make(store=recording, flush_interval=10.0, **QUIET))
    await asyncio.sleep(0.05)
    first = await client.enqueue("t.noop")
    await asyncio.wait_for(ran.wait(), 3)
    await asyncio.sleep(0.05)
    assert (await client.get(first.id)).state == conveyor.JobState.RUNNING

    second = await client.enqueue("t.noop")
    await wait_state(first.id, "completed", timeout=3)

    # The result of the first job went with the claim of the second, long before the
    # flush interval was up.
    assert (1, 1) in recording.exchanges
    await wait_state(second.id, "running", timeout=3)


async def test_a_held_result_is_recorded_after_the_flush_interval(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    finished: list[float] = []

    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        finished.append(time.monotonic())

    recording = RecordingStore(store)
    workers.start(workers.make(store=recording, flush_interval=0.3, **QUIET))
    await asyncio.sleep(0.05)
    enqueued = await client.enqueue("t.noop")

    await wait_state(enqueued.id, "completed", timeout=3)

    assert time.monotonic() - finished[0] >= 0.3
    assert recording.exchanges[-1] == (1, 0)


# -- scheduling ------------------------------------------------------------------------------
async def test_scheduled_job_runs_after_its_delay_without_a_notice(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    # The safety poll is far away: only the worker's own timer can wake it in time.
    workers.start(safety_poll_interval=30)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    enqueued = await client.enqueue("t.noop", delay=0.5)

    await asyncio.sleep(0.3)
    assert (await client.get(enqueued.id)).state == conveyor.JobState.QUEUED
    job = await wait_state(enqueued.id, "completed", timeout=3)

    assert time.monotonic() - started < 2.5
    assert job.started_at is not None
    assert job.started_at >= job.run_at
    assert job.started_at - job.created_at >= 0.5


async def test_scheduled_job_is_not_forgotten_when_another_queue_gets_work(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    workers.start(queues={"a": 1, "b": 1}, safety_poll_interval=30)
    await asyncio.sleep(0.05)
    later = await client.enqueue("t.noop", queue="a", delay=0.4)
    await asyncio.sleep(0.1)
    now = await client.enqueue("t.noop", queue="b")

    await wait_state(now.id, "completed", timeout=2)
    await wait_state(later.id, "completed", timeout=2.5)


async def test_burst_leaves_jobs_that_are_not_due(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    due = await client.enqueue("t.noop")
    later = await client.enqueue("t.noop", delay=60)
    await workers.burst()

    assert (await client.get(due.id)).state == Done
    assert (await client.get(later.id)).state == conveyor.JobState.QUEUED


async def test_job_from_another_process_is_picked_up(
    kinds: conveyor.Registry,
    peer_client: conveyor.Client,
    workers: Any,
    wait_state: Any,
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    workers.start(safety_poll_interval=30)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    enqueued = await peer_client.enqueue("t.noop")

    await wait_state(enqueued.id, "completed", timeout=3)
    assert time.monotonic() - started < 2


# -- pause -----------------------------------------------------------------------------------
async def test_paused_queue_is_not_served_until_resumed(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    enqueued = await client.enqueue("t.noop")
    await client.pause("default")  # no worker runs yet: the job cannot start before this
    await workers.burst()
    assert (await client.get(enqueued.id)).state == conveyor.JobState.QUEUED

    workers.start()
    await asyncio.sleep(0.3)
    assert (await client.get(enqueued.id)).state == conveyor.JobState.QUEUED

    await client.resume("default")
    await wait_state(enqueued.id, "completed", timeout=2)


async def test_pause_lets_running_jobs_finish(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.gated", registry=kinds)
    async def gated(ctx: conveyor.JobContext, payload: Any) -> None:
        await release.wait()

    first = await client.enqueue("t.gated")
    workers.start(queues={"default": 1})
    await wait_state(first.id, "running")
    await client.pause("default")
    second = await client.enqueue("t.gated")

    release.set()
    await wait_state(first.id, "completed")
    await asyncio.sleep(0.3)
    assert (await client.get(second.id)).state == conveyor.JobState.QUEUED


# -- registration ----------------------------------------------------------------------------
async def test_worker_registers_while_running_and_unregisters_on_stop(
    client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    worker = workers.start(queues={"default": 3, "video": 2})

    async def registered() -> list[conveyor.store.records.WorkerInfo]:
        return [w for w in await client.workers() if w.id == worker.id]

    [info] = await eventually(registered)
    assert info.queues == {"default": 3, "video": 2}
    assert info.pid > 0
    assert info.hostname
    limits = {q.name: q.limit for q in await client.queues()}
    assert limits == {"default": 3, "video": 2}

    await workers.stop(worker)

    assert await registered() == []


async def test_each_worker_has_its_own_id(store: Store, kinds: conveyor.Registry) -> None:
    ids = {conveyor.Worker(store, kinds=kinds).id for _ in range(20)}

    assert len(ids) == 20


async def test_a_worker_takes_a_new_id_per_instance_not_per_run(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    owners: list[str | None] = []

    @conveyor.job("t.owner", registry=kinds)
    async def owner(ctx: conveyor.JobContext, payload: Any) -> None:
        owners.append(ctx.job.locked_by)

    await client.enqueue("t.owner")
    first = await workers.burst()
    await client.enqueue("t.owner")
    second = await workers.burst()

    assert owners == [first.id, second.id]
    assert first.id != second.id


# -- configuration ---------------------------------------------------------------------------
def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        conveyor.WorkerConfig(lease_s=1, heartbeat_interval=1)


@pytest.mark.parametrize("queues", [{}, {"default": 0}])
def test_a_worker_needs_queues_with_positive_limits(queues: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="queues"):
        conveyor.WorkerConfig(queues=queues)


def test_config_from_settings() -> None:
    settings = conveyor.Settings(
        queues=["video:2", "qa"], concurrency=4, lease_seconds=20, heartbeat_interval=5
    )

    config = conveyor.WorkerConfig.from_settings(settings)

    assert config.queues == {"video": 2, "qa": 4}
    assert (config.lease_s, config.heartbeat_interval) == (20, 5)


@pytest.mark.parametrize("spec", [["video:0"], ["video:x"], ["bad queue"]])
def test_bad_queue_specs_are_rejected(spec: list[str]) -> None:
    with pytest.raises((ValueError, conveyor.InvalidJob)):
        conveyor.WorkerConfig.from_settings(conveyor.Settings(), queues=spec)


# -- workers with different kinds ------------------------------------------------------------
async def test_workers_with_different_kinds_share_a_queue_and_each_runs_only_its_own(
    store: Any, peer_store: Any, workers: Any
) -> None:
    """The README's tour beside `make run`: one worker has media.thumbnail, another
    media.report, both serve the default queue. Every job completes on its first attempt,
    on the worker that has its kind; none fails."""
    ran: dict[str, list[int]] = {"thumbs": [], "reports": []}
    thumbs, reports = conveyor.Registry(), conveyor.Registry()

    @conveyor.job("media.thumbnail", registry=thumbs)
    async def thumbnail(ctx: conveyor.JobContext, payload: Any) -> str:
        ran["thumbs"].append(ctx.id)
        return "thumb"

    @conveyor.job("media.report", registry=reports)
    async def report(ctx: conveyor.JobContext, payload: Any) -> str:
        ran["reports"].append(ctx.id)
        return "report"

    producer = conveyor.Client(store, kinds=conveyor.Registry())  # enqueues by name
    ids = {
        kind: [(await producer.enqueue(kind, {"n": i})).id for i in range(8)]
        for kind in ("media.thumbnail", "media.report")
    }
    config = workers.make().config
    both = [
        conveyor.Worker(store, config, kinds=thumbs),
        conveyor.Worker(peer_store, config, kinds=reports),
    ]
    await asyncio.wait_for(asyncio.gather(*(w.run(burst=True) for w in both)), 10)

    assert sorted(ran["thumbs"]) == ids["media.thumbnail"]
    assert sorted(ran["reports"]) == ids["media.report"]
    for job in await producer.list(limit=100):
        assert (job.state, job.attempt, job.errors) == (conveyor.JobState.COMPLETED, 1, ())


async def test_queues_show_which_live_workers_serve_which_kinds(
    store: Any, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    @conveyor.job("t.here", registry=kinds)
    async def here(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    ghost = await client.enqueue("t.elsewhere")
    worker = workers.start(queues={"default": 2})

    async def listed() -> Any:
        for stats in await client.queues():
            if stats.name == "default" and stats.served_kinds:
                return stats
        return None

    stats = await eventually(listed)
    assert stats.served_kinds == {"t.here": (worker.id,)}
    assert stats.unserved_kinds == {"t.elsewhere": 1}
    job = await client.get(ghost.id)
    assert await client.serving(job) == []
    [serving] = await client.serving(dataclasses.replace(job, kind="t.here"))
    assert (serving.id, serving.kinds) == (worker.id, ("t.here",))
