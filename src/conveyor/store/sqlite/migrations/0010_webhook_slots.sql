-- Issue 13: the delivery slots of webhook endpoints, which cap the deliveries in flight
-- to one endpoint across every worker (CONVEYOR_WEBHOOK_ENDPOINT_CONCURRENCY). A delivery
-- attempt (holder: job id and attempt) takes a row before it sends and deletes it after;
-- the row of a holder that died lapses at expires_at (Unix seconds).
CREATE TABLE conveyor_webhook_slots (
    webhook_id INTEGER NOT NULL REFERENCES conveyor_webhooks (id) ON DELETE CASCADE,
    holder     TEXT    NOT NULL,
    tenant_id  TEXT    NOT NULL,
    expires_at REAL    NOT NULL,
    PRIMARY KEY (webhook_id, holder)
);
