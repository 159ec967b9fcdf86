-- Each worker's resident memory in MiB, written at registration and with every renewal
-- of its heartbeat: GET /health reports the workers' memory from it. NULL until known.
ALTER TABLE conveyor_workers ADD COLUMN memory_mb double precision;
