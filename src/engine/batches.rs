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

/// Largest window of heap pages one batch scans (32 MiB of 8 KiB pages,
/// about 25 ms from cache on this project's 2-core machine): bounds a
/// transaction's time when matches are sparse.
const MAX_WINDOW_PAGES: u32 = 4_096;

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
    /// Rows batches changed or deleted, by leaf relation (quoted): which
    /// statistics went stale.
    pub by_leaf: BTreeMap<String, i64>,
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
            by_leaf: BTreeMap::new(),
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
            // Versions are a blob rule's count.
            versions: 0,
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
/// Partitions wholly expired are dropped first (one transaction each).
/// Then, with `parallelism = N`, N workers walk disjoint page ranges of
/// every leaf, each on its own connection, each batch still one short
/// transaction; `max_fraction` is one budget they reserve from before each
/// commit, and one worker stopping stops the others after their batch.
///
/// Batches of a run (`run_id`) without linked objects commit
/// asynchronously (see [`batch::begin`]); before returning, a worker's
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
    (expected, complete_at): (i64, Option<i64>),
    run_id: Option<&str>,
) -> Executed {
    let mut conn = match pg.pool.acquire().await {
        Ok(c) => c,
        Err(e) => return Executed::failed(describe_db_error(&e)),
    };
    let shared = Shared {
        rule,
        resolved,
        claim,
        link,
        progress,
        expected,
        complete_at,
        run_id,
        // Objects deleted in a store cannot come back with a lost commit:
        // their rows' batches wait for the flush.
        relaxed: run_id.is_some() && link.is_none(),
        budget: Budget::new(cap),
        cancel,
        stop: Cancel::default(),
    };
    let (first, gone) = match drop_partitions(&mut conn, &shared).await {
        Ok(r) => r,
        Err(stopped) => return stopped,
    };
    let leaves: Vec<&str> = resolved
        .leaves
        .iter()
        .map(String::as_str)
        .filter(|l| !gone.contains(l))
        .collect();
    // Extra workers only on connections the pool can spare now (see
    // PgStore::spare_connection).
    let wanted = if link.is_none() {
        rule.settings.parallelism.max(1)
    } else {
        1
    };
    let mut extra = Vec::new();
    while extra.len() + 1 < wanted as usize {
        match pg.spare_connection().await {
            Some(c) => extra.push(c),
            None => break,
        }
    }
    let parts = 1 + extra.len() as u32;
    if parts < wanted {
        tracing::info!(rule = %rule.name, wanted, parts, "Fewer workers than parallelism: the store's pool has no more free connections (max_connections).");
    }
    let slices = Slices {
        leaves: &leaves,
        parts,
        sizes: leaves.iter().map(|_| Default::default()).collect(),
    };
    let workers = std::iter::once((0, conn, first))
        .chain(
            extra
                .into_iter()
                .zip(1..)
                .map(|(c, part)| (part, c, Executed::none(Outcome::Ok, None))),
        )
        .map(|(part, mut conn, start)| {
            let shared = &shared;
            let slices = &slices;
            async move {
                let mut done = worker(&mut conn, shared, slices, part, start).await;
                if done.outcome != Outcome::Ok {
                    shared.stop.cancel();
                }
                if let Some(run_id) = shared.run_id.filter(|_| done.unflushed) {
                    let written = progress::record_part(
                        &mut conn,
                        run_id,
                        part,
                        &rule.name,
                        &done.totals(),
                    )
                    .await;
                    if let Err(e) = written {
                        done.durable = false;
                        let reason = format!(
                            "{}could not confirm that the last batches are durable ({}); the next run records this run \
                             with the counts the database kept",
                            done.reason.as_ref().map(|r| format!("{r}; ")).unwrap_or_default(),
                            describe_db_error(&e)
                        );
                        done = done.stop(Outcome::Failed, reason);
                    }
                }
                done
            }
        });
    let results = futures_util::future::join_all(workers).await;
    finish(merge(results))
}

/// What the workers of one rule's run share.
struct Shared<'a> {
    rule: &'a Rule,
    resolved: &'a ResolvedRule,
    claim: Option<&'a Claim>,
    link: Option<&'a Linked<'a>>,
    progress: &'a (dyn Progress + Sync),
    expected: i64,
    /// The exact count of rows to change, when reaching it means the rest
    /// of the heap holds none: the walk ends there (a time-ordered heap's
    /// young tail is never read).
    complete_at: Option<i64>,
    run_id: Option<&'a str>,
    /// Batches commit without waiting for their flush.
    relaxed: bool,
    budget: Budget,
    cancel: &'a Cancel,
    /// Set when a worker stops early: the others stop after their batch.
    stop: Cancel,
}

impl Shared<'_> {
    /// Why a worker must stop before its next batch, if it must.
    fn stopped(&self, batches: i64) -> Option<String> {
        if self.cancel.is_cancelled() {
            Some(format!(
                "interrupted after {batches} batches; a rerun resumes"
            ))
        } else if self.stop.is_cancelled() {
            Some("stopped because another worker of the run stopped".into())
        } else {
            None
        }
    }
}

/// The rows a run may still change (`max_fraction`), shared by its
/// workers: each reserves its batch's rows before committing, so together
/// they never pass the cap.
struct Budget {
    cap: Option<i64>,
    used: std::sync::atomic::AtomicI64,
}

impl Budget {
    fn new(cap: Option<i64>) -> Budget {
        Budget {
            cap,
            used: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Takes `n` rows from the budget, or nothing (false) when they would
    /// pass the cap.
    fn reserve(&self, n: i64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let before = self.used.fetch_add(n, SeqCst);
        if self.cap.is_some_and(|c| before + n > c) {
            self.used.fetch_sub(n, SeqCst);
            return false;
        }
        true
    }

    /// Gives back rows whose batch did not commit.
    fn release(&self, n: i64) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn used(&self) -> i64 {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn remaining(&self) -> Option<i64> {
        self.cap.map(|c| c - self.used())
    }
}

/// Which pages each worker walks: worker `part` of `parts` takes the
/// `part`-th slice of every leaf's heap.
struct Slices<'a> {
    leaves: &'a [&'a str],
    parts: u32,
    /// Each leaf's heap size, measured once by the first worker to reach it.
    sizes: Vec<tokio::sync::OnceCell<(u32, f64)>>,
}

impl Slices<'_> {
    /// Leaf `i`'s pages and tuples per page, one measurement for every
    /// worker: slices cut from two (the heap grows as masking writes new
    /// row versions, or as the application inserts) would leave the pages
    /// between them unwalked.
    async fn size(
        &self,
        i: usize,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(u32, f64), sqlx::Error> {
        self.sizes[i]
            .get_or_try_init(|| heap_size(conn, self.leaves[i]))
            .await
            .copied()
    }

    fn range(&self, pages: u32, part: u32) -> (u32, u32) {
        let at = |k: u32| (u64::from(pages) * u64::from(k) / u64::from(self.parts)) as u32;
        (at(part), at(part + 1))
    }
}

/// Drops the partitions that can go whole (in the first worker's progress
/// row); returns what that did and the leaves gone, or the run's result
/// when it must stop.
async fn drop_partitions<'a>(
    conn: &mut sqlx::PgConnection,
    shared: &Shared<'a>,
) -> Result<(Executed, std::collections::HashSet<&'a str>), Executed> {
    let rule = shared.rule;
    let mut done = Executed::none(Outcome::Ok, None);
    let mut gone = std::collections::HashSet::new();
    for leaf in shared.resolved.drops.iter().filter(|c| c.droppable()) {
        if let Some(reason) = shared.stopped(done.batches) {
            return Err(finish(done.stop(Outcome::Interrupted, reason)));
        }
        let started = std::time::Instant::now();
        let so_far = done.totals();
        let dropped = partition::drop_leaf(
            conn,
            shared.resolved,
            leaf,
            (rule.settings.lock_timeout, rule.settings.statement_timeout),
            shared.budget.remaining(),
            shared.run_id.map(|id| (id, rule.name.as_str(), &so_far)),
        )
        .await;
        match dropped {
            Ok(partition::Dropped::Dropped(rows)) => {
                gone.insert(leaf.quoted.as_str());
                // Checked against the budget under the drop's lock.
                shared
                    .budget
                    .used
                    .fetch_add(rows, std::sync::atomic::Ordering::SeqCst);
                done.affected += rows;
                done.batches += 1;
                done.partitions_dropped.insert(leaf.name.clone(), rows);
                shared
                    .progress
                    .batch_done(&rule.name, shared.budget.used(), shared.expected);
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
                    shared.budget.cap.unwrap_or_default(),
                    done.affected,
                    leaf.name
                );
                return Err(finish(done.stop(Outcome::Refused, reason)));
            }
            Err(e) => return Err(finish(done.stop(Outcome::Failed, describe_db_error(&e)))),
        }
    }
    Ok((done, gone))
}

/// The batch loop of one worker, on one connection, over its slice of
/// every leaf; `done` holds what it starts from.
async fn worker(
    conn: &mut sqlx::PgConnection,
    shared: &Shared<'_>,
    slices: &Slices<'_>,
    part: u32,
    mut done: Executed,
) -> Executed {
    let rule = shared.rule;
    let mut claim_checked = std::time::Instant::now();
    let limit = i64::from(rule.settings.batch_size);
    for (i, leaf) in slices.leaves.iter().enumerate() {
        let last_leaf = i + 1 == slices.leaves.len();
        let (pages, per_page) = match slices.size(i, conn).await {
            Ok(s) => s,
            Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
        };
        let (mut lo, end) = slices.range(pages, part);
        // A window that holds about one batch of rows if every row matched.
        let mut window = ((limit as f64 / per_page).floor() as u32).clamp(1, MAX_WINDOW_PAGES);
        while lo < end {
            if let Some(reason) = shared.stopped(done.batches) {
                return done.stop(Outcome::Interrupted, reason);
            }
            if shared
                .complete_at
                .is_some_and(|n| shared.budget.used() >= n)
            {
                tracing::debug!(rule = %rule.name, part, "Every row the count found is done; the rest of the heap is not walked.");
                return done;
            }
            if let Some(claim) = shared
                .claim
                .filter(|_| claim_checked.elapsed() >= CLAIM_CHECK_INTERVAL)
            {
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
            let hi = lo.saturating_add(window).min(end);
            let durable = shared.run_id.map(|id| (id, part, done.totals()));
            let durable = durable.as_ref().map(|(id, part, t)| (*id, *part, t));
            let started = std::time::Instant::now();
            match batch_with_retries(
                conn,
                shared,
                leaf,
                (lo, hi),
                limit,
                durable,
                // The last window commits synchronously: for a small table
                // (one batch) that is the only flush the run needs.
                shared.relaxed && !(last_leaf && hi >= end),
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
                    if changed + c.conflicts_deleted > 0 {
                        *done.by_leaf.entry(leaf.to_string()).or_default() +=
                            changed + c.conflicts_deleted;
                    }
                    // Every window, changed or not: how long each
                    // transaction held its locks.
                    tracing::debug!(
                        rule = %rule.name,
                        part,
                        rows = changed,
                        pages = hi - lo,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "Batch committed."
                    );
                    if changed > 0 {
                        done.batches += 1;
                        done.affected += changed;
                        shared.progress.batch_done(
                            &rule.name,
                            shared.budget.used(),
                            shared.expected,
                        );
                    }
                    window = next_window(hi - lo, changed, limit)
                        .min(within_time(hi - lo, started.elapsed()));
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
                        shared.budget.cap.unwrap_or_default(),
                        shared.budget.used()
                    );
                    return done.stop(Outcome::Refused, reason);
                }
                Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
            }
        }
    }
    done
}

/// The workers' results as one: counts added up; the outcome is the
/// worst, with its reason.
fn merge(results: Vec<Executed>) -> Executed {
    let rank = |o: Outcome| match o {
        Outcome::Failed => 3,
        Outcome::Refused => 2,
        Outcome::Interrupted => 1,
        _ => 0,
    };
    let mut all = Executed::none(Outcome::Ok, None);
    for r in results {
        all.affected += r.affected;
        all.objects += r.objects;
        all.bytes += r.bytes;
        all.kept += r.kept;
        add_all(&mut all.cascaded, r.cascaded);
        add_all(&mut all.skipped, r.skipped);
        add_all(&mut all.partitions_dropped, r.partitions_dropped);
        add_all(&mut all.by_leaf, r.by_leaf);
        all.blob_failures.0 += r.blob_failures.0;
        if all.blob_failures.1.is_none() {
            all.blob_failures.1 = r.blob_failures.1;
        }
        if all.refused.is_none() {
            all.refused = r.refused;
        }
        all.conflicts += r.conflicts;
        all.conflicts_deleted += r.conflicts_deleted;
        all.batches += r.batches;
        all.durable &= r.durable;
        // A worker stopped by another says less than the one that stopped.
        let stopped_by_other = r
            .reason
            .as_deref()
            .is_some_and(|why| why.starts_with("stopped because another worker"));
        if rank(r.outcome) > rank(all.outcome)
            || (rank(r.outcome) == rank(all.outcome) && all.reason.is_none() && !stopped_by_other)
        {
            all.outcome = r.outcome;
            all.reason = r.reason;
        }
    }
    all
}

/// The end of a run: failed object deletes and refused rows are said.
fn finish(mut done: Executed) -> Executed {
    if done.outcome != Outcome::Ok {
        return done;
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

/// How long one batch's transaction should take at most: the locks it
/// holds (and a standby's replay) stay short even when the server is busy
/// (workers of a parallel run compete for its cores and its WAL).
const BATCH_TIME: Duration = Duration::from_millis(25);

/// The window that would have taken [`BATCH_TIME`] at the pace `pages` took
/// `took`.
fn within_time(pages: u32, took: Duration) -> u32 {
    if took <= BATCH_TIME {
        return u32::MAX;
    }
    let scaled = u128::from(pages) * BATCH_TIME.as_micros() / took.as_micros().max(1);
    u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
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
    shared: &Shared<'_>,
    leaf: &str,
    window: (u32, u32),
    limit: i64,
    durable: Option<(&str, u32, &Totals)>,
    relaxed: bool,
) -> Result<Attempt, sqlx::Error> {
    let rule = shared.rule;
    let mut attempt = 0;
    let mut row_by_row = false;
    loop {
        match one_batch(
            conn, shared, leaf, window, limit, durable, row_by_row, relaxed,
        )
        .await
        {
            Err(e) if row_refusal(&e).is_some() && shared.link.is_none() && !row_by_row => {
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
    shared: &Shared<'_>,
    leaf: &str,
    (lo, hi): (u32, u32),
    limit: i64,
    durable: Option<(&str, u32, &Totals)>,
    row_by_row: bool,
    relaxed: bool,
) -> Result<Attempt, sqlx::Error> {
    let (rule, resolved, link) = (shared.rule, shared.resolved, shared.link);
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
    // Conflicting rows a mask deletes count against the cap too.
    let taken = changed + c.conflicts_deleted;
    if !shared.budget.reserve(taken) {
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
    let committed = async {
        if let Some((run_id, part, so_far)) = durable.filter(|_| changed_anything) {
            // The count commits with the batch, or neither does.
            let mut next = so_far.clone();
            c.add_to(&mut next);
            progress::record_part(&mut tx, run_id, part, &rule.name, &next).await?;
            c.wrote_progress = Some(relaxed);
        }
        tx.commit().await
    }
    .await;
    if let Err(e) = committed {
        shared.budget.release(taken);
        return Err(e);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_shared_by_workers_never_passes_its_cap() {
        let budget = Budget::new(Some(10));
        assert!(budget.reserve(6));
        assert!(!budget.reserve(5), "6 + 5 would pass 10");
        assert_eq!(budget.used(), 6, "a refused reservation takes nothing");
        assert!(budget.reserve(4));
        budget.release(4);
        assert_eq!(budget.remaining(), Some(4));
        let unlimited = Budget::new(None);
        assert!(unlimited.reserve(i64::MAX / 2));
        // Threads racing for the last rows: together they take at most 10.
        let budget = std::sync::Arc::new(Budget::new(Some(10)));
        let taken: i64 = (0..8)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..10).filter(|_| b.reserve(1)).count() as i64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(taken, 10);
    }

    #[test]
    fn slices_cover_every_page_once() {
        for parts in 1..=5 {
            let s = Slices {
                leaves: &[],
                parts,
                sizes: Vec::new(),
            };
            for pages in [0u32, 1, 2, 7, 1000, u32::MAX] {
                let mut next = 0;
                for part in 0..parts {
                    let (lo, hi) = s.range(pages, part);
                    assert_eq!(lo, next, "{pages} pages, part {part} of {parts}");
                    assert!(hi >= lo);
                    next = hi;
                }
                assert_eq!(next, pages);
            }
        }
    }

    #[test]
    fn a_slow_batch_shrinks_the_next_window_to_the_time_budget() {
        assert_eq!(within_time(100, Duration::from_millis(10)), u32::MAX);
        assert_eq!(within_time(100, Duration::from_millis(50)), 50);
        assert_eq!(within_time(1, Duration::from_secs(1)), 1);
    }

    #[test]
    fn the_next_window_aims_at_nine_tenths_of_a_batch() {
        assert_eq!(next_window(100, 5000, 5000), 90);
        assert_eq!(next_window(100, 2500, 5000), 180);
        assert_eq!(next_window(100, 0, 5000), 400, "at most fourfold");
        assert_eq!(next_window(1, 100_000, 5000), 1, "never below a page");
        assert_eq!(next_window(10_000, 1, 5000), MAX_WINDOW_PAGES);
    }
}
