-- An API key found in one statement, still as the API's role: every call with a key reads
-- it (a revoked key is refused at its very next call, in any process), and the scoped
-- transaction that read it before (BEGIN, the scope, the look-up, COMMIT) was four round
-- trips, the largest part of a key call's cost in the API (docs/benchmarks.md).
--
-- The function takes the role and the scope of no tenant itself, then calls 0011's
-- look-up. It is SECURITY INVOKER: it runs with its caller's rights, and taking the role
-- needs the caller to be a member of it (else "permission denied to set role"), so it
-- gives no role anything it did not have, and EXECUTE stays PUBLIC's; a NOINHERIT login
-- role of the API (docs/operations.md) reaches the look-up through it, as it did through
-- the transaction. What it sets is local to the transaction: called as a statement of its
-- own (an implicit transaction) it ends with the statement, behind PgBouncer too; inside a
-- caller's transaction the role would last to that transaction's end.
CREATE FUNCTION conveyor_api_key_by_prefix_as(p_role text, p_prefix text)
RETURNS SETOF conveyor_api_keys LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM set_config('role', p_role, true),
            set_config('conveyor.tenant_id', '', true),
            set_config('conveyor.operator', 'off', true);
    RETURN QUERY SELECT * FROM conveyor_api_key_by_prefix(p_prefix);
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION conveyor_api_key_by_prefix_as(text, text) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
