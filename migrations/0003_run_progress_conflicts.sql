-- Mask rules' unique-key conflicts, durable with each batch like every
-- other count: the rows kept unmasked, and (with on_conflict = "delete") the
-- rows deleted because their masked form duplicated another row's key,
-- which are removals. No new grant: the runtime role's rights on
-- run_progress (docs/runtime-grants.sql) cover the columns.

ALTER TABLE retentiond.run_progress
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0,
    ADD COLUMN conflicts_deleted bigint NOT NULL DEFAULT 0;
