-- An Idempotency-Key names one request per tenant, whoever in the tenant sends it (issue
-- 12: "Idempotency keys ... are per tenant"): a retry that comes back through another API
-- key or user of the same tenant returns the request, instead of creating a second one.
-- The index was per caller (0002).
--
-- Requests that already share a tenant and a key (sent by different callers) keep the
-- first one's key; the later ones lose theirs, so the index can be built, and a repeat of
-- their key returns the first request from now on.
UPDATE conveyor_requests r SET idempotency_key = NULL
WHERE r.idempotency_key IS NOT NULL
  AND EXISTS (
      SELECT FROM conveyor_requests e
      WHERE e.tenant_id = r.tenant_id AND e.idempotency_key = r.idempotency_key
        AND e.id < r.id
  );

DROP INDEX conveyor_requests_idempotency;
CREATE UNIQUE INDEX conveyor_requests_idempotency ON conveyor_requests (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
