-- Per-(queue, tenant) limits of the PostgreSQL store (conveyor_tenant_limits). Parameters
-- are named (:name).

-- name: lock_queue
-- The queue's row, made if missing and locked: claims of a queue with capped tenants lock
-- it first, so a cap set here and the running counts they read cannot interleave.
INSERT INTO conveyor_queues (name, updated_at) VALUES (:queue, now())
ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at

-- name: upsert
INSERT INTO conveyor_tenant_limits (queue, tenant_id, concurrency, rate, weight, updated_at)
VALUES (:queue, :tenant_id, :concurrency, :rate, :weight, now())
ON CONFLICT (queue, tenant_id) DO UPDATE
SET concurrency = excluded.concurrency, rate = excluded.rate, weight = excluded.weight,
    updated_at = excluded.updated_at

-- name: delete
DELETE FROM conveyor_tenant_limits WHERE queue = :queue AND tenant_id = :tenant_id

-- name: mark_caps
-- Whether the queue's claims must lock its row (see exchange.sql); true also stops
-- handoffs into it (insert_job), since a handoff does not count running jobs.
UPDATE conveyor_queues
SET tenant_caps = EXISTS (
    SELECT FROM conveyor_tenant_limits WHERE queue = :queue AND concurrency IS NOT NULL)
WHERE name = :queue
RETURNING tenant_caps

-- name: drop_offers
DELETE FROM conveyor_offers WHERE queue = :queue

-- name: list
SELECT queue, tenant_id, concurrency, rate, weight FROM conveyor_tenant_limits
WHERE :queue::text IS NULL OR queue = :queue
ORDER BY queue, tenant_id
