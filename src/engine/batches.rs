//! The batch loop of a table rule: walk each leaf's heap in windows of pages,
//! changing at most `batch_size` rows (or one page's rows, when a page holds
//! more) per short transaction.

use super::Cancel;
use crate::audit::log::Claim;
use crate::config::{BlobLocator, Rule};
use crate::plan::{describe_db_error, Outcome};
use crate::store::blob::{BlobMeta, BlobRef, BlobStore};
use crate::store::postgres::batch;
use crate::store::postgres::resolve::ResolvedRule;
use crate::store::postgres::{schema, PgStore};
use sqlx::Connection;
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
    /// Batches committed.
    pub batches: i64,
    /// `ok`, `refused`, `failed` or `interrupted`.
    pub outcome: Outcome,
    /// Why, when not ok.
    pub reason: Option<String>,
}

impl Executed {
    /// A loop that never started.
    pub fn failed(reason: String) -> Executed {
        Executed {
            affected: 0,
            objects: 0,
            bytes: 0,
            kept: 0,
            batches: 0,
            outcome: Outcome::Failed,
            reason: Some(reason),
        }
    }

    fn stop(mut self, outcome: Outcome, reason: String) -> Executed {
        self.outcome = outcome;
        self.reason = Some(reason);
        self
    }
}

/// How one batch attempt ended.
enum Attempt {
    /// Committed: rows changed, and for a `blobs` rule the objects and bytes
    /// deleted with them and the rows kept because the store locks an object.
    Committed {
        rows: i64,
        objects: i64,
        bytes: u64,
        kept: i64,
    },
    /// Rolled back: deleting the rows' objects failed.
    BlobsFailed(String),
    /// Rolled back: it changed this many rows, more than the batch size.
    TooLarge(i64),
    /// Rolled back: committing would pass the run's cap.
    OverCap(i64),
}

/// Executes a resolved rule. `cap` is the most rows the run may change.
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
) -> Executed {
    let mut claim_checked = std::time::Instant::now();
    let mut done = Executed {
        affected: 0,
        objects: 0,
        bytes: 0,
        kept: 0,
        batches: 0,
        outcome: Outcome::Ok,
        reason: None,
    };
    let limit = i64::from(rule.settings.batch_size);
    for leaf in &resolved.leaves {
        let (pages, per_page) = match heap_size(pg, leaf).await {
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
            let remaining = cap.map(|c| c - done.affected);
            match batch_with_retries(pg, rule, resolved, link, leaf, (lo, hi), limit, remaining)
                .await
            {
                Ok(Attempt::Committed {
                    rows: changed,
                    objects,
                    bytes,
                    kept,
                }) => {
                    done.objects += objects;
                    done.bytes += bytes;
                    done.kept += kept;
                    if changed > 0 {
                        done.batches += 1;
                        done.affected += changed;
                        progress.batch_done(&rule.name, done.affected, expected);
                    }
                    lo = hi;
                    if changed < limit / 2 {
                        window = window.saturating_mul(2).min(MAX_WINDOW_PAGES);
                    }
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
                Ok(Attempt::BlobsFailed(why)) => {
                    let reason = format!("deleting the rows' objects failed; the batch's rows were kept and a rerun retries: {why}");
                    return done.stop(Outcome::Failed, reason);
                }
                Err(e) => return done.stop(Outcome::Failed, describe_db_error(&e)),
            }
        }
    }
    done
}

/// Pages in the leaf's heap now (rows added later are new, hence not due)
/// and the statistics' tuples per page.
async fn heap_size(pg: &PgStore, leaf: &str) -> Result<(u32, f64), sqlx::Error> {
    let mut conn = pg.pool.acquire().await?;
    let pages = schema::relpages(&mut conn, leaf)
        .await
        .map_err(|e| match e {
            schema::SchemaError::Db(e) => e,
            schema::SchemaError::Target(t) => sqlx::Error::Protocol(t.message),
        })?;
    Ok((pages, batch::tuples_per_page(&mut conn, leaf).await?))
}

fn is_retryable(e: &sqlx::Error) -> bool {
    // serialization_failure, deadlock_detected
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40001" || c == "40P01")
}

#[allow(clippy::too_many_arguments)]
async fn batch_with_retries(
    pg: &PgStore,
    rule: &Rule,
    resolved: &ResolvedRule,
    link: Option<&Linked<'_>>,
    leaf: &str,
    window: (u32, u32),
    limit: i64,
    remaining: Option<i64>,
) -> Result<Attempt, sqlx::Error> {
    let mut attempt = 0;
    loop {
        match one_batch(pg, rule, resolved, link, leaf, window, limit, remaining).await {
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
    pg: &PgStore,
    rule: &Rule,
    resolved: &ResolvedRule,
    link: Option<&Linked<'_>>,
    leaf: &str,
    (lo, hi): (u32, u32),
    limit: i64,
    remaining: Option<i64>,
) -> Result<Attempt, sqlx::Error> {
    let mut conn = pg.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
    )
    .bind(format!("{}ms", rule.settings.lock_timeout.as_millis()))
    .bind(format!("{}ms", rule.settings.statement_timeout.as_millis()))
    .execute(&mut *tx)
    .await?;
    let (changed, objects, bytes, kept) = match link {
        None => (
            batch::change(&mut tx, resolved, leaf, lo, hi).await?,
            0,
            0,
            0,
        ),
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
            // whose rows are gone.
            let (mut tids, mut refs, mut kept) = (Vec::new(), Vec::new(), 0);
            for (tid, values) in rows {
                match link.objects_of(&values).await {
                    Ok(Some(objects)) => {
                        tids.push(tid);
                        refs.extend(objects);
                    }
                    Ok(None) => kept += 1,
                    Err(why) => {
                        tx.rollback().await?;
                        return Ok(Attempt::BlobsFailed(why));
                    }
                }
            }
            let bytes: u64 = refs.iter().map(|r| r.size).sum();
            for chunk in refs.chunks(link.store.batch_limit().max(1)) {
                let failed: Vec<String> = chunk
                    .iter()
                    .zip(link.store.delete(chunk).await)
                    .filter_map(|(r, result)| result.err().map(|e| format!("{}: {e}", r.key)))
                    .collect();
                if let Some(first) = failed.first() {
                    tx.rollback().await?;
                    return Ok(Attempt::BlobsFailed(format!(
                        "{} object(s) not deleted, first: {first}",
                        failed.len()
                    )));
                }
            }
            let rows = batch::delete_tids(&mut tx, resolved, leaf, &tids).await?;
            // Objects are keys: the versions of one key are one object.
            let keys: std::collections::HashSet<&str> = refs
                .iter()
                .filter(|r| !r.pending)
                .map(|r| r.key.as_str())
                .collect();
            (rows, keys.len() as i64, bytes, kept)
        }
    };
    // One page is the smallest window: its rows are a batch even when a page
    // holds more than batch_size of them.
    if changed > limit && hi - lo > 1 {
        tx.rollback().await?;
        return Ok(Attempt::TooLarge(changed));
    }
    if remaining.is_some_and(|r| changed > r) {
        tx.rollback().await?;
        return Ok(Attempt::OverCap(changed));
    }
    tx.commit().await?;
    Ok(Attempt::Committed {
        rows: changed,
        objects,
        bytes,
        kept,
    })
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
    async fn objects_of(&self, values: &[Option<String>]) -> Result<Option<Vec<BlobRef>>, String> {
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
        let listing: Vec<BlobMeta> = self
            .store
            .list(&prefix)
            .try_collect()
            .await
            .map_err(|e| format!("listing {prefix}: {e}"))?;
        let mut mine: Vec<BlobMeta> = listing
            .into_iter()
            .filter(|m| !exact || m.key == prefix)
            .collect();
        self.store
            .describe(&mut mine, false)
            .await
            .map_err(|e| format!("reading object locks under {prefix}: {e}"))?;
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
