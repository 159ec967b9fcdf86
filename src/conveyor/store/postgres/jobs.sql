-- Jobs of the PostgreSQL store by id: read, cancel, retry; and pruning. Parameters are
-- named (:name). A :tenant_id of NULL is any tenant (an operator); another tenant's job is
-- no job at all. With :events a change writes its event in its statement (the store sends
-- the notice after the commit: see announcer.py).

-- name: get_job
SELECT * FROM conveyor_jobs
WHERE id = :job_id AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)

-- name: cancel
-- A queued job is cancelled at once (job.cancelled); a running one is asked to stop, and
-- its worker's outcome writes the event.
WITH changed AS (
    UPDATE conveyor_jobs
    SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
        cancel_requested = true
    WHERE id = :job_id AND state IN ('queued', 'running')
      AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
    RETURNING *
),
cancelled_event AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt)
    SELECT tenant_id, 'job.cancelled', id, kind, queue, attempt
    FROM changed WHERE state = 'cancelled' AND :events::boolean
)
SELECT * FROM changed

-- name: retry
-- Queued again: job.queued, as an enqueue writes it, with the job's attempt.
WITH changed AS (
    UPDATE conveyor_jobs
    SET state = 'queued', run_at = now(), result = NULL, finished_at = NULL, started_at = NULL,
        cancel_requested = false, locked_by = NULL, lease_expires_at = NULL, progress = NULL,
        progress_message = NULL,
        max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END
    WHERE id = :job_id AND state IN ('failed', 'cancelled')
      AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
    RETURNING *
),
queued_event AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body)
    SELECT tenant_id, 'job.queued', id, kind, queue, attempt,
           jsonb_build_object('priority', priority, 'run_at', extract(epoch FROM run_at))
    FROM changed WHERE :events::boolean
)
SELECT * FROM changed

-- name: prune
-- Oldest finished jobs first, in batches, with their requests; periodic ticks past the
-- same age go too.
WITH ticks AS (
    DELETE FROM conveyor_periodic_ticks WHERE tick < now() - make_interval(secs => :older_than_s)
),
old AS (
    SELECT id FROM conveyor_jobs
    WHERE finished_at < now() - make_interval(secs => :older_than_s)
      AND state IN ('completed', 'failed', 'cancelled')
    ORDER BY finished_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
requests AS (
    DELETE FROM conveyor_requests WHERE job_id IN (SELECT id FROM old)
)
DELETE FROM conveyor_jobs WHERE id IN (SELECT id FROM old)

-- part: list_jobs
-- Newest first; the filter's conditions are parts below, named after its fields.
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
created_at >= to_timestamp(:created_after)

-- part: list_jobs_where_created_before
created_at < to_timestamp(:created_before)

-- part: list_jobs_tail
ORDER BY id DESC LIMIT :limit
