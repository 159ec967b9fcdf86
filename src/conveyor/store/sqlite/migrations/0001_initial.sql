-- Jobs, queue settings and live workers. Times are Unix seconds (REAL).
CREATE TABLE conveyor_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused after pruning
    tenant_id        TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    priority         INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    payload          TEXT    NOT NULL,
    result           TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at           REAL    NOT NULL,
    timeout_s        REAL,
    unique_key       TEXT,
    locked_by        TEXT,
    lease_expires_at REAL,
    errors           TEXT    NOT NULL DEFAULT '[]',
    progress         REAL,
    progress_message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    meta             TEXT    NOT NULL DEFAULT '{}',
    created_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL
);

-- The claim index holds only queued jobs, in claim order, so it stays small however many
-- finished jobs the table keeps.
CREATE INDEX conveyor_jobs_claim ON conveyor_jobs (queue, priority, run_at, id) WHERE state = 'queued';

-- Leases: the rescuer scans expiries, heartbeats look up a worker's jobs.
CREATE INDEX conveyor_jobs_running ON conveyor_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX conveyor_jobs_running_queue ON conveyor_jobs (queue, locked_by) WHERE state = 'running';

-- Statistics count jobs by queue and state (a covering scan) and read recent finishes.
CREATE INDEX conveyor_jobs_stats ON conveyor_jobs (queue, state, finished_at);
CREATE INDEX conveyor_jobs_prune ON conveyor_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- One active job per (tenant, unique_key): the database enforces what enqueue checks.
CREATE UNIQUE INDEX conveyor_jobs_unique ON conveyor_jobs (tenant_id, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

CREATE TABLE conveyor_queues (
    name              TEXT PRIMARY KEY,
    paused            INTEGER NOT NULL DEFAULT 0,
    concurrency_limit INTEGER CHECK (concurrency_limit >= 1),  -- across all workers; NULL: none
    updated_at        REAL    NOT NULL
);

-- One row per periodic tick enqueued: the primary key makes a tick enqueue once, however
-- many workers reach it.
CREATE TABLE conveyor_periodic_ticks (
    kind   TEXT    NOT NULL,
    tick   REAL    NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (kind, tick)
);

CREATE TABLE conveyor_workers (
    id           TEXT PRIMARY KEY,
    hostname     TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT    NOT NULL,
    started_at   REAL    NOT NULL,
    last_seen_at REAL    NOT NULL,
    expires_at   REAL    NOT NULL  -- a worker not seen by then is presumed dead
);
