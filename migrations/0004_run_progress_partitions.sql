-- Partitions a run dropped whole (partition -> rows), durable with the
-- drop itself like every other count, so a run killed after a drop is
-- recorded with it. No new grant: the runtime role's rights on
-- run_progress (docs/runtime-grants.sql) cover the column. Dropping a
-- partition needs the table's owner (or a member of its role): see the
-- README's "Partitioned tables".

ALTER TABLE retentiond.run_progress
    ADD COLUMN partitions_dropped jsonb NOT NULL DEFAULT '{}';
