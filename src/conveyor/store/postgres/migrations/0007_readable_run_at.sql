-- Before issue 10 an enqueue accepted any delay, and PostgreSQL stored run_at values up to
-- 294276 AD that the driver cannot read back into a Python datetime (years 1-9999): every
-- page listing such a job failed. New delays are held to 10 years at the edge
-- (conveyor.engine.limits); this brings the rows stored before into the readable range,
-- keeping them as far off as it allows. One pass over the table, once.
UPDATE conveyor_jobs SET run_at = '9999-12-31 23:59:59+00'
WHERE run_at > '9999-12-31 23:59:59+00';
UPDATE conveyor_jobs SET run_at = '0001-01-01 00:00:00+00'
WHERE run_at < '0001-01-01 00:00:00+00';
