//! The batch loop of a table rule: walk each leaf's heap in windows of pages,
//! changing at most `batch_size` rows (or one page's rows, when a page holds
//! more) per short transaction.

use super::Cancel;
use crate::audit::log::Claim;
use crate::config::{BlobLocator, Rule};
use crate::plan::{describe_db_error, Outcome};
use crate::store::blob::{BlobMeta, BlobRef, BlobStore, StoreError};
use crate::store::postgres::progress::{self, Totals};
use crate::store::postgres::resolve::ResolvedRule;
use crate::store::postgres::{batch, partition};
use crate::store::postgres::{schema, PgStore};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest window of heap pages one batch scans (128 MiB of 8 KiB pages):
/// bounds a statement's time when matches are sparse.
const MAX_WINDOW_PAGES: u32 = 16_384;

/// How often a running rule checks that it still holds its claim.
const CLAIM_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a batch is retried after a serialization failure or deadlock
/// (someone else changed its rows meanwhile) before the rule fails.
const MAX_RETRIES: u32 = 5;

/// Told after every committed batch.
pub trait Progress {
    /// `done` rows of about `expected` changed so far by `rule`.
    fn batch_done(&self, rule: &str, done: i64, expected: i64);
}

/// No progress display.
impl Progress for () {
    fn batch_done(&self, _: &str, _: i64, _: i64) {}
}

/// What the loop did.
#[derive(Debug)]
pub struct Executed {
    /// Rows changed.
    pub affected: i64,
    /// Objects deleted with the rows (`blobs` rules).
    pub objects: i64,
    /// Their bytes.
    pub bytes: u64,
    /// Due rows kept because the store locks one of their objects.
    pub kept: i64,
    /// Rows other tables lost through cascades, by `schema.table`.
    pub cascaded: BTreeMap<String, i64>,
    /// Due rows kept because one of their objects could not be touched
    /// safely, by reason.
    pub skipped: BTreeMap<String, i64>,
    /// Due rows kept because deleting their objects failed (a rerun
    /// retries them), and the first such error.
    pub blob_failures: (i64, Option<String>),
    /// The first constraint that refused a row's change (the row is kept).
    pub refused: Option<String>,
    /// Mask rules: due rows kept unmasked because a unique key refused
    /// their masked form.
    pub conflicts: i64,
    /// Mask rules with `on_conflict = "delete"`: rows deleted because a
    /// unique key refused their masked form.
    pub conflicts_deleted: i64,
    /// Batches committed.
    pub batches: i64,
    /// Partitions dropped whole, with their rows (in `affected`).
    pub partitions_dropped: BTreeMap<String, i64>,
    /// A batch committed without waiting for its WAL flush, and no
    /// synchronous commit followed yet.
    unflushed: bool,
    /// False when the batches committed asynchronously and the final
    /// synchronous write failed: the counts may include batches a server
    /// crash undid, so no outcome record may claim them (the next run
    /// records this one from what the database kept).
    pub durable: bool,
    /// `ok`, `refused`, `failed` or `interrupted`.
    pub outcome: Outcome,
    /// Why, when not ok.
    pub reason: Option<String>,
}

impl Executed {
    /// A loop that never started.
    pub fn failed(reason: String) -> Executed {
        Executed::none(Outcome::Failed, Some(reason))
    }

    /// Nothing done, ending `outcome`.
    pub fn none(outcome: Outcome, reason: Option<String>) -> Executed {
        Executed {
            affected: 0,
            objects: 0,
            bytes: 0,
            kept: 0,
            cascaded: BTreeMap::new(),
            skipped: BTreeMap::new(),
            blob_failures: (0, None),
            refused: None,
            conflicts: 0,
            conflicts_deleted: 0,
            batches: 0,
            partitions_dropped: BTreeMap::new(),
            unflushed: false,
            durable: true,
            outcome,
            reason,
        }
    }

    /// The totals so far, as the progress row holds them.
    pub fn totals(&self) -> Totals {
        Totals {
            affected: self.affected,
            objects: self.objects,
            bytes: i64::try_from(self.bytes).unwrap_or(i64::MAX),
            batches: self.batches,
            cascaded: self.cascaded.clone(),
            skipped: self.skipped.clone(),
            conflicts: self.conflicts,
            conflicts_deleted: self.conflicts_deleted,
            partitions_dropped: self.partitions_dropped.clone(),
        }
    }

    fn stop(mut self, outcome: Outcome, reason: String) -> Executed {
        self.outcome = outcome;
        self.reason = Some(reason);
        self
    }
}

/// What one committed batch did.
#[derive(Debug, Default)]
struct Committed {
    /// Rows changed.
    rows: i64,
    /// For a `blobs` rule: objects and bytes deleted with the rows.
    objects: i64,
    bytes: u64,
    /// Rows kept because the store locks one of their objects.
    kept: i64,
    /// Rows other tables lost through cascades.
    cascaded: BTreeMap<String, i64>,
    /// Rows kept because an object could not be touched safely.
    skipped: BTreeMap<String, i64>,
    /// Rows kept because deleting their objects failed, and the first error.
    failed: (i64, Option<String>),
    /// The first constraint that refused a row's change.
    refused: Option<String>,
    /// Rows a unique key refused in masked form: kept, or deleted
    /// (`on_conflict = "delete"`).
    conflicts: i64,
    conflicts_deleted: i64,
    /// Set when the batch wrote the run's progress: whether it committed
    /// without waiting for the WAL flush.
    wrote_progress: Option<bool>,
}

impl Committed {
    fn add_to(&self, t: &mut Totals) {
        t.affected += self.rows;
        t.objects += self.objects;
        t.bytes = t
            .bytes
            .saturating_add(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        if self.rows > 0 {
            t.batches += 1;
        }
        add_all(&mut t.cascaded, self.cascaded.clone());
        add_all(&mut t.skipped, self.skipped.clone());
        t.conflicts += self.conflicts;
        t.conflicts_deleted += self.conflicts_deleted;
    }
}

/// How one batch attempt ended.
enum Attempt {
    /// Committed.
    Committed(Committed),
    /// Rolled back: it changed this many rows, more than the batch size.
    TooLarge(i64),
    /// Rolled back: committing would pass the run's cap.
    OverCap(i64),
}

/// Executes a resolved rule. `cap` is the most rows the run may change.
///
/// Batches of a run (`run_id`) without linked objects commit
/// asynchronously (see [`batch::begin`]); before returning, the run's
/// totals are written once more with a synchronous commit, which makes
/// every batch before it durable. When that last write fails, the result
/// says so ([`Executed::durable`]) and no outcome may claim its counts.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    pg: &PgStore,
    rule: &Rule,
    resolved: &ResolvedRule,
    cap: Option<i64>,
    cancel: &Cancel,
    claim: Option<&Claim>,
    link: Option<&Linked<'_>>,
    progress: &(dyn Progress + Sync),
    expected: i64,
    run_id: Option<&str>,
) -> Executed {
    let mut conn = match pg.pool.acquire().await {
        Ok(c) => c,
        Err(e) => return Executed::failed(describe_db_error(&e)),
    };
    // Objects deleted in a store cannot come back with a lost commit:
    // their rows' batches wait for the flush.
    let relaxed = run_id.filter(|_| link.is_none());
    let mut done = batches(
        &mut conn,
        rule,
        resolved,
        cap,
        cancel,
        claim,
        link,
        progress,
        expected,
        run_id,
        relaxed.is_some(),
    )
    .await;
    if let Some(run_id) = relaxed.filter(|_| done.unflushed) {
        if let Err(e) = progress::record(&mut conn, run_id, &rule.name, &done.totals()).await {
            done.durable = false;
            let reason = format!(
                "{}could not confirm that the last batches are durable ({}); the next run records this run \
                 with the counts the database kept",
                done.reason.as_ref().map(|r| format!("{r}; ")).unwrap_or_default(),
                describe_db_error(&e)
            );
            return done.stop(Outcome::Failed, reason);
        }
    }
    done
}

/// The batch loop of [`execute`], on one connection.
#[allow(clippy::too_many_arguments)]
async fn batches(
    conn: &mut sqlx::PgConnection,
    rule: &Rule,
    resolved: &ResolvedRule,
    cap: Option<i64>,
    cancel: &Cancel,
    claim: Option<&Claim>,
    link: Option<&Linked<'_>>,
    progress: &(dyn Progress + Sync),
    expected: i64,
    run_id: Option<&str>,
    relaxed: bool,
) -> Executed {
    let mut claim_checked = std::time::Instant::now();
    let mut done = Executed::none(Outcome::Ok, None);
    let limit = i64::from(rule.settings.batch_size);
    let mut gone = std::collections::HashSet::new();
    for leaf in resolved.drops.iter().filter(|c| c.droppable()) {
        if cancel.is_cancelled() {
            let reason = format!(
                "interrupted after {} batches; a rerun resumes",
                done.batches
            );
            return done.stop(Outcome::Interrupted, reason);
        }
        let remaining = cap.map(|c| c - done.affected - done.conflicts_deleted);
        let started = std::time::Instant::now();
        let so_far = done.totals();
        let dropped = partition::drop_leaf(
            conn,
            resolved,
            leaf,
            (rule.settings.lock_timeout, rule.settings.statement_timeout),
            remaining,
            run_id.map(|id| (id, rule.name.as_str(), &so_far)),
        )
        .await;
        match dropped {
            Ok(partition::Dropped::Dropped(rows)) => {
                gone.insert(leaf.quoted.as_str());
                done.affected += rows;
                done.batches += 1;
                done.partitions_dropped.insert(leaf.name.clone(), rows);
                progress.batch_done(&rule.name, done.affected, expected);
                tracing::debug!(
                    rule = %rule.name,
                    partition = %leaf.name,
                    rows,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "Partition dropped."
                );
            }
            Ok(partition::Dropped::Kept(why)) => {
                tracing::info!(rule = %rule.name, partition = %leaf.name, reason = %why, "Partition kept; purging it in batches.");
            }
            Ok(partition::Dropped::OverCap(rows)) => {
                let reason = format!(
                    "stopped before passing the max_fraction cap ({} rows): {} rows changed, dropping partition {} ({rows} rows) \
                     would pass it; the table changed since the plan, check the rule",
                    cap.unwrap_or_default(),
                    done.affected,
                    leaf.name
                );
                return done.stop(Outcome::Refused, reason);
            }
            Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
        }
    }
    let leaves: Vec<&String> = resolved
        .leaves
        .iter()
        .filter(|l| !gone.contains(l.as_str()))
        .collect();
    for (i, leaf) in leaves.iter().enumerate() {
        let last_leaf = i + 1 == leaves.len();
        let (pages, per_page) = match heap_size(conn, leaf).await {
            Ok(s) => s,
            Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
        };
        // A window that holds about one batch of rows if every row matched.
        let mut window = ((limit as f64 / per_page).floor() as u32).clamp(1, MAX_WINDOW_PAGES);
        let mut lo = 0u32;
        while lo < pages {
            if cancel.is_cancelled() {
                let reason = format!(
                    "interrupted after {} batches; a rerun resumes",
                    done.batches
                );
                return done.stop(Outcome::Interrupted, reason);
            }
            if let Some(claim) = claim.filter(|_| claim_checked.elapsed() >= CLAIM_CHECK_INTERVAL) {
                if !claim.held().await {
                    let reason = format!(
                        "lost the rule's claim after {} batches (the audit store's session ended, e.g. a database restart); \
                         stopped so that no other replica runs this rule at the same time; a rerun resumes",
                        done.batches
                    );
                    return done.stop(Outcome::Interrupted, reason);
                }
                claim_checked = std::time::Instant::now();
            }
            let hi = lo.saturating_add(window).min(pages);
            // Conflicting rows a mask deletes count against the cap too.
            let remaining = cap.map(|c| c - done.affected - done.conflicts_deleted);
            let durable = run_id.map(|id| (id, done.totals()));
            let durable = durable.as_ref().map(|(id, t)| (*id, t));
            let started = std::time::Instant::now();
            match batch_with_retries(
                conn,
                rule,
                resolved,
                link,
                leaf,
                (lo, hi),
                limit,
                remaining,
                durable,
                // The last window commits synchronously: for a small table
                // (one batch) that is the only flush the run needs.
                relaxed && !(last_leaf && hi >= pages),
            )
            .await
            {
                Ok(Attempt::Committed(c)) => {
                    let changed = c.rows;
                    if let Some(relaxed) = c.wrote_progress {
                        done.unflushed = relaxed;
                    }
                    done.objects += c.objects;
                    done.bytes += c.bytes;
                    done.kept += c.kept;
                    add_all(&mut done.cascaded, c.cascaded);
                    add_all(&mut done.skipped, c.skipped);
                    done.conflicts += c.conflicts;
                    done.conflicts_deleted += c.conflicts_deleted;
                    done.blob_failures.0 += c.failed.0;
                    if done.blob_failures.1.is_none() {
                        done.blob_failures.1 = c.failed.1;
                    }
                    if done.refused.is_none() {
                        done.refused = c.refused;
                    }
                    if changed > 0 {
                        done.batches += 1;
                        done.affected += changed;
                        progress.batch_done(&rule.name, done.affected, expected);
                        tracing::debug!(
                            rule = %rule.name,
                            rows = changed,
                            pages = hi - lo,
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "Batch committed."
                        );
                    }
                    window = next_window(hi - lo, changed, limit);
                    lo = hi;
                }
                Ok(Attempt::TooLarge(changed)) => {
                    // Denser than the window assumed: shrink it to fit and
                    // redo the same pages.
                    let fit =
                        (u64::from(hi - lo) * limit as u64 * 9 / 10 / changed.max(1) as u64) as u32;
                    window = fit.clamp(1, hi - lo - 1);
                }
                Ok(Attempt::OverCap(changed)) => {
                    let reason = format!(
                        "stopped before passing the max_fraction cap ({} rows): {} rows changed, the next batch of {changed} \
                         was rolled back; the table changed since the plan, check the rule",
                        cap.unwrap_or_default(),
                        done.affected
                    );
                    return done.stop(Outcome::Refused, reason);
                }
                Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
            }
        }
    }
    if done.blob_failures.0 > 0 {
        let reason = format!(
            "{} due row(s) kept because deleting their objects failed; what was confirmed is done and a rerun retries the rest; first: {}",
            done.blob_failures.0,
            done.blob_failures.1.clone().unwrap_or_default()
        );
        return done.stop(Outcome::Failed, reason);
    }
    if let Some(first) = done.refused.take() {
        // The promise holds for every other row; say which ones it does
        // not hold for, and why.
        let kept: i64 = [UNIQUE_VIOLATION, "foreign_key"]
            .iter()
            .filter_map(|k| done.skipped.get(*k))
            .sum::<i64>()
            + done.conflicts;
        done.reason = Some(format!(
            "{kept} due row(s) kept because a constraint refused their change; first: {first}"
        ));
    }
    done
}

/// Adds `more` into `into`, key by key.
fn add_all(into: &mut BTreeMap<String, i64>, more: BTreeMap<String, i64>) {
    for (k, v) in more {
        *into.entry(k).or_default() += v;
    }
}

/// Pages in the leaf's heap now (rows added later are new, hence not due)
/// and the statistics' tuples per page.
async fn heap_size(conn: &mut sqlx::PgConnection, leaf: &str) -> Result<(u32, f64), sqlx::Error> {
    let pages = schema::relpages(&mut *conn, leaf)
        .await
        .map_err(|e| match e {
            schema::SchemaError::Db(e) => e,
            schema::SchemaError::Target(t) => sqlx::Error::Protocol(t.message),
        })?;
    Ok((pages, batch::tuples_per_page(conn, leaf).await?))
}

/// The next window after `pages` pages changed `changed` rows: sized so
/// the next batch holds about nine tenths of `limit` if the density stays
/// the same, growing at most fourfold a step (a batch that overshoots is
/// rolled back and redone smaller, which costs more than a small batch).
fn next_window(pages: u32, changed: i64, limit: i64) -> u32 {
    let pages = u64::from(pages.max(1));
    let grown = pages.saturating_mul(4);
    let fit = match u64::try_from(changed) {
        Ok(c) if c > 0 => pages * (limit.max(1) as u64) * 9 / 10 / c,
        _ => grown,
    };
    fit.clamp(1, grown.min(u64::from(MAX_WINDOW_PAGES))) as u32
}

/// With `on_conflict = "delete"`, deletes a row whose masked form a unique
/// key refused, unless a guard or hold keeps it (or a foreign key refuses
/// the delete): true when it went.
async fn delete_conflict(
    tx: &mut sqlx::PgConnection,
    resolved: &ResolvedRule,
    leaf: &str,
    tid: &str,
) -> Result<bool, sqlx::Error> {
    let Some(protected) = resolved
        .mask
        .as_ref()
        .and_then(|m| m.delete_conflicts.as_ref())
    else {
        return Ok(false);
    };
    batch::savepoint(tx, "SAVEPOINT retentiond_conflict").await?;
    match batch::delete_conflict(tx, leaf, tid, protected).await {
        Ok(n) => {
            batch::savepoint(tx, "RELEASE SAVEPOINT retentiond_conflict").await?;
            Ok(n == 1)
        }
        Err(e) if row_refusal(&e).is_some() => {
            batch::savepoint(tx, "ROLLBACK TO SAVEPOINT retentiond_conflict").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The `skipped` reason of a row whose change a unique key refused (a
/// mask rule counts it as a conflict instead).
const UNIQUE_VIOLATION: &str = "unique_violation";

/// A constraint one row breaks (a masked value a unique key refuses, a
/// delete a `RESTRICT` / `NO ACTION` foreign key refuses): the reason it is
/// counted under in `skipped`.
fn row_refusal(e: &sqlx::Error) -> Option<&'static str> {
    match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("23505") => Some(UNIQUE_VIOLATION),
        Some("23503") => Some("foreign_key"),
        _ => None,
    }
}

fn is_retryable(e: &sqlx::Error) -> bool {
    // serialization_failure, deadlock_detected
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40001" || c == "40P01")
}

#[allow(clippy::too_many_arguments)]
async fn batch_with_retries(
    conn: &mut sqlx::PgConnection,
    rule: &Rule,
    resolved: &ResolvedRule,
    link: Option<&Linked<'_>>,
    leaf: &str,
    window: (u32, u32),
    limit: i64,
    remaining: Option<i64>,
    durable: Option<(&str, &Totals)>,
    relaxed: bool,
) -> Result<Attempt, sqlx::Error> {
    let mut attempt = 0;
    let mut row_by_row = false;
    loop {
        match one_batch(
            conn, rule, resolved, link, leaf, window, limit, remaining, durable, row_by_row,
            relaxed,
        )
        .await
        {
            Err(e) if row_refusal(&e).is_some() && link.is_none() && !row_by_row => {
                tracing::warn!(rule = %rule.name, error = %e, "A row breaks a constraint; changing this window row by row.");
                row_by_row = true;
            }
            Err(e) if is_retryable(&e) && attempt < MAX_RETRIES => {
                attempt += 1;
                tracing::debug!(rule = %rule.name, attempt, error = %e, "Batch conflicted with another transaction; retrying.");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// One batch in one REPEATABLE READ transaction with local timeouts.
#[allow(clippy::too_many_arguments)]
async fn one_batch(
    conn: &mut sqlx::PgConnection,
    rule: &Rule,
    resolved: &ResolvedRule,
    link: Option<&Linked<'_>>,
    leaf: &str,
    (lo, hi): (u32, u32),
    limit: i64,
    remaining: Option<i64>,
    durable: Option<(&str, &Totals)>,
    row_by_row: bool,
    relaxed: bool,
) -> Result<Attempt, sqlx::Error> {
    let mut tx = batch::begin(
        conn,
        rule.settings.lock_timeout,
        rule.settings.statement_timeout,
        relaxed && durable.is_some(),
    )
    .await?;
    let counters = batch::deleted_counters(&mut tx, resolved).await?;
    let mut c = Committed::default();
    match link {
        None if row_by_row => {
            // One row broke a constraint (a masked value a unique key
            // refuses, a delete a RESTRICT foreign key refuses): change the
            // window row by row, keeping (and counting) the rows that
            // cannot be changed, so they never hold up the others.
            // PostgreSQL's counters keep what a rolled-back savepoint
            // deleted, so cascades are counted around each kept change.
            let rows = batch::select_linked(&mut tx, resolved, leaf, (lo, hi), &[]).await?;
            for (tid, _) in rows {
                let before = batch::deleted_counters(&mut tx, resolved).await?;
                batch::savepoint(&mut tx, "SAVEPOINT retentiond_row").await?;
                match batch::change_one(&mut tx, resolved, leaf, &tid).await {
                    Ok(n) => {
                        c.rows += n;
                        batch::savepoint(&mut tx, "RELEASE SAVEPOINT retentiond_row").await?;
                        if !before.is_empty() {
                            let after = batch::deleted_counters(&mut tx, resolved).await?;
                            add_all(
                                &mut c.cascaded,
                                batch::cascaded_between(resolved, &before, &after, n),
                            );
                        }
                    }
                    Err(e) => match row_refusal(&e) {
                        Some(reason) => {
                            batch::savepoint(&mut tx, "ROLLBACK TO SAVEPOINT retentiond_row")
                                .await?;
                            if reason == UNIQUE_VIOLATION && resolved.mask.is_some() {
                                if delete_conflict(&mut tx, resolved, leaf, &tid).await? {
                                    c.conflicts_deleted += 1;
                                    continue;
                                }
                                c.conflicts += 1;
                            } else {
                                *c.skipped.entry(reason.to_string()).or_default() += 1;
                            }
                            c.refused.get_or_insert_with(|| describe_db_error(&e));
                        }
                        None => return Err(e),
                    },
                }
            }
        }
        None => c.rows = batch::change(&mut tx, resolved, leaf, lo, hi).await?,
        Some(link) => {
            let rows =
                batch::select_linked(&mut tx, resolved, leaf, (lo, hi), &link.columns()).await?;
            if rows.len() as i64 > limit && hi - lo > 1 {
                tx.rollback().await?;
                return Ok(Attempt::TooLarge(rows.len() as i64));
            }
            // Objects first, rows after, in this transaction: a crash in
            // between leaves rows whose objects are gone (a rerun deletes
            // them; a missing object counts as deleted), never objects
            // whose rows are gone. A row goes only when every one of its
            // objects is confirmed gone; one bad row never holds up the
            // others.
            let mut owned: Vec<(String, Vec<BlobRef>)> = Vec::new();
            for (tid, values) in rows {
                match link.objects_of(&values).await {
                    Ok(Some(objects)) => owned.push((tid, objects)),
                    Ok(None) => c.kept += 1,
                    Err(LinkError::Skipped(reason)) => {
                        *c.skipped.entry(reason.to_string()).or_default() += 1
                    }
                    Err(LinkError::Failed(why)) => {
                        c.failed.0 += 1;
                        c.failed.1.get_or_insert(why);
                    }
                }
            }
            let refs: Vec<&BlobRef> = owned.iter().flat_map(|(_, o)| o.iter()).collect();
            let mut results = Vec::with_capacity(refs.len());
            for chunk in refs.chunks(link.store.batch_limit().max(1)) {
                let chunk: Vec<BlobRef> = chunk.iter().map(|r| (*r).clone()).collect();
                results.extend(link.store.delete(&chunk).await);
            }
            let mut results = results.into_iter();
            let mut tids = Vec::new();
            let mut keys = std::collections::HashSet::new();
            for (tid, objects) in &owned {
                let mut skipped = None;
                let mut failed = None;
                for (r, result) in objects.iter().zip(results.by_ref()) {
                    match result {
                        Ok(()) => {
                            c.bytes += r.size;
                            if !r.pending {
                                keys.insert(r.key.clone());
                            }
                        }
                        Err(StoreError::Skipped { reason, .. }) => {
                            skipped.get_or_insert(reason);
                        }
                        Err(e) => {
                            failed.get_or_insert(format!("{}: {e}", r.key));
                        }
                    }
                }
                match (skipped, failed) {
                    (None, None) => tids.push(tid.clone()),
                    (Some(reason), _) => *c.skipped.entry(reason.to_string()).or_default() += 1,
                    (None, Some(why)) => {
                        c.failed.0 += 1;
                        c.failed.1.get_or_insert(why);
                    }
                }
            }
            c.rows = batch::delete_tids(&mut tx, resolved, leaf, &tids).await?;
            // Objects are keys: the versions of one key are one object.
            c.objects = keys.len() as i64;
        }
    }
    let changed = c.rows;
    // One page is the smallest window: its rows are a batch even when a page
    // holds more than batch_size of them.
    if changed > limit && hi - lo > 1 {
        tx.rollback().await?;
        return Ok(Attempt::TooLarge(changed));
    }
    if remaining.is_some_and(|r| changed + c.conflicts_deleted > r) {
        tx.rollback().await?;
        return Ok(Attempt::OverCap(changed));
    }
    // Row by row, cascades were counted around each kept change.
    let counted_per_row = row_by_row && link.is_none();
    if !counters.is_empty() && !counted_per_row {
        let after = batch::deleted_counters(&mut tx, resolved).await?;
        c.cascaded = batch::cascaded_between(resolved, &counters, &after, changed);
    }
    let changed_anything = changed > 0
        || !c.skipped.is_empty()
        || c.objects > 0
        || c.conflicts + c.conflicts_deleted > 0;
    if let Some((run_id, so_far)) = durable.filter(|_| changed_anything) {
        // The count commits with the batch, or neither does.
        let mut next = so_far.clone();
        c.add_to(&mut next);
        progress::record(&mut tx, run_id, &rule.name, &next).await?;
        c.wrote_progress = Some(relaxed);
    }
    tx.commit().await?;
    Ok(Attempt::Committed(c))
}

/// Why a row's objects could not be found.
enum LinkError {
    /// One of them can never be touched safely (the row stays, counted).
    Skipped(&'static str),
    /// The store failed (the row stays; a rerun retries).
    Failed(String),
}

/// The objects a `blobs` rule deletes with each row.
pub struct Linked<'a> {
    /// Where the objects are.
    pub store: &'a dyn BlobStore,
    /// How a row names them.
    pub locator: &'a BlobLocator,
}

impl Linked<'_> {
    /// The columns whose values name a row's objects.
    fn columns(&self) -> Vec<String> {
        match self.locator {
            BlobLocator::KeyColumn(c) => vec![c.clone()],
            BlobLocator::PrefixTemplate(t) => {
                crate::config::validate::template_columns(t).unwrap_or_default()
            }
        }
    }

    /// Every version of the objects a row names (None: an object is locked,
    /// so the row must stay too); `values` are the [`Linked::columns`].
    async fn objects_of(
        &self,
        values: &[Option<String>],
    ) -> Result<Option<Vec<BlobRef>>, LinkError> {
        use futures_util::TryStreamExt;
        let (prefix, exact) = match self.locator {
            // A NULL key names no object: the row alone goes.
            BlobLocator::KeyColumn(_) => match values.first().cloned().flatten() {
                Some(key) => (key, true),
                None => return Ok(Some(Vec::new())),
            },
            BlobLocator::PrefixTemplate(template) => {
                let mut prefix = template.clone();
                for (column, value) in self.columns().iter().zip(values) {
                    // A value that is NULL, empty or has a `/` would name
                    // another prefix than the row's: keep the row.
                    match value {
                        Some(v) if !v.is_empty() && !v.contains('/') => {
                            prefix = prefix.replace(&format!("{{{column}}}"), v)
                        }
                        _ => return Ok(None),
                    }
                }
                (prefix, false)
            }
        };
        let listing: Vec<BlobMeta> =
            self.store
                .list(&prefix)
                .try_collect()
                .await
                .map_err(|e| match e {
                    StoreError::Skipped { reason, .. } => LinkError::Skipped(reason),
                    e => LinkError::Failed(format!("listing {prefix}: {e}")),
                })?;
        let mut mine: Vec<BlobMeta> = listing
            .into_iter()
            .filter(|m| !exact || m.key == prefix)
            .collect();
        self.store
            .describe(&mut mine, false)
            .await
            .map_err(|e| match e {
                StoreError::Skipped { reason, .. } => LinkError::Skipped(reason),
                e => LinkError::Failed(format!("reading object locks under {prefix}: {e}")),
            })?;
        if mine.iter().any(|m| m.locked.is_some()) {
            return Ok(None);
        }
        Ok(Some(
            mine.iter()
                .map(|m| BlobRef::to(m, m.version.clone()))
                .collect(),
        ))
    }
}
