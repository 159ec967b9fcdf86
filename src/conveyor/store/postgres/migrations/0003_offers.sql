-- Handoff: an idle worker offers its free slots per queue, and an enqueue that finds an
-- offer inserts its job already running under that worker and hands it over in the NOTIFY.
-- The worker starts the job without a claim: the enqueue-to-start path has one durable
-- commit instead of two.
--
-- A claim that comes back short writes the slots it left free; a worker adds the slots
-- its jobs free while it waits, and takes its offers back when it stops fetching. An offer
-- counts only while the worker's LISTEN connection holds the session advisory lock on
-- lock_key (a fresh key per connection): an enqueue that can take a shared lock on the key
-- knows the worker's connection, and so its notices, are gone.
CREATE TABLE conveyor_offers (
    queue     text             NOT NULL,
    worker_id text             NOT NULL,
    slots     integer          NOT NULL CHECK (slots >= 0),
    lock_key  bigint           NOT NULL,
    lease_s   double precision NOT NULL,
    PRIMARY KEY (queue, worker_id)
) WITH (
    -- Every handoff and every finished job rewrites a row: room for HOT updates.
    fillfactor = 50
);
