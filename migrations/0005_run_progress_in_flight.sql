-- Blob rules, for the abandoned record of a killed run:
--
-- * `versions`: versions and delete markers removed so far.
-- * `in_flight`: the items of a delete call about to be sent, in a row of its
-- own (`part` 1, 2, ... per call in flight), written before the call and
-- cleared in the transaction that counts its result. A run killed while a
--   call was in flight leaves them here; the next run of the rule lists
--   them and counts in the abandoned record those the store no longer has,
--   so the log counts every object removed.
--
-- No new grant: the runtime role's rights
-- on run_progress (docs/runtime-grants.sql) cover the column.

ALTER TABLE retentiond.run_progress
    ADD COLUMN versions bigint NOT NULL DEFAULT 0,
    ADD COLUMN in_flight jsonb NOT NULL DEFAULT '[]';
