-- Row security: the database holds the API to one tenant's rows, whatever a statement
-- forgets (docs/operations.md).
--
-- Roles (cluster-wide, so created only if absent): conveyor_api (NOLOGIN, NOBYPASSRLS,
-- owns nothing), which the API's store acts as per transaction, and conveyor_worker
-- (NOLOGIN), for a worker login role that is not the owner. A migrating role that may
-- not create roles fails here with a message naming docs/operations.md: an administrator
-- creates the two roles there, once per cluster, and the migration is run again.
--
-- conveyor_worker sees every row through a policy of its own rather than BYPASSRLS:
-- only a superuser may grant BYPASSRLS on PostgreSQL 15 (16: a role that has it), which
-- managed databases do not give.
--
-- ENABLE, not FORCE: the owner (the migrating role) stays exempt, since migrations must
-- read and change every row; FORCE would make them touch nothing. conveyor_api owns
-- nothing, so the policies always hold it.
DO $$
BEGIN
    IF to_regrole('conveyor_api') IS NULL THEN
        CREATE ROLE conveyor_api NOLOGIN NOBYPASSRLS;
    END IF;
    IF to_regrole('conveyor_worker') IS NULL THEN
        CREATE ROLE conveyor_worker NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role % may not create the roles conveyor_api and conveyor_worker',
        current_user
        USING HINT = 'create them as an administrator (docs/operations.md, "Database '
                     'roles"), then run the migration again';
END
$$;

-- The login role that migrates may act as both (the API's store switches to
-- conveyor_api per transaction); other login roles are granted them as
-- docs/operations.md says.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'conveyor_api', 'MEMBER') THEN
        EXECUTE format('GRANT conveyor_api TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'conveyor_worker', 'MEMBER') THEN
        EXECUTE format('GRANT conveyor_worker TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role % may not be granted conveyor_api and conveyor_worker',
        current_user
        USING HINT = 'grant them to it as an administrator (docs/operations.md, "Database '
                     'roles"), then run the migration again';
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO conveyor_api, conveyor_worker',
                   current_schema());
END
$$;

-- The API: requests and their jobs (created, read, cancelled, retried), the queue
-- settings operators change through it, and what its statistics and health read.
GRANT SELECT, INSERT, UPDATE ON conveyor_jobs, conveyor_requests TO conveyor_api;
GRANT SELECT, INSERT, UPDATE ON conveyor_queues TO conveyor_api;
GRANT SELECT, DELETE ON conveyor_offers TO conveyor_api;
GRANT SELECT ON conveyor_workers, conveyor_schema TO conveyor_api;
GRANT USAGE ON SEQUENCE conveyor_jobs_id_seq, conveyor_requests_id_seq TO conveyor_api;

-- Workers: everything they claim, settle, rescue, prune and register.
GRANT SELECT, INSERT, UPDATE, DELETE ON conveyor_jobs, conveyor_requests, conveyor_queues,
    conveyor_workers, conveyor_offers, conveyor_periodic_ticks TO conveyor_worker;
GRANT SELECT ON conveyor_schema TO conveyor_worker;
GRANT USAGE ON SEQUENCE conveyor_jobs_id_seq, conveyor_requests_id_seq TO conveyor_worker;

-- Tables and sequences later migrations create (as this same role) are readable by the
-- API and usable by workers; a migration that gives the API more grants it itself.
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO conveyor_api;
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO conveyor_worker;
ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO conveyor_api, conveyor_worker;

-- Tenant-owned tables: the API sees and writes the rows of the tenant its transaction set
-- (conveyor.tenant_id), or every row when it set conveyor.operator to 'on' (operator
-- callers only). Unset, current_setting(..., true) is NULL or '': no row.
ALTER TABLE conveyor_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_requests ENABLE ROW LEVEL SECURITY;

CREATE POLICY conveyor_api_tenant ON conveyor_jobs TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
CREATE POLICY conveyor_api_tenant ON conveyor_requests TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');

CREATE POLICY conveyor_worker_all ON conveyor_jobs TO conveyor_worker
    USING (true) WITH CHECK (true);
CREATE POLICY conveyor_worker_all ON conveyor_requests TO conveyor_worker
    USING (true) WITH CHECK (true);
