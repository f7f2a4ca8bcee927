-- docker/initdb/30-runtime-role.sql: the least-privilege runtime role of the
-- compose demo (docker/compose.yaml). Runs once, in a fresh data volume, after
-- examples/schema.sql (10-) and examples/sample-data.sql (20-).
--
-- `retentiond migrate` runs as the admin (postgres) and creates schema
-- `retentiond`; the compose service `grants` then gives this role what it
-- needs there (docs/runtime-grants.sql).
-- Here: the application tables of the top-level retention.toml.
--   * SELECT on every table: rules count and select rows, guards and holds
--     read other tables (billing_records, legal_holds), and the cascade check
--     looks at child tables;
--   * DELETE for the delete rules, UPDATE for the mask rule.
-- ON DELETE CASCADE actions run with the table owner's rights, so the role
-- needs no DELETE on the child tables. The configs in examples/ name more
-- tables: their rules are refused ("the database role lacks ...") until you
-- grant those too, which is how it should be.

CREATE ROLE retentiond_runtime LOGIN PASSWORD 'retentiond';   -- demo password

GRANT USAGE ON SCHEMA public TO retentiond_runtime;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO retentiond_runtime;
GRANT DELETE ON session_logs, accounts, telemetry TO retentiond_runtime;   -- delete rules
GRANT UPDATE ON sessions TO retentiond_runtime;                           -- mask rule
