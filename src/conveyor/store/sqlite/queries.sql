-- SQLite statements of SqliteStore. Parameters are named (:name) and bound as ?1.. (see
-- conveyor/store/sqlfile.py); times are Unix seconds.
-- Every statement that changes a running job is guarded on state, attempt and owner.

-- -- connection and transactions ---------------------------------------------------------
-- name: journal_wal
PRAGMA journal_mode=WAL

-- name: synchronous_full
PRAGMA synchronous=FULL

-- name: synchronous_normal
PRAGMA synchronous=NORMAL

-- name: foreign_keys_on
PRAGMA foreign_keys=ON

-- name: temp_store_memory
PRAGMA temp_store=MEMORY

-- name: data_version
-- A counter in shared memory that changes when another connection commits.
PRAGMA data_version

-- name: begin_write
-- Takes the file's write lock up front: what makes claims from several processes exclusive.
BEGIN IMMEDIATE

-- name: begin_read
BEGIN

-- name: commit
COMMIT

-- name: rollback
ROLLBACK

-- -- schema ------------------------------------------------------------------------------
-- name: schema_table
CREATE TABLE IF NOT EXISTS conveyor_schema (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'conveyor_schema')

-- name: schema_version
SELECT coalesce(max(version), 0) FROM conveyor_schema

-- name: schema_record
INSERT INTO conveyor_schema (version, applied_at) VALUES (:version, :now)

-- name: job_columns
SELECT name FROM pragma_table_info('conveyor_jobs') ORDER BY cid

-- -- producing ---------------------------------------------------------------------------
-- name: insert_job
-- Bound per job from a tuple in this parameter order (the store checks it at import).
INSERT INTO conveyor_jobs (
    id, tenant_id, queue, kind, priority, state, payload, attempt, max_attempts,
    run_at, timeout_s, unique_key, meta, created_at
) VALUES (
    :id, :tenant_id, :queue, :kind, :priority, 'queued', :payload, 0, :max_attempts,
    :run_at, :timeout_s, :unique_key, :meta, :now
)

-- name: next_job_id
SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'conveyor_jobs'), 0)

-- name: find_active_unique
SELECT id FROM conveyor_jobs
WHERE tenant_id = :tenant_id AND unique_key = :unique_key AND state IN ('queued', 'running')

-- name: queue_tenants
-- The tenants holding queued jobs of :kind in :queue: a skip scan of the claim index, one
-- seek per tenant, never a read of each tenant's jobs.
WITH RECURSIVE t(tenant_id) AS (
    SELECT (SELECT tenant_id FROM conveyor_jobs
            WHERE state = 'queued' AND queue = :queue AND kind = :kind
            ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id FROM conveyor_jobs AS j
            WHERE j.state = 'queued' AND j.queue = :queue AND j.kind = :kind
              AND j.tenant_id > t.tenant_id
            ORDER BY j.tenant_id LIMIT 1)
    FROM t WHERE t.tenant_id IS NOT NULL
)
SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL

-- name: tenant_candidates
-- A tenant's first :limit due jobs of :kind in :queue in claim order, after the row
-- (:after_priority, :after_run_at, :after_id) (0, 0, 0 from the start): a range of the
-- claim index.
SELECT id, tenant_id, priority, run_at FROM conveyor_jobs
WHERE state = 'queued' AND queue = :queue AND kind = :kind AND tenant_id = :tenant_id
  AND run_at <= :now AND (priority, run_at, id) > (:after_priority, :after_run_at, :after_id)
ORDER BY priority, run_at, id
LIMIT :limit

-- name: tenants_candidates
-- The first :limit due jobs of :kind in :queue of each tenant of :tenants (a JSON array),
-- in claim order: one short range of the claim index per tenant (the correlated list
-- subquery runs once per tenant), in one statement however many tenants there are.
SELECT c.id, c.tenant_id, c.priority, c.run_at
FROM json_each(:tenants) AS t, conveyor_jobs AS c
WHERE c.id IN (
    SELECT id FROM conveyor_jobs
    WHERE state = 'queued' AND queue = :queue AND kind = :kind AND tenant_id = t.value
      AND run_at <= :now
    ORDER BY priority, run_at, id
    LIMIT :limit
)

-- part: claim_running
-- The change that makes queued jobs running under :worker_id, of both claims.
UPDATE conveyor_jobs
SET state = 'running',
    attempt = attempt + 1,
    locked_by = :worker_id,
    lease_expires_at = :now + :lease_s,
    started_at = :now,
    progress = NULL,
    progress_message = NULL

-- name: claim_lone
-- The claim of a queue whose last claim found one tenant (:tenant_id) and no caps: that
-- tenant's first :limit due jobs of the :kinds (a JSON array) in claim order, made running,
-- in one statement, with neither the skip scan nor the turns of a fair claim. Nothing is
-- claimed if the queue holds another tenant's queued jobs of those kinds (a descent of the
-- claim index either side of the tenant's range per kind): the store then claims fairly.
-- RETURNING order is unspecified: the store sorts the claimed rows itself.
-- include: claim_running
WHERE id IN (
    SELECT c.id FROM json_each(:kinds) AS k, conveyor_jobs AS c
    WHERE c.id IN (
        SELECT id FROM conveyor_jobs
        WHERE state = 'queued' AND queue = :queue AND kind = k.value AND tenant_id = :tenant_id
          AND run_at <= :now
        ORDER BY priority, run_at, id
        LIMIT :limit
    )
    ORDER BY c.priority, c.run_at, c.id
    LIMIT :limit
)
AND NOT EXISTS (
    SELECT 1 FROM json_each(:kinds) AS k
    WHERE EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state = 'queued' AND queue = :queue AND kind = k.value AND tenant_id < :tenant_id)
       OR EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state = 'queued' AND queue = :queue AND kind = k.value AND tenant_id > :tenant_id)
)
RETURNING *

-- name: tenant_limits_for
SELECT tenant_id, concurrency, weight FROM conveyor_tenant_limits WHERE queue = :queue

-- name: has_tenant_caps
SELECT EXISTS (
    SELECT 1 FROM conveyor_tenant_limits WHERE queue = :queue AND concurrency IS NOT NULL)

-- name: count_running_of_tenant
SELECT count(*) FROM conveyor_jobs
WHERE state = 'running' AND queue = :queue AND tenant_id = :tenant_id

-- name: claim
-- The jobs the merge chose (:ids, a JSON array), made running. RETURNING order is
-- unspecified in SQLite: the store sorts the claimed rows itself.
-- include: claim_running
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'queued'
RETURNING *

-- name: queue_settings_for
SELECT paused, concurrency_limit FROM conveyor_queues WHERE name = :queue

-- name: count_running
SELECT count(*) FROM conveyor_jobs WHERE state = 'running' AND queue = :queue

-- name: next_run_at
-- Only asked after a claim drained the queue's due jobs of the worker's kinds, so it
-- reads scheduled rows only.
SELECT min((
    SELECT min(run_at) FROM conveyor_jobs
    WHERE state = 'queued' AND queue = :queue AND kind = k.value AND run_at > :now
))
FROM json_each(:kinds) AS k

-- name: complete
UPDATE conveyor_jobs
SET state = 'completed', result = :result, finished_at = :now, lease_expires_at = NULL,
    progress = 1.0
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: retry_later
UPDATE conveyor_jobs
SET state = 'queued', run_at = :now + :delay, errors = json_insert(errors, '$[#]', json(:error)),
    locked_by = NULL, lease_expires_at = NULL
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: fail
UPDATE conveyor_jobs
SET state = 'failed', finished_at = :now, errors = json_insert(errors, '$[#]', json(:error)),
    lease_expires_at = NULL
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: cancelled
UPDATE conveyor_jobs
SET state = 'cancelled', finished_at = :now, lease_expires_at = NULL
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: release
-- Handed back at shutdown: the attempt is not charged and run_at is kept, so the job
-- keeps its place in line.
UPDATE conveyor_jobs
SET state = 'queued', attempt = attempt - 1, locked_by = NULL, lease_expires_at = NULL,
    started_at = NULL, progress = NULL, progress_message = NULL
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: progress
UPDATE conveyor_jobs
SET progress = :fraction, progress_message = :message
WHERE id = :id AND state = 'running' AND attempt = :attempt AND locked_by = :worker_id

-- name: leases_held
SELECT id, attempt, cancel_requested FROM conveyor_jobs
WHERE state = 'running' AND locked_by = :worker_id

-- name: renew_leases
-- Only the jobs the worker reported (:ids, checked against their attempt just before in the
-- same transaction): a job the worker lost track of must not be kept alive by it.
UPDATE conveyor_jobs SET lease_expires_at = :now + :lease_s
WHERE state = 'running' AND locked_by = :worker_id AND id IN (SELECT value FROM json_each(:ids))

-- name: renew_worker
UPDATE conveyor_workers
SET last_seen_at = :now, expires_at = :now + :lease_s, memory_mb = coalesce(:memory_mb, memory_mb)
WHERE id = :worker_id

-- name: rescue
-- A job whose lease expired lost its worker: its attempt counts. It is cancelled if a
-- cancel was asked, failed if no attempt is left, else queued again in its old place.
-- Also returned: the run_at and the error entry appended (type, message), which the
-- job's event tells.
UPDATE conveyor_jobs
SET state = CASE
        WHEN cancel_requested THEN 'cancelled'
        WHEN attempt >= max_attempts THEN 'failed'
        ELSE 'queued'
    END,
    finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN :now END,
    errors = CASE
        WHEN cancel_requested THEN errors
        ELSE json_insert(errors, '$[#]', json_object(
            'at', :now, 'attempt', attempt, 'type', 'LeaseExpired',
            'message', 'worker ' || coalesce(locked_by, '?') || ' stopped renewing its lease',
            'traceback', NULL))
    END,
    locked_by = NULL,
    lease_expires_at = NULL
WHERE id IN (
    SELECT id FROM conveyor_jobs
    WHERE state = 'running' AND lease_expires_at < :now
    LIMIT :limit
)
RETURNING id, state, queue, run_at, errors ->> '$[#-1].type', errors ->> '$[#-1].message'

-- name: forget_workers
DELETE FROM conveyor_workers WHERE expires_at < :now

-- name: prunable
SELECT id FROM conveyor_jobs
WHERE finished_at < :before AND state IN ('completed', 'failed', 'cancelled')
ORDER BY finished_at
LIMIT :limit

-- name: prune_requests
DELETE FROM conveyor_requests WHERE job_id IN (SELECT value FROM json_each(:ids))

-- name: prune
DELETE FROM conveyor_jobs WHERE id IN (SELECT value FROM json_each(:ids))

-- name: get_job
-- A :tenant_id of NULL is any tenant (an operator); another tenant's job is no job at all,
-- here and in cancel and retry.
SELECT * FROM conveyor_jobs WHERE id = :id AND (:tenant_id IS NULL OR tenant_id = :tenant_id)

-- name: adopt
-- Jobs running under this worker that it does not know of (:known, a JSON array of ids).
SELECT * FROM conveyor_jobs
WHERE state = 'running' AND locked_by = :worker_id
  AND id NOT IN (SELECT value FROM json_each(:known))

-- name: cancel
UPDATE conveyor_jobs
SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
    finished_at = CASE WHEN state = 'queued' THEN :now ELSE finished_at END,
    cancel_requested = 1
WHERE id = :id AND state IN ('queued', 'running') AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
RETURNING state

-- name: retry
UPDATE conveyor_jobs
SET state = 'queued', run_at = :now, result = NULL, finished_at = NULL, started_at = NULL,
    cancel_requested = 0, locked_by = NULL, lease_expires_at = NULL, progress = NULL,
    progress_message = NULL,
    max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END
WHERE id = :id AND state IN ('failed', 'cancelled') AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
RETURNING queue

-- name: queue_exists
-- A queue exists once it has a setting, any job (each state read off its partial index,
-- whose first column is the queue) or a live worker serving it.
SELECT EXISTS (SELECT 1 FROM conveyor_queues WHERE name = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'queued' AND queue = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'running' AND queue = :queue)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE finished_at IS NOT NULL AND queue = :queue)
    OR EXISTS (
        SELECT 1 FROM conveyor_workers AS w, json_each(w.queues) AS q
        WHERE w.expires_at >= :now AND q.key = :queue
    )

-- name: set_paused
INSERT INTO conveyor_queues (name, paused, updated_at) VALUES (:queue, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at

-- name: set_limit
INSERT INTO conveyor_queues (name, concurrency_limit, updated_at) VALUES (:queue, :limit, :now)
ON CONFLICT (name) DO UPDATE
SET concurrency_limit = excluded.concurrency_limit, updated_at = excluded.updated_at

-- name: insert_tick
INSERT INTO conveyor_periodic_ticks (kind, tick, job_id) VALUES (:kind, :tick, :job_id)
ON CONFLICT DO NOTHING

-- name: prune_ticks
DELETE FROM conveyor_periodic_ticks WHERE tick < :before

-- name: stats_counts
-- Active jobs only, each part off the partial index that holds its state: O(queued +
-- running), whatever the number of finished jobs kept. Queued jobs by kind too (the claim
-- index's order), so that kinds no live worker runs can be shown. Every statistic of jobs
-- counts one tenant's (:tenant_id) or, when it is NULL, every tenant's.
SELECT queue, 'queued', kind, count(*) FROM conveyor_jobs WHERE state = 'queued' AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, kind
UNION ALL
SELECT queue, 'running', NULL, count(*) FROM conveyor_jobs WHERE state = 'running' AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY queue

-- name: stats_finished
-- Jobs that finished since :since, by queue and state: a range of the prune index, so
-- the cost follows the rate of jobs, not the size of the table.
SELECT queue, state, NULL, count(*) FROM conveyor_jobs
WHERE finished_at >= :since AND finished_at IS NOT NULL
  AND state IN ('completed', 'failed', 'cancelled') AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, state

-- name: stats_due
SELECT queue, count(*), min(run_at) FROM conveyor_jobs
WHERE state = 'queued' AND run_at <= :now AND (:tenant_id IS NULL OR tenant_id = :tenant_id) GROUP BY queue

-- name: stats_recent
SELECT queue, state, count(*) FROM conveyor_jobs
WHERE state IN ('completed', 'failed') AND finished_at >= :since AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY queue, state

-- name: stats_run_times
SELECT finished_at - started_at FROM conveyor_jobs
WHERE queue = :queue AND state = 'completed' AND finished_at IS NOT NULL AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
ORDER BY finished_at DESC LIMIT 1000

-- name: queue_settings
SELECT name, paused, concurrency_limit FROM conveyor_queues

-- name: register_worker
INSERT OR REPLACE INTO conveyor_workers (
    id, hostname, pid, queues, started_at, last_seen_at, expires_at, kinds, memory_mb
)
VALUES (:id, :hostname, :pid, :queues, :now, :now, :now + :lease_s, :kinds, :memory_mb)

-- name: unregister_worker
DELETE FROM conveyor_workers WHERE id = :id

-- part: worker_columns
-- In the order of WorkerInfo's fields (checked by the store at import).
id, hostname, pid, queues, started_at, last_seen_at, expires_at, memory_mb, kinds

-- name: list_workers
SELECT
-- include: worker_columns
FROM conveyor_workers
WHERE expires_at >= :now ORDER BY started_at

-- -- requests ----------------------------------------------------------------------------
-- name: find_request_by_key
-- The tenant's key, whichever of its callers sent it (migration 0008).
SELECT id FROM conveyor_requests
WHERE tenant_id = :tenant_id AND idempotency_key = :idempotency_key

-- name: insert_request
INSERT INTO conveyor_requests (
    tenant_id, caller_id, kind, input, job_id, idempotency_key, http_request_id, created_at
) VALUES (
    :tenant_id, :caller_id, :kind, :input, :job_id, :idempotency_key, :http_request_id, :now
)
RETURNING id

-- part: request_columns
-- A request's columns, in the order of Request's fields, then its job's (j.*).
r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, r.http_request_id,
r.created_at, j.*

-- name: get_request
-- A LEFT JOIN: a request whose job was pruned is told apart from no request at all.
SELECT
-- include: request_columns
FROM conveyor_requests r LEFT JOIN conveyor_jobs j ON j.id = r.job_id
WHERE r.id = :id AND r.tenant_id = :tenant_id

-- name: queue_position
-- Queued, due jobs of the same queue and tenant that a worker will claim before this one:
-- claims take tenants in turn, and other tenants' work is theirs to know.
SELECT count(*) FROM conveyor_jobs
WHERE state = 'queued' AND queue = :queue AND tenant_id = :tenant_id AND run_at <= :now
  AND (priority < :priority
       OR (priority = :priority AND (run_at < :run_at OR (run_at = :run_at AND id < :id))))

-- -- lists (assembled by conveyor/store/filters.py: the head, a condition per field set,
-- -- the tail) -------------------------------------------------------------------------
-- part: list_jobs
SELECT * FROM conveyor_jobs

-- part: list_jobs_where_state
state = :state

-- part: list_jobs_where_queue
queue = :queue

-- part: list_jobs_where_kind
kind = :kind

-- part: list_jobs_where_tenant_id
tenant_id = :tenant_id

-- part: list_jobs_where_before_id
id < :before_id

-- part: list_jobs_where_created_after
created_at >= :created_after

-- part: list_jobs_where_created_before
created_at < :created_before

-- part: list_jobs_tail
ORDER BY id DESC LIMIT :limit

-- part: list_requests
SELECT
-- include: request_columns
FROM conveyor_requests r JOIN conveyor_jobs j ON j.id = r.job_id

-- part: list_requests_where_tenant_id
r.tenant_id = :tenant_id

-- part: list_requests_where_state
j.state = :state

-- part: list_requests_where_kind
r.kind = :kind

-- part: list_requests_where_created_after
r.created_at >= :created_after

-- part: list_requests_where_created_before
r.created_at < :created_before

-- part: list_requests_where_before_id
r.id < :before_id

-- part: list_requests_tail
ORDER BY r.id DESC LIMIT :limit

-- -- tenant limits --------------------------------------------------------------------
-- name: upsert_tenant_limits
INSERT INTO conveyor_tenant_limits (queue, tenant_id, concurrency, rate, weight, updated_at)
VALUES (:queue, :tenant_id, :concurrency, :rate, :weight, :now)
ON CONFLICT (queue, tenant_id) DO UPDATE
SET concurrency = excluded.concurrency, rate = excluded.rate, weight = excluded.weight,
    updated_at = excluded.updated_at

-- name: delete_tenant_limits
DELETE FROM conveyor_tenant_limits WHERE queue = :queue AND tenant_id = :tenant_id

-- name: list_tenant_limits
SELECT queue, tenant_id, concurrency, rate, weight FROM conveyor_tenant_limits
WHERE :queue IS NULL OR queue = :queue
ORDER BY queue, tenant_id
