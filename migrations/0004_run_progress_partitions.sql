-- Two additions for issue 12 (scale), durable with each batch like every
-- other count:
--
-- * `partitions_dropped`: the partitions a run dropped whole
--   (partition -> rows), written in the transaction that drops them, so a
--   run killed after a drop is recorded with it.
-- * `part`: a run with `parallelism = N` keeps one row per worker
--   (0..N-1), each written only by its own batches, so concurrent batches
--   never update the same row; a run's totals are the sum of its rows.
--
-- No new grant: the runtime role's rights on run_progress
-- (docs/runtime-grants.sql) cover the columns. Dropping a partition needs
-- the table's owner (or a member of its role): see the README's
-- "Partitioned tables".

ALTER TABLE retentiond.run_progress
    ADD COLUMN partitions_dropped jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN part integer NOT NULL DEFAULT 0;

ALTER TABLE retentiond.run_progress DROP CONSTRAINT run_progress_pkey;
ALTER TABLE retentiond.run_progress ADD PRIMARY KEY (run_id, part);
