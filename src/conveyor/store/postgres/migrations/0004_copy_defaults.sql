-- Defaults for the columns a bulk COPY of jobs due now leaves out: their state, and the
-- transaction's clock for when they were created and become due. Each column left out is
-- one value fewer to encode per row in the client and to parse in the server.
ALTER TABLE conveyor_jobs
    ALTER COLUMN state SET DEFAULT 'queued',
    ALTER COLUMN run_at SET DEFAULT now(),
    ALTER COLUMN created_at SET DEFAULT now();
