-- Issue 13: the event log (an outbox written in the transaction of each change it tells
-- of), the cursors of its consumers, webhook endpoints and their deliveries, and each
-- member's email preferences.

-- Events in id order. The identity's values are taken one at a time (no per-session
-- cache), so a gap in the ids is a transaction still running or one rolled back; readers
-- wait for the first (see conveyor/engine/events.py). request_id is not kept: readers
-- join conveyor_requests on job_id, so the engine's statements write no more than this.
CREATE TABLE conveyor_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  text        NOT NULL,
    type       text        NOT NULL,
    job_id     bigint      NOT NULL,
    kind       text        NOT NULL,
    queue      text        NOT NULL,
    attempt    int         NOT NULL,
    body       jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A tenant's stream resumed from an id.
CREATE INDEX conveyor_events_tenant ON conveyor_events (tenant_id, id);

-- Where a consumer of the whole log (the dispatcher of webhooks and email) has got to.
CREATE TABLE conveyor_event_cursors (
    name       text        PRIMARY KEY,
    last_id    bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A tenant's webhook endpoints. The secret signs (it must be read back, so it is kept as
-- given: docs/security.md); during a rotation's grace period the previous one signs too.
CREATE TABLE conveyor_webhooks (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            text        NOT NULL,
    url                  text        NOT NULL,
    event_types          text[]      NOT NULL,
    description          text        NOT NULL DEFAULT '',
    enabled              boolean     NOT NULL DEFAULT true,
    secret               text        NOT NULL,
    previous_secret      text,
    previous_expires_at  timestamptz,
    consecutive_failures int         NOT NULL DEFAULT 0,
    disabled_reason      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conveyor_webhooks_tenant ON conveyor_webhooks (tenant_id, id);

-- One row per attempt to deliver one message (an event, or a test ping: event_id NULL)
-- to one endpoint; message_id is the webhook-id header, the same on every attempt.
CREATE TABLE conveyor_webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        text        NOT NULL,
    webhook_id       bigint      NOT NULL REFERENCES conveyor_webhooks (id) ON DELETE CASCADE,
    message_id       text        NOT NULL,
    event_id         bigint,
    event_type       text        NOT NULL,
    job_id           bigint,
    attempt          int         NOT NULL,
    status_code      int,
    latency_ms       double precision,
    response_excerpt text,
    error            text,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conveyor_webhook_deliveries_webhook ON conveyor_webhook_deliveries (webhook_id, id);
CREATE INDEX conveyor_webhook_deliveries_created ON conveyor_webhook_deliveries (created_at);

-- Which events email a member of a tenant (event types; kinds, empty for every kind).
-- Every mail to the member carries the unsubscribe token in its link, so the token is
-- read back and kept as given (as a webhook's secret); a new one each time the
-- preferences are set.
CREATE TABLE conveyor_email_preferences (
    tenant_id         text        NOT NULL,
    user_id           text        NOT NULL,
    event_types       text[]      NOT NULL,
    kinds             text[]      NOT NULL DEFAULT '{}',
    enabled           boolean     NOT NULL DEFAULT true,
    unsubscribe_token text        NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES conveyor_memberships (tenant_id, user_id)
        ON DELETE CASCADE
);
CREATE UNIQUE INDEX conveyor_email_preferences_unsubscribe
    ON conveyor_email_preferences (unsubscribe_token);

-- The one-click unsubscribe of a mail's link, made before any tenant is known: as the
-- look-ups of 0011, a SECURITY DEFINER function that changes and returns only the row
-- its token names (pinned and granted to conveyor_api below).
CREATE FUNCTION conveyor_email_unsubscribe(p_token text)
RETURNS SETOF conveyor_email_preferences LANGUAGE sql SECURITY DEFINER
AS $$
    UPDATE conveyor_email_preferences
    SET enabled = false, updated_at = CASE WHEN enabled THEN now() ELSE updated_at END
    WHERE unsubscribe_token = p_token
    RETURNING *
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION conveyor_email_unsubscribe(text) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $$;
REVOKE EXECUTE ON FUNCTION conveyor_email_unsubscribe(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION conveyor_email_unsubscribe(text) TO conveyor_api;

-- Row security as for the other tenant-owned tables (0009): the API sees its tenant's
-- rows, or all as the operator; workers see all.
GRANT SELECT ON conveyor_events TO conveyor_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON conveyor_webhooks, conveyor_email_preferences
    TO conveyor_api;
GRANT SELECT, INSERT ON conveyor_webhook_deliveries TO conveyor_api;
GRANT INSERT ON conveyor_events TO conveyor_api;
GRANT SELECT, INSERT, UPDATE ON conveyor_event_cursors TO conveyor_api;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conveyor_events', 'conveyor_webhooks',
                             'conveyor_webhook_deliveries', 'conveyor_email_preferences']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY conveyor_api_tenant ON %I TO conveyor_api
            USING (tenant_id = current_setting('conveyor.tenant_id', true)
                   OR current_setting('conveyor.operator', true) = 'on')
            WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                        OR current_setting('conveyor.operator', true) = 'on')$p$, t);
        EXECUTE format('CREATE POLICY conveyor_worker_all ON %I TO conveyor_worker
            USING (true) WITH CHECK (true)', t);
    END LOOP;
END $$;
