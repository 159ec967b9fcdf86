-- Live workers of the PostgreSQL store. Parameters are named (:name).

-- name: register_worker
INSERT INTO conveyor_workers (
    id, hostname, pid, queues, started_at, last_seen_at, expires_at, kinds, memory_mb
)
VALUES (
    :id, :hostname, :pid, :queues, now(), now(), now() + make_interval(secs => :lease_s),
    :kinds, :memory_mb
)
ON CONFLICT (id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at,
    kinds = excluded.kinds, memory_mb = excluded.memory_mb

-- name: unregister_worker
WITH offers AS (
    DELETE FROM conveyor_offers WHERE worker_id = :worker_id
)
DELETE FROM conveyor_workers WHERE id = :worker_id

-- name: list_workers
-- In WorkerInfo's field order (rows.WORKERS).
SELECT id, hostname, pid, queues, started_at, last_seen_at, expires_at, memory_mb, kinds
FROM conveyor_workers
WHERE expires_at >= now() ORDER BY started_at
