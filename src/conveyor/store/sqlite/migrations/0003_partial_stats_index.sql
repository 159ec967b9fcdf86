-- The statistics index holds finished jobs only. Every query that reads it filters on
-- finished_at (a comparison implies NOT NULL, so SQLite still picks it), and queued and
-- running jobs are counted off their own partial indexes; on all rows, every enqueue
-- maintained it for nothing (bulk enqueue was measurably slower).
DROP INDEX conveyor_jobs_stats;
CREATE INDEX conveyor_jobs_stats ON conveyor_jobs (queue, state, finished_at)
    WHERE finished_at IS NOT NULL;
