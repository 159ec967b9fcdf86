-- Queues of the PostgreSQL store: their settings (pause, cluster-wide limit) and their
-- statistics. Parameters are named (:name).

-- name: queue_exists
-- A queue exists once it has a setting, any job (each state read off its partial index,
-- whose first column is the queue) or a live worker serving it.
SELECT EXISTS (SELECT 1 FROM conveyor_queues WHERE name = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'queued' AND queue = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'running' AND queue = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE finished_at IS NOT NULL AND queue = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_workers WHERE expires_at >= now() AND queues ? :queue)

-- name: set_paused
INSERT INTO conveyor_queues (name, paused, updated_at) VALUES (:queue, :paused, now())
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at

-- name: set_limit
INSERT INTO conveyor_queues (name, concurrency_limit, updated_at) VALUES (:queue, :limit, now())
ON CONFLICT (name) DO UPDATE
SET concurrency_limit = excluded.concurrency_limit, updated_at = excluded.updated_at

-- name: drop_offers
-- A queue paused or given a cluster-wide limit takes no more handoffs (insert_job checks
-- both as well; this clears what is there at once).
DELETE FROM conveyor_offers WHERE queue = :queue

-- name: queue_settings
SELECT name, paused, concurrency_limit FROM conveyor_queues

-- name: stats_counts
-- Active jobs only, each part off the partial index that holds its state: O(queued +
-- running), whatever the number of finished jobs kept. Queued jobs by kind too (the claim
-- index's order), so that kinds no live worker runs can be shown. Every statistic of jobs
-- counts one tenant's (:tenant_id) or, when it is NULL, every tenant's.
SELECT queue, 'queued', kind, count(*) FROM conveyor_jobs
WHERE state = 'queued' AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, kind
UNION ALL
SELECT queue, 'running', NULL, count(*) FROM conveyor_jobs
WHERE state = 'running' AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY queue

-- name: stats_finished
-- Jobs that finished in the last :window_s seconds, by queue and state: a range of the prune
-- index, so the cost follows the rate of jobs, not the size of the table.
SELECT queue, state, NULL, count(*) FROM conveyor_jobs
WHERE finished_at >= now() - make_interval(secs => :window_s)
  AND state IN ('completed', 'failed', 'cancelled') AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, state

-- name: stats_due
SELECT queue, count(*), extract(epoch FROM now() - min(run_at)) FROM conveyor_jobs
WHERE state = 'queued' AND run_at <= now() AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY queue

-- name: stats_recent
SELECT queue, state, count(*) FROM conveyor_jobs
WHERE state IN ('completed', 'failed') AND finished_at >= now() - interval '60 seconds'
  AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, state

-- name: stats_run_times
-- The median and 95th percentile of the last 1,000 completed jobs of each queue named
-- (:queues): each a backward range of the index of finished jobs. The queue is a range of
-- one value, not an equality, and is in the ORDER BY, so that only that index gives the
-- order: with "queue = ..." the planner walked the prune index backwards over every
-- finished job of every queue, filtering.
SELECT q.name,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.seconds),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY r.seconds)
FROM unnest(:queues::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT extract(epoch FROM finished_at - started_at) AS seconds FROM conveyor_jobs
    WHERE queue >= q.name AND queue <= q.name AND state = 'completed'
      AND finished_at IS NOT NULL AND started_at IS NOT NULL
      AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
    ORDER BY queue DESC, finished_at DESC LIMIT 1000
) r
GROUP BY q.name
