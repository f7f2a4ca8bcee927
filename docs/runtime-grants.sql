-- The runtime role's rights on schema `retentiond`: the one list that the
-- README, docker/compose.yaml, docs/audit-format.md and the migrations'
-- comments repeat (a test checks they agree, and runs rules with a role
-- that has exactly these). Apply as an admin after `retentiond migrate`, in
-- the audit store and in every PostgreSQL store with rules. No UPDATE,
-- DELETE or TRUNCATE on audit_log, and no ownership: a role that owned the
-- log could disable its triggers and rewrite it.
GRANT USAGE ON SCHEMA retentiond TO retentiond_runtime;
GRANT SELECT, INSERT ON retentiond.audit_log TO retentiond_runtime;
GRANT SELECT ON retentiond._sqlx_migrations TO retentiond_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON retentiond.run_progress TO retentiond_runtime;
