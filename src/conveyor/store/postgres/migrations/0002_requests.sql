-- Requests: what a user asked for (input, owner), created with its job in one transaction.
-- The job carries the state, progress, result and errors; a request is pruned with its job.
CREATE TABLE conveyor_requests (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    caller_id       text        NOT NULL,
    kind            text        NOT NULL,
    input           jsonb       NOT NULL,
    job_id          bigint      NOT NULL,
    idempotency_key text,
    http_request_id text,
    created_at      timestamptz NOT NULL
);

-- The same Idempotency-Key from the same caller names the same request.
CREATE UNIQUE INDEX conveyor_requests_idempotency ON conveyor_requests (tenant_id, caller_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Listing a tenant's requests newest first; pruning by job.
CREATE INDEX conveyor_requests_tenant ON conveyor_requests (tenant_id, id);
CREATE INDEX conveyor_requests_job ON conveyor_requests (job_id);
