-- Workers claim only the kinds they have registered. The claim index leads with the kind
-- after the queue, so a claim walks one short range per (queue, kind) it serves: a pile of
-- jobs of a kind this worker lacks, at the head of a queue, is never read by its claims.
-- It replaces the claim index on (queue, priority, run_at, id): the statistics and the
-- next due time read this one as well, and two partial indexes over the queued jobs would
-- make every enqueue maintain both.
CREATE INDEX conveyor_jobs_claim_kind ON conveyor_jobs (queue, kind, priority, run_at, id)
    WHERE state = 'queued';
DROP INDEX conveyor_jobs_claim;

-- The kinds each worker runs (a JSON array), for `conveyor queues` and `jobs show`.
ALTER TABLE conveyor_workers ADD COLUMN kinds TEXT NOT NULL DEFAULT '[]';
