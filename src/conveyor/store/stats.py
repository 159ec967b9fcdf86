"""Queue statistics put together from what each store reads in its own SQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from conveyor.store.records import ACTIVE_STATES, JobState, QueueStats, WorkerInfo

FINISHED_WINDOW_S = 3600.0
"""Finished jobs are counted over this last stretch of time, not over the whole table:
counting every finished job kept (seven days by default) cost time in proportion to the
table, at every read of the statistics."""


def assemble_queue_stats(
    counts: Iterable[tuple[str, str, str | None, int]],
    due: Mapping[str, tuple[int, float | None]],
    recent: Mapping[tuple[str, str], int],
    run_times: Mapping[str, tuple[float | None, float | None]],
    settings: Mapping[str, tuple[bool, int | None]],
    workers: Iterable[WorkerInfo],
    *,
    finished: bool = True,
) -> list[QueueStats]:
    """One :class:`QueueStats` per queue that has jobs, a setting or a live worker.

    Args:
        counts: (queue, state, kind, jobs) rows; queued jobs by kind (the kinds no live
            worker serves are shown as unserved), the other states with kind None;
            finished states over the last :data:`FINISHED_WINDOW_S` only.
        due: queue -> (due queued jobs, age in seconds of the oldest due one).
        recent: (queue, state) -> jobs that reached ``state`` in the last minute.
        run_times: queue -> (median, 95th percentile) run time of recent completions.
        settings: queue -> (paused, cluster-wide limit).
        workers: the live workers, whose per-queue limits add up when no cluster-wide
            limit is set, and whose kinds are the kinds served.
        finished: False when ``counts`` has no finished states: they are left out of
            each queue's counts rather than shown as 0.
    """
    by_queue: dict[str, dict[str, int]] = {}
    queued_kinds: dict[str, dict[str, int]] = {}
    for queue, state, kind, n in counts:
        states = by_queue.setdefault(queue, {})
        states[state] = states.get(state, 0) + n
        if state == JobState.QUEUED and kind is not None:
            queued_kinds.setdefault(queue, {})[kind] = n
    limits: dict[str, int] = {}
    served: dict[str, dict[str, list[str]]] = {}
    for worker in workers:
        for queue, limit in worker.queues.items():
            limits[queue] = limits.get(queue, 0) + limit
            for kind in worker.kinds:
                served.setdefault(queue, {}).setdefault(kind, []).append(worker.id)
    shown = list(JobState) if finished else [s for s in JobState if s in ACTIVE_STATES]
    stats = []
    for name in sorted(set(by_queue) | set(settings) | set(limits)):
        states = {s.value: by_queue.get(name, {}).get(s.value, 0) for s in shown}
        due_count, age = due.get(name, (0, None))
        paused, cap = settings.get(name, (False, None))
        p50, p95 = run_times.get(name, (None, None))
        kinds = served.get(name, {})
        stats.append(
            QueueStats(
                name=name,
                paused=paused,
                counts=states,
                scheduled=states[JobState.QUEUED] - due_count,
                running=states[JobState.RUNNING],
                limit=cap if cap is not None else limits.get(name),
                cluster_limit=cap,
                oldest_queued_age_s=None if age is None else max(0.0, age),
                completed_last_minute=recent.get((name, JobState.COMPLETED), 0),
                failed_last_minute=recent.get((name, JobState.FAILED), 0),
                run_time_p50_s=p50,
                run_time_p95_s=p95,
                served_kinds={k: tuple(sorted(ids)) for k, ids in sorted(kinds.items())},
                unserved_kinds={
                    k: n for k, n in sorted(queued_kinds.get(name, {}).items()) if k not in kinds
                },
            )
        )
    return stats
