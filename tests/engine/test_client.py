"""The client: enqueue with the kind's defaults, schedule, inspect and operate jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import conveyor


@pytest.fixture
def kinds(kinds: conveyor.Registry) -> conveyor.Registry:
    """The test registry with two kinds: ``t.plain`` (all defaults) and ``t.tuned``."""

    @conveyor.job("t.plain", registry=kinds)
    async def plain(ctx: conveyor.JobContext, payload: Any) -> Any:
        return payload

    @conveyor.job(
        "t.tuned", queue="reports", priority=1, max_attempts=5, timeout=60, registry=kinds
    )
    async def tuned(ctx: conveyor.JobContext, payload: Any) -> Any:
        return payload

    return kinds


async def test_connect_opens_migrates_and_closes(tmp_path: Path, kinds: conveyor.Registry) -> None:
    url = f"sqlite:///{tmp_path}/connect.db"
    async with await conveyor.Client.connect(url, kinds=kinds) as client:
        enqueued = await client.enqueue("t.plain", {"n": 1})
        assert (await client.get(enqueued.id)).payload == {"n": 1}

    async with await conveyor.Client.connect(url, kinds=kinds) as again:
        assert [job.id for job in await again.list()] == [enqueued.id]


# -- enqueue ---------------------------------------------------------------------------------
async def test_enqueue_takes_defaults_from_the_kind(client: conveyor.Client) -> None:
    before = time.time()
    enqueued = await client.enqueue("t.tuned", {"month": "2026-10"})

    assert enqueued.created
    job = await client.get(enqueued.id)
    assert job.kind == "t.tuned"
    assert job.state == conveyor.JobState.QUEUED
    assert (job.queue, job.priority, job.max_attempts, job.timeout_s) == ("reports", 1, 5, 60.0)
    assert job.payload == {"month": "2026-10"}
    assert job.tenant_id == "default"
    assert job.attempt == 0
    assert job.errors == ()
    assert job.result is None
    assert before - 1 <= job.run_at <= time.time() + 1


async def test_plain_kind_defaults(client: conveyor.Client) -> None:
    job = await client.get((await client.enqueue("t.plain")).id)

    assert (job.queue, job.priority, job.max_attempts, job.timeout_s) == ("default", 3, 3, 300.0)
    assert job.payload == {}


async def test_enqueue_overrides(client: conveyor.Client) -> None:
    enqueued = await client.enqueue(
        "t.tuned",
        [1, 2],
        queue="urgent",
        priority=9,
        max_attempts=1,
        timeout=None,
        unique_key="k1",
        tenant_id="acme",
        meta={"request_id": "r-1"},
    )

    job = await client.get(enqueued.id)
    assert (job.queue, job.priority, job.max_attempts, job.timeout_s) == ("urgent", 9, 1, None)
    assert job.payload == [1, 2]
    assert (job.unique_key, job.tenant_id, job.meta) == ("k1", "acme", {"request_id": "r-1"})


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("priority", 0, "priority"),
        ("priority", 11, "priority"),
        ("max_attempts", 0, "max_attempts"),
        ("timeout", 0, "timeout"),
        ("timeout", -5, "timeout"),
        ("queue", "bad queue", "queue name"),
        ("queue", "", "queue name"),
        ("unique_key", "", "unique_key"),
    ],
)
async def test_invalid_override(
    client: conveyor.Client, option: str, value: Any, match: str
) -> None:
    with pytest.raises(conveyor.InvalidJob, match=match):
        await client.enqueue("t.plain", {}, **{option: value})

    assert await client.list() == []


async def test_delay_schedules_the_job(client: conveyor.Client) -> None:
    job = await client.get((await client.enqueue("t.plain", delay=120)).id)

    assert job.run_at == pytest.approx(job.created_at + 120, abs=0.01)
    stats = {q.name: q for q in await client.queues()}["default"]
    assert stats.scheduled == 1


async def test_zero_delay_is_due_now(client: conveyor.Client) -> None:
    job = await client.get((await client.enqueue("t.plain", delay=0)).id)

    assert job.run_at == pytest.approx(job.created_at, abs=0.01)


async def test_run_at_aware_datetime(client: conveyor.Client) -> None:
    when = datetime(2031, 5, 17, 9, 30, tzinfo=timezone(timedelta(hours=2)))

    job = await client.get((await client.enqueue("t.plain", run_at=when)).id)

    assert job.run_at == when.timestamp()
    assert datetime.fromtimestamp(job.run_at, UTC) == datetime(2031, 5, 17, 7, 30, tzinfo=UTC)


async def test_run_at_unix_seconds(client: conveyor.Client) -> None:
    when = time.time() + 3600

    job = await client.get((await client.enqueue("t.plain", run_at=when)).id)

    assert job.run_at == pytest.approx(when, abs=1e-3)


async def test_run_at_in_the_past_is_due_at_once(client: conveyor.Client, workers: Any) -> None:
    enqueued = await client.enqueue("t.plain", run_at=datetime.now(UTC) - timedelta(hours=1))

    await workers.burst()

    assert (await client.get(enqueued.id)).state == conveyor.JobState.COMPLETED


async def test_naive_run_at_is_rejected(client: conveyor.Client) -> None:
    with pytest.raises(conveyor.InvalidJob, match="time zone"):
        await client.enqueue("t.plain", run_at=datetime(2031, 5, 17, 9, 30))

    assert await client.list() == []


@pytest.mark.parametrize("run_at", [float("nan"), float("inf")])
async def test_run_at_must_be_a_time(client: conveyor.Client, run_at: float) -> None:
    with pytest.raises(conveyor.InvalidJob, match="run_at"):
        await client.enqueue("t.plain", run_at=run_at)


@pytest.mark.parametrize("delay", [-1, -0.001, float("nan"), float("inf")])
async def test_invalid_delay_is_rejected(client: conveyor.Client, delay: float) -> None:
    with pytest.raises(conveyor.InvalidJob, match="delay"):
        await client.enqueue("t.plain", delay=delay)

    assert await client.list() == []


async def test_delay_and_run_at_together_are_rejected(client: conveyor.Client) -> None:
    with pytest.raises(conveyor.InvalidJob, match="either delay or run_at"):
        await client.enqueue("t.plain", delay=5, run_at=datetime.now(UTC))


@pytest.mark.parametrize("payload", [{"when": object()}, {"items": {1, 2}}, {1: "int key"}])
async def test_non_json_payload_is_rejected_and_nothing_stored(
    client: conveyor.Client, payload: Any
) -> None:
    with pytest.raises(conveyor.InvalidJob, match="JSON"):
        await client.enqueue("t.plain", payload)

    assert await client.list() == []


async def test_a_kind_not_registered_here_is_enqueued_by_name_with_the_system_defaults(
    client: conveyor.Client,
) -> None:
    """A producer that does not import the handler's module (Celery's send_task): the
    payload is stored as given, for the worker that has the kind to validate."""
    enqueued = await client.enqueue("video.process", {"url": "https://x/v.mp4", "extra": 1})

    job = await client.get(enqueued.id)
    assert (job.kind, job.state, job.attempt) == ("video.process", conveyor.JobState.QUEUED, 0)
    assert (job.queue, job.priority, job.max_attempts, job.timeout_s) == ("default", 3, 3, 300.0)
    assert job.payload == {"url": "https://x/v.mp4", "extra": 1}


async def test_an_enqueue_by_name_takes_the_options_given(client: conveyor.Client) -> None:
    enqueued = await client.enqueue(
        "video.process", queue="video", priority=2, max_attempts=4, timeout=None, delay=60
    )

    job = await client.get(enqueued.id)
    assert (job.queue, job.priority, job.max_attempts, job.timeout_s) == ("video", 2, 4, None)
    assert job.payload == {}
    assert job.run_at == pytest.approx(job.created_at + 60, abs=0.01)


@pytest.mark.parametrize(
    ("kind", "payload", "options", "message"),
    [
        ("bad kind!", {}, {}, "kind name 'bad kind!' is not valid"),
        ("video.process", {}, {"priority": 11}, "priority 11 is not valid"),
        ("video.process", {}, {"queue": "no spaces"}, "queue name 'no spaces' is not valid"),
        ("video.process", {"x": object()}, {}, "JSON"),
    ],
)
async def test_an_enqueue_by_name_still_checks_what_it_can(
    client: conveyor.Client, kind: str, payload: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(conveyor.InvalidJob, match=message):
        await client.enqueue(kind, payload, **options)

    assert await client.list() == []


# -- enqueue_many ----------------------------------------------------------------------------
async def test_enqueue_many_returns_ids_in_order(client: conveyor.Client) -> None:
    batch = [
        client.prepare("t.plain", {"n": 0}),
        client.prepare("t.tuned", {"n": 1}, priority=4),
        client.prepare("t.plain", {"n": 2}, delay=60),
    ]

    results = await client.enqueue_many(batch)

    assert [r.created for r in results] == [True, True, True]
    ids = [r.id for r in results]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    jobs = [await client.get(job_id) for job_id in ids]
    assert [job.payload for job in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [job.kind for job in jobs] == ["t.plain", "t.tuned", "t.plain"]
    assert jobs[1].priority == 4


async def test_enqueue_many_is_all_or_nothing(client: conveyor.Client) -> None:
    # prepare() refuses such a payload now; built behind its back, the store's encoding
    # fails in the middle of the batch.
    bad = dataclasses.replace(client.prepare("t.plain", {"n": 1}), payload={"bad": object()})
    batch = [client.prepare("t.plain", {"n": 0}), bad, client.prepare("t.plain", {"n": 2})]

    with pytest.raises(conveyor.InvalidJob):
        await client.enqueue_many(batch)

    assert await client.list() == []


async def test_enqueue_many_accepts_any_iterable(client: conveyor.Client) -> None:
    results = await client.enqueue_many(client.prepare("t.plain", {"n": n}) for n in range(5))

    assert len(results) == 5
    assert len(await client.list()) == 5


async def test_enqueue_many_of_nothing(client: conveyor.Client) -> None:
    assert await client.enqueue_many([]) == []


async def test_prepare_validates_without_storing(client: conveyor.Client) -> None:
    new = client.prepare("t.tuned", {"n": 1})

    assert (new.queue, new.priority, new.max_attempts, new.timeout_s) == ("reports", 1, 5, 60.0)
    assert await client.list() == []
    with pytest.raises(conveyor.InvalidJob):
        client.prepare("t.tuned", {}, priority=42)


# -- uniqueness ------------------------------------------------------------------------------
async def test_unique_key_returns_the_active_job(client: conveyor.Client) -> None:
    first = await client.enqueue("t.plain", {"n": 1}, unique_key="daily-report")
    second = await client.enqueue("t.plain", {"n": 2}, unique_key="daily-report")

    assert first.created
    assert not second.created
    assert second.id == first.id
    assert len(await client.list()) == 1
    assert (await client.get(first.id)).payload == {"n": 1}


async def test_unique_key_is_per_tenant(client: conveyor.Client) -> None:
    a = await client.enqueue("t.plain", unique_key="k", tenant_id="a")
    b = await client.enqueue("t.plain", unique_key="k", tenant_id="b")

    assert a.created
    assert b.created
    assert a.id != b.id


async def test_unique_key_is_free_again_once_the_job_finished(
    client: conveyor.Client, workers: Any
) -> None:
    first = await client.enqueue("t.plain", unique_key="k")
    await workers.burst()

    again = await client.enqueue("t.plain", unique_key="k")

    assert again.created
    assert again.id != first.id


async def test_unique_key_within_one_batch(client: conveyor.Client) -> None:
    results = await client.enqueue_many(
        [client.prepare("t.plain", {"n": n}, unique_key="same") for n in range(3)]
    )

    assert [r.created for r in results] == [True, False, False]
    assert len({r.id for r in results}) == 1


# -- list ------------------------------------------------------------------------------------
async def test_list_is_newest_first_and_pages_with_before_id(client: conveyor.Client) -> None:
    ids = [(await client.enqueue("t.plain", {"n": n})).id for n in range(5)]

    page1 = await client.list(limit=2)
    page2 = await client.list(limit=2, before_id=page1[-1].id)
    page3 = await client.list(limit=2, before_id=page2[-1].id)
    page4 = await client.list(limit=2, before_id=page3[-1].id)

    assert [j.id for j in page1] == [ids[4], ids[3]]
    assert [j.id for j in page2] == [ids[2], ids[1]]
    assert [j.id for j in page3] == [ids[0]]
    assert page4 == []


async def test_list_filters(client: conveyor.Client) -> None:
    a = await client.enqueue("t.plain", tenant_id="acme")
    b = await client.enqueue("t.tuned", tenant_id="acme")
    c = await client.enqueue("t.plain", queue="other")
    await client.cancel(c.id)

    def ids(jobs: list[conveyor.Job]) -> list[int]:
        return [job.id for job in jobs]

    assert ids(await client.list(kind="t.plain")) == [c.id, a.id]
    assert ids(await client.list(queue="reports")) == [b.id]
    assert ids(await client.list(tenant_id="acme")) == [b.id, a.id]
    assert ids(await client.list(state="cancelled")) == [c.id]
    assert ids(await client.list(state=conveyor.JobState.QUEUED)) == [b.id, a.id]
    assert ids(await client.list(state="queued", kind="t.plain", tenant_id="acme")) == [a.id]
    assert await client.list(queue="nowhere") == []


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_list_limit_is_bounded(client: conveyor.Client, limit: int) -> None:
    with pytest.raises(conveyor.InvalidJob, match="limit"):
        await client.list(limit=limit)


async def test_list_rejects_an_unknown_state(client: conveyor.Client) -> None:
    with pytest.raises(conveyor.InvalidJob, match="queued, running"):
        await client.list(state="done")


# -- operate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["get", "cancel", "retry"])
async def test_unknown_id_raises_job_not_found(client: conveyor.Client, method: str) -> None:
    with pytest.raises(conveyor.JobNotFound, match="424242") as caught:
        await getattr(client, method)(424242)

    assert caught.value.job_id == 424242


async def test_cancel_a_queued_job(client: conveyor.Client) -> None:
    enqueued = await client.enqueue("t.plain")

    job = await client.cancel(enqueued.id)

    assert job.state == conveyor.JobState.CANCELLED
    assert job.finished_at is not None
    assert (await client.get(enqueued.id)).state == conveyor.JobState.CANCELLED


async def test_cancel_of_a_finished_job_is_a_conflict(
    client: conveyor.Client, workers: Any
) -> None:
    enqueued = await client.enqueue("t.plain", {"v": 1})
    await workers.burst()

    with pytest.raises(conveyor.JobConflict, match="completed") as caught:
        await client.cancel(enqueued.id)

    assert caught.value.job_id == enqueued.id
    job = await client.get(enqueued.id)
    assert job.state == conveyor.JobState.COMPLETED
    assert job.result == {"v": 1}


async def test_retry_a_cancelled_job(client: conveyor.Client) -> None:
    enqueued = await client.enqueue("t.plain")
    await client.cancel(enqueued.id)

    job = await client.retry(enqueued.id)

    assert job.state == conveyor.JobState.QUEUED
    assert job.finished_at is None
    assert not job.cancel_requested


async def test_retry_of_a_queued_job_is_a_conflict(client: conveyor.Client) -> None:
    enqueued = await client.enqueue("t.plain", delay=60)
    before = await client.get(enqueued.id)

    with pytest.raises(conveyor.JobConflict, match="queued; only failed or cancelled"):
        await client.retry(enqueued.id)

    assert await client.get(enqueued.id) == before


async def test_pause_and_resume(client: conveyor.Client) -> None:
    await client.enqueue("t.plain")

    await client.pause("default")
    paused = {q.name: q.paused for q in await client.queues()}
    await client.resume("default")
    resumed = {q.name: q.paused for q in await client.queues()}

    assert paused == {"default": True}
    assert resumed == {"default": False}


async def test_pause_or_limit_an_unknown_queue_raises(client: conveyor.Client) -> None:
    # Changed by issue 10: this used to create the queue "later" (most often a typo).
    for change in (
        client.pause("later"),
        client.resume("later"),
        client.set_limit("later", 2),
        client.set_limit("later", None),
    ):
        with pytest.raises(conveyor.QueueNotFound, match="no queue named 'later'"):
            await change
    assert await client.queues() == []


async def test_pause_rejects_a_bad_queue_name(client: conveyor.Client) -> None:
    with pytest.raises(conveyor.InvalidJob, match="queue name"):
        await client.pause("no spaces please")


async def test_queue_stats_count_states(client: conveyor.Client) -> None:
    await client.enqueue("t.plain")
    await client.enqueue("t.plain", delay=60)
    await client.cancel((await client.enqueue("t.plain")).id)
    await client.enqueue("t.tuned")

    stats = {q.name: q for q in await client.queues()}

    assert stats["default"].counts == {
        "queued": 2,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert stats["default"].scheduled == 1
    assert stats["reports"].counts["queued"] == 1


async def test_prune_deletes_finished_jobs_only(client: conveyor.Client, workers: Any) -> None:
    done = await client.enqueue("t.plain")
    await workers.burst()
    waiting = await client.enqueue("t.plain", delay=60)
    await asyncio.sleep(0.01)  # finished strictly before "now"

    assert await client.prune(0) == 1

    with pytest.raises(conveyor.JobNotFound):
        await client.get(done.id)
    assert (await client.get(waiting.id)).state == conveyor.JobState.QUEUED


async def test_prune_keeps_recent_finished_jobs(client: conveyor.Client, workers: Any) -> None:
    done = await client.enqueue("t.plain")
    await workers.burst()

    assert await client.prune(3600) == 0
    assert (await client.get(done.id)).state == conveyor.JobState.COMPLETED
