-- Session statements of the PostgreSQL store's connections.

-- name: learn_array_types
-- asyncpg has no built-in codec for the int4[], int8[] and float8[] parameters of the
-- exchange and heartbeat and looks them up on each connection's first such statement;
-- preparing this when a connection opens keeps those look-ups out of an idle worker's polls.
SELECT NULL::int4[], NULL::int8[], NULL::float8[]

-- name: rollback
ROLLBACK

-- name: set_scope
-- The first statement of each transaction the API's store runs for a caller: it acts as
-- the API's role (:role, which owns nothing and is held to the row security policies of
-- migration 0009) and sees the rows of :tenant_id only, or with :operator every tenant's.
-- Each lasts until the transaction ends (is_local), so a pooled connection carries
-- nothing to its next call, behind PgBouncer in transaction mode too.
SELECT set_config('role', :role, true),
       set_config('conveyor.tenant_id', coalesce(:tenant_id::text, ''), true),
       set_config('conveyor.operator', CASE WHEN :operator::bool THEN 'on' ELSE 'off' END, true)

-- name: role_usable
-- :role when it exists and the login role may act as it (SET ROLE), else NULL. A
-- superuser may act as any role.
SELECT CASE WHEN to_regrole(:role) IS NOT NULL
                 AND pg_has_role(current_user, to_regrole(:role), 'MEMBER')
            THEN :role::text END
