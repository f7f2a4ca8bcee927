//! A run's running totals, durable with its batches.
//!
//! A table rule writes its totals into `retentiond.run_progress` of the
//! governed database inside each batch's transaction, so a batch and its
//! count commit or vanish together. A blob rule writes them into the audit
//! database after the store confirmed each delete call. When a run dies
//! before its outcome record, the next run of the rule reads the row and
//! records the dead run's exact counts (`engine::close_abandoned`).
//!
//! A blob delete call cannot share a transaction with its count, so its
//! items are written first, in a row of their own ([`in_flight`]), and
//! cleared in the transaction that counts its result ([`settle_call`]):
//! the next run lists what a killed run left in flight and counts what is
//! gone.

use crate::store::blob::BlobRef;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::BTreeMap;

/// What a run has changed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Rows changed (table rules) or objects deleted (blob rules).
    pub affected: i64,
    /// Objects deleted with rows (`blobs` rules).
    pub objects: i64,
    /// Bytes freed.
    pub bytes: i64,
    /// Batches committed.
    pub batches: i64,
    /// Rows other tables lost through cascades, by `schema.table`.
    pub cascaded: BTreeMap<String, i64>,
    /// Items kept because they could not be touched safely, by reason.
    pub skipped: BTreeMap<String, i64>,
    /// Mask rules: rows kept unmasked because a unique key refused their
    /// masked form.
    #[serde(default)]
    pub conflicts: i64,
    /// Mask rules with `on_conflict = "delete"`: rows deleted because
    /// their masked form duplicated another row's unique key.
    #[serde(default)]
    pub conflicts_deleted: i64,
    /// Partitions dropped whole, with their rows (counted in `affected`).
    #[serde(default)]
    pub partitions_dropped: BTreeMap<String, i64>,
    /// Blob rules: versions and delete markers removed.
    #[serde(default)]
    pub versions: i64,
}

/// A dead or unrecorded run's row.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its totals.
    pub totals: Totals,
    /// Blob rules: the items of each delete call it had in flight.
    pub in_flight: Vec<Vec<BlobRef>>,
    /// Set when the run ended but its outcome record failed: the outcome
    /// it had, and the error.
    pub unwritten: Option<(String, String)>,
}

/// Whether runs can record progress here: `Err` says what is missing
/// (the table `retentiond migrate` makes, or the runtime grants on it).
pub async fn ready(pool: &PgPool) -> Result<Result<(), String>, sqlx::Error> {
    let (exists, writable): (bool, Option<bool>) = sqlx::query_as(
        "SELECT c.oid IS NOT NULL, \
                has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') \
         FROM (SELECT 1) AS one \
         LEFT JOIN pg_namespace n ON n.nspname = 'retentiond' \
         LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'run_progress'",
    )
    .fetch_one(pool)
    .await?;
    Ok(match (exists, writable) {
        (false, _) => Err("has no retentiond.run_progress table, where each batch records its counts; \
             run `retentiond migrate -c FILE` as an admin role (it prepares every PostgreSQL store with rules)"
            .to_string()),
        (true, Some(true)) => Ok(()),
        (true, _) => Err("does not let this role write retentiond.run_progress; apply docs/runtime-grants.sql".to_string()),
    })
}

/// Sets the run's totals (absolute values, so a retried write is harmless).
pub async fn record(
    conn: &mut PgConnection,
    run_id: &str,
    rule: &str,
    t: &Totals,
) -> Result<(), sqlx::Error> {
    record_part(conn, run_id, 0, rule, t).await
}

/// Sets the totals of one worker (`part`) of a run with `parallelism`:
/// each worker writes only its own row, so concurrent batches never update
/// the same one. The run's totals are the sum of its rows ([`read`]).
pub async fn record_part(
    conn: &mut PgConnection,
    run_id: &str,
    part: u32,
    rule: &str,
    t: &Totals,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO retentiond.run_progress AS p \
             (run_id, rule, affected, objects, bytes, batches, cascaded, skipped, conflicts, conflicts_deleted, \
              partitions_dropped, part, versions, updated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now()) \
         ON CONFLICT (run_id, part) DO UPDATE SET affected = EXCLUDED.affected, objects = EXCLUDED.objects, \
             bytes = EXCLUDED.bytes, batches = EXCLUDED.batches, cascaded = EXCLUDED.cascaded, \
             skipped = EXCLUDED.skipped, conflicts = EXCLUDED.conflicts, \
             conflicts_deleted = EXCLUDED.conflicts_deleted, \
             partitions_dropped = EXCLUDED.partitions_dropped, versions = EXCLUDED.versions, \
             updated = now()",
    )
    .bind(run_id)
    .bind(rule)
    .bind(t.affected)
    .bind(t.objects)
    .bind(t.bytes)
    .bind(t.batches)
    .bind(Json(&t.cascaded))
    .bind(Json(&t.skipped))
    .bind(t.conflicts)
    .bind(t.conflicts_deleted)
    .bind(Json(&t.partitions_dropped))
    .bind(i32::try_from(part).unwrap_or(i32::MAX))
    .bind(t.versions)
    .execute(conn)
    .await?;
    Ok(())
}

/// Notes `items`, the delete call about to be sent from `slot` (1, 2, ...),
/// before it is: a kill during the call leaves them for the next run.
pub async fn in_flight(
    pool: &PgPool,
    run_id: &str,
    rule: &str,
    slot: u32,
    items: &[BlobRef],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO retentiond.run_progress AS p (run_id, rule, part, in_flight, updated) \
         VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (run_id, part) DO UPDATE SET in_flight = EXCLUDED.in_flight, updated = now()",
    )
    .bind(run_id)
    .bind(rule)
    .bind(i32::try_from(slot).unwrap_or(i32::MAX))
    .bind(Json(items))
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets the run's totals, now counting the calls from `slots`, and clears
/// those calls' items, in one transaction: never both counted and left in
/// flight, never neither.
pub async fn settle_call(
    pool: &PgPool,
    run_id: &str,
    rule: &str,
    t: &Totals,
    slots: &[u32],
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let parts: Vec<i32> = slots
        .iter()
        .map(|s| i32::try_from(*s).unwrap_or(i32::MAX))
        .collect();
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    record(&mut tx, run_id, rule, t).await?;
    sqlx::query(
        "UPDATE retentiond.run_progress SET in_flight = '[]', updated = now() \
         WHERE run_id = $1 AND part = ANY($2)",
    )
    .bind(run_id)
    .bind(&parts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The totals of `run_id` (the sum of its workers' rows), if the run wrote
/// any.
pub async fn read(pool: &PgPool, run_id: &str) -> Result<Option<Found>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT affected, objects, bytes, batches, cascaded, skipped, conflicts, conflicts_deleted, \
                partitions_dropped, outcome, outcome_error, in_flight, versions \
         FROM retentiond.run_progress WHERE run_id = $1 ORDER BY part",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let mut found: Option<Found> = None;
    for r in rows {
        let Json(cascaded): Json<BTreeMap<String, i64>> = r.try_get("cascaded")?;
        let Json(skipped): Json<BTreeMap<String, i64>> = r.try_get("skipped")?;
        let Json(partitions_dropped): Json<BTreeMap<String, i64>> =
            r.try_get("partitions_dropped")?;
        let outcome: Option<String> = r.try_get("outcome")?;
        let error: Option<String> = r.try_get("outcome_error")?;
        let Json(in_flight): Json<Vec<BlobRef>> = r.try_get("in_flight")?;
        let part = Totals {
            affected: r.try_get("affected")?,
            objects: r.try_get("objects")?,
            bytes: r.try_get("bytes")?,
            batches: r.try_get("batches")?,
            cascaded,
            skipped,
            conflicts: r.try_get("conflicts")?,
            conflicts_deleted: r.try_get("conflicts_deleted")?,
            partitions_dropped,
            versions: r.try_get("versions")?,
        };
        let f = found.get_or_insert_with(|| Found {
            totals: Totals::default(),
            in_flight: Vec::new(),
            unwritten: None,
        });
        f.totals.add(part);
        if !in_flight.is_empty() {
            f.in_flight.push(in_flight);
        }
        if let Some(o) = outcome {
            f.unwritten = Some((o, error.unwrap_or_default()));
        }
    }
    Ok(found)
}

impl Totals {
    /// Adds another worker's totals.
    fn add(&mut self, o: Totals) {
        self.affected += o.affected;
        self.objects += o.objects;
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.batches += o.batches;
        self.conflicts += o.conflicts;
        self.conflicts_deleted += o.conflicts_deleted;
        self.versions += o.versions;
        for (into, from) in [
            (&mut self.cascaded, o.cascaded),
            (&mut self.skipped, o.skipped),
            (&mut self.partitions_dropped, o.partitions_dropped),
        ] {
            for (k, v) in from {
                *into.entry(k).or_default() += v;
            }
        }
    }
}

/// Notes that the run ended with `outcome` but its record failed (`error`),
/// with its final totals.
pub async fn mark_unwritten(
    pool: &PgPool,
    run_id: &str,
    rule: &str,
    totals: &Totals,
    outcome: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?;
    // The final totals replace the workers' rows, in one transaction.
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM retentiond.run_progress WHERE run_id = $1 AND part <> 0")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, run_id, rule, totals).await?;
    sqlx::query(
        "UPDATE retentiond.run_progress SET outcome = $2, outcome_error = $3 WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(outcome)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Drops the row once the run's outcome record is written. Without
/// waiting for the WAL flush: a row a crash brings back belongs to a run
/// with an outcome, and only runs without one are ever read.
pub async fn forget(pool: &PgPool, run_id: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?;
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    sqlx::query("DELETE FROM retentiond.run_progress WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
