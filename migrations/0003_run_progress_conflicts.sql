-- Rows a mask rule with on_conflict = "delete" removed because their masked
-- form duplicated another row's unique key: removals, so they are counted
-- with each batch like every other one. No new grant: the runtime role's
-- rights on run_progress (docs/runtime-grants.sql) cover the column.

ALTER TABLE retentiond.run_progress
    ADD COLUMN conflicts_deleted bigint NOT NULL DEFAULT 0;
