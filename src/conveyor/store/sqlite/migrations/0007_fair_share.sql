-- Fair share between tenants within a queue. Claims take the tenants of a queue in turn,
-- so the claim index puts the tenant after the kind: a claim finds the tenants holding
-- queued jobs of a kind with one seek each and walks each tenant's range in priority,
-- run_at, id order. It replaces the index on (queue, kind, priority, run_at, id), so that
-- an enqueue still maintains one partial index over the queued jobs.
CREATE INDEX conveyor_jobs_claim_tenant ON conveyor_jobs (queue, kind, tenant_id, priority, run_at, id)
    WHERE state = 'queued';
DROP INDEX conveyor_jobs_claim_kind;

-- Per-(queue, tenant) limits: a cap on the tenant's running jobs in the queue, a cap on
-- its submissions ("100/minute", enforced at admission by the API) and its weight in the
-- turns the claim takes. A row exists only while one of them is set.
CREATE TABLE conveyor_tenant_limits (
    queue       TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    concurrency INTEGER CHECK (concurrency >= 1),
    rate        TEXT,
    weight      INTEGER CHECK (weight BETWEEN 1 AND 1000),
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (queue, tenant_id)
);
