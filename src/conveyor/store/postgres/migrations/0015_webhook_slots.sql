-- Issue 13: the delivery slots of webhook endpoints, which cap the deliveries in flight
-- to one endpoint across every worker (CONVEYOR_WEBHOOK_ENDPOINT_CONCURRENCY). A delivery
-- attempt (holder: job id and attempt) takes a row before it sends and deletes it after;
-- the row of a holder that died lapses at expires_at.
CREATE TABLE conveyor_webhook_slots (
    webhook_id bigint      NOT NULL REFERENCES conveyor_webhooks (id) ON DELETE CASCADE,
    holder     text        NOT NULL,
    tenant_id  text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (webhook_id, holder)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON conveyor_webhook_slots TO conveyor_api;
ALTER TABLE conveyor_webhook_slots ENABLE ROW LEVEL SECURITY;
CREATE POLICY conveyor_api_tenant ON conveyor_webhook_slots TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
CREATE POLICY conveyor_worker_all ON conveyor_webhook_slots TO conveyor_worker
    USING (true) WITH CHECK (true);
