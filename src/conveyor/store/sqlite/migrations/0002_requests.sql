-- Requests: what a user asked for (input, owner), created with its job in one transaction.
-- The job carries the state, progress, result and errors; a request is pruned with its job.
CREATE TABLE conveyor_requests (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT    NOT NULL,
    caller_id       TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    input           TEXT    NOT NULL,
    job_id          INTEGER NOT NULL,
    idempotency_key TEXT,
    http_request_id TEXT,
    created_at      REAL    NOT NULL
);

-- The same Idempotency-Key from the same caller names the same request.
CREATE UNIQUE INDEX conveyor_requests_idempotency ON conveyor_requests (tenant_id, caller_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Listing a tenant's requests newest first; pruning by job.
CREATE INDEX conveyor_requests_tenant ON conveyor_requests (tenant_id, id);
CREATE INDEX conveyor_requests_job ON conveyor_requests (job_id);
