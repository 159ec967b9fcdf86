-- Session statements of the PostgreSQL store's connections.

-- name: learn_array_types
-- asyncpg has no built-in codec for the int4[], int8[] and float8[] parameters of the
-- exchange and heartbeat and looks them up on each connection's first such statement;
-- preparing this when a connection opens keeps those look-ups out of an idle worker's polls.
SELECT NULL::int4[], NULL::int8[], NULL::float8[]

-- name: rollback
ROLLBACK
