-- Fair share between tenants within a queue. Claims take the tenants of a queue in turn,
-- so the claim index puts the tenant after the kind: a claim finds the tenants holding
-- queued jobs of a kind with one descent each (a skip scan) and walks each tenant's range
-- in priority, run_at, id order. It replaces the index on (queue, kind, priority, run_at,
-- id): one partial index over the queued jobs keeps every enqueue to one index to
-- maintain there.
CREATE INDEX conveyor_jobs_claim_tenant ON conveyor_jobs (queue, kind, tenant_id, priority, run_at, id)
    WHERE state = 'queued';
DROP INDEX conveyor_jobs_claim_kind;

-- Per-(queue, tenant) limits: a cluster-wide cap on the tenant's running jobs in the queue,
-- a cap on its submissions ("100/minute", enforced at admission by the API) and its weight
-- in the turns the claim takes. A row exists only while one of them is set.
CREATE TABLE conveyor_tenant_limits (
    queue       text    NOT NULL,
    tenant_id   text    NOT NULL,
    concurrency integer CHECK (concurrency >= 1),
    rate        text,
    weight      integer CHECK (weight BETWEEN 1 AND 1000),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, tenant_id)
);

-- A queue where some tenant has a concurrency cap is claimed under its queue row's lock,
-- as a queue with a cluster-wide limit is, so that the running count of each capped
-- tenant is exact. Kept by set_tenant_limits in the same transaction as the caps.
ALTER TABLE conveyor_queues ADD COLUMN tenant_caps boolean NOT NULL DEFAULT false;
