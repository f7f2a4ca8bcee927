-- What each rule run has changed so far, written in the same transaction as
-- each batch (table rules: in the governed database; blob rules: in the
-- audit database, after the store confirmed the deletes). When a run dies
-- before its outcome record, the next run of the rule reads this row and
-- records the dead run's exact counts in its `abandoned` outcome.
-- Applied by `retentiond migrate` to the audit store and to every
-- PostgreSQL store with rules. The runtime role's grants, this table's
-- included, are listed in docs/runtime-grants.sql (0001's comment lacks the
-- one on _sqlx_migrations; a migration's text cannot change once applied):
--   GRANT USAGE ON SCHEMA retentiond TO retentiond_runtime;
--   GRANT SELECT, INSERT ON retentiond.audit_log TO retentiond_runtime;
--   GRANT SELECT ON retentiond._sqlx_migrations TO retentiond_runtime;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON retentiond.run_progress TO retentiond_runtime;

CREATE TABLE retentiond.run_progress (
    run_id        text        PRIMARY KEY,
    rule          text        NOT NULL,
    affected      bigint      NOT NULL DEFAULT 0,
    objects       bigint      NOT NULL DEFAULT 0,
    bytes         bigint      NOT NULL DEFAULT 0,
    batches       bigint      NOT NULL DEFAULT 0,
    cascaded      jsonb       NOT NULL DEFAULT '{}',
    skipped       jsonb       NOT NULL DEFAULT '{}',
    -- Set when the run finished but its outcome record could not be
    -- written: the process was alive, and says why.
    outcome       text,
    outcome_error text,
    updated       timestamptz NOT NULL DEFAULT now()
);
