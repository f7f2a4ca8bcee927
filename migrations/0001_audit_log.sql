-- retentiond's audit log: one signed, hash-chained record per event.
-- Applied by `retentiond migrate` (or on start when the role may) as an admin
-- role. The runtime role needs only:
--   GRANT USAGE ON SCHEMA retentiond TO retentiond_runtime;
--   GRANT SELECT, INSERT ON retentiond.audit_log TO retentiond_runtime;
-- Every column is either inside the signed record or derived from it, and
-- `retentiond audit verify` checks them against it.

CREATE SCHEMA IF NOT EXISTS retentiond;

CREATE TABLE retentiond.audit_log (
    seq     bigint      PRIMARY KEY CHECK (seq >= 1),
    ts      timestamptz NOT NULL,
    kind    text        NOT NULL,
    rule    text,
    run_id  text,
    prev    text        NOT NULL CHECK (prev ~ '^[0-9a-f]{64}$'),
    key_id  text        NOT NULL,
    hash    text        NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    -- The record's RFC 8785 canonical JSON, signature included: the exact
    -- bytes `hash` is the SHA-256 of and the JSONL export prints.
    record  text        NOT NULL
);

CREATE INDEX audit_log_rule_ts ON retentiond.audit_log (rule, ts);
CREATE INDEX audit_log_run_id ON retentiond.audit_log (run_id);

CREATE FUNCTION retentiond.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'retentiond.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON retentiond.audit_log
    FOR EACH ROW EXECUTE FUNCTION retentiond.audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON retentiond.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION retentiond.audit_log_append_only();
