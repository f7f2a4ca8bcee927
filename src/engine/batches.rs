//! The batch loop of a table rule: walk each leaf's heap in ctid windows,
//! lock then change at most `batch_size` rows per short transaction.

use super::Cancel;
use crate::config::Rule;
use crate::plan::{describe_db_error, Outcome};
use crate::store::postgres::batch::{self, Tid};
use crate::store::postgres::resolve::ResolvedRule;
use crate::store::postgres::{schema, PgStore};
use sqlx::Connection;

/// Largest window of heap pages one lock step scans (128 MiB of 8 KiB
/// pages): bounds a statement's time when matches are sparse.
const MAX_WINDOW_PAGES: u32 = 16_384;

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
    /// Rows with unparsable IP text among those changed.
    pub unparsable: i64,
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
            unparsable: 0,
            batches: 0,
            outcome: Outcome::Failed,
            reason: Some(reason),
        }
    }

    fn stop(&mut self, outcome: Outcome, reason: String) {
        self.outcome = outcome;
        self.reason = Some(reason);
    }
}

/// One batch's result.
enum Step {
    /// Committed: (locked rows, changed rows, unparsable, last tid).
    Done {
        locked: usize,
        changed: u64,
        unparsable: i64,
        last: Option<Tid>,
    },
    /// Rolled back because committing would pass the cap.
    OverCap { changed: u64 },
}

/// Executes a resolved rule. `cap` is the most rows the run may change.
pub async fn execute(
    pg: &PgStore,
    rule: &Rule,
    resolved: &ResolvedRule,
    cap: Option<i64>,
    cancel: &Cancel,
    progress: &(dyn Progress + Sync),
    expected: i64,
) -> Executed {
    let mut done = Executed {
        affected: 0,
        unparsable: 0,
        batches: 0,
        outcome: Outcome::Ok,
        reason: None,
    };
    let limit = rule.settings.batch_size;
    for leaf in &resolved.leaves {
        let sizes = async {
            let mut conn = pg.pool.acquire().await?;
            let pages = schema::relpages(&mut conn, leaf)
                .await
                .map_err(|e| match e {
                    schema::SchemaError::Db(e) => e,
                    schema::SchemaError::Target(t) => sqlx::Error::Protocol(t.message),
                })?;
            let per_page = batch::tuples_per_page(&mut conn, leaf).await?;
            Ok::<_, sqlx::Error>((pages, per_page))
        };
        let (pages, per_page) = match sizes.await {
            Ok(s) => s,
            Err(e) => {
                done.stop(Outcome::Failed, describe_db_error(&e));
                return done;
            }
        };
        // Start with a window that holds about one batch of rows if every row
        // matched; it doubles while windows come back half empty.
        let mut window = ((f64::from(limit) / per_page).ceil() as u32).clamp(8, MAX_WINDOW_PAGES);
        let mut lo = Tid::page(0);
        while lo.block < pages {
            if cancel.is_cancelled() {
                done.stop(
                    Outcome::Interrupted,
                    format!(
                        "interrupted after {} batches; a rerun resumes",
                        done.batches
                    ),
                );
                return done;
            }
            let hi = Tid::page(lo.block.saturating_add(window).min(pages));
            let remaining = cap.map(|c| c - done.affected);
            match one_batch(pg, rule, resolved, leaf, lo, hi, limit, remaining).await {
                Ok(Step::Done {
                    locked,
                    changed,
                    unparsable,
                    last,
                }) => {
                    if changed > 0 {
                        done.batches += 1;
                        done.affected += changed as i64;
                        done.unparsable += unparsable;
                        progress.batch_done(&rule.name, done.affected, expected);
                    }
                    match last {
                        Some(last) if locked >= limit as usize => lo = last.next(),
                        _ => {
                            lo = hi;
                            if locked < limit as usize / 2 {
                                window = window.saturating_mul(2).min(MAX_WINDOW_PAGES);
                            }
                        }
                    }
                }
                Ok(Step::OverCap { changed }) => {
                    done.stop(
                        Outcome::Refused,
                        format!(
                            "stopped before passing the max_fraction cap ({} rows): {} rows changed, the next batch of {changed} was rolled back; \
                             the table changed since the plan, check the rule",
                            cap.unwrap_or_default(),
                            done.affected
                        ),
                    );
                    return done;
                }
                Err(e) => {
                    done.stop(Outcome::Failed, describe_db_error(&e));
                    return done;
                }
            }
        }
    }
    done
}

/// Locks and changes one batch in one transaction with local timeouts.
#[allow(clippy::too_many_arguments)]
async fn one_batch(
    pg: &PgStore,
    rule: &Rule,
    resolved: &ResolvedRule,
    leaf: &str,
    lo: Tid,
    hi: Tid,
    limit: u32,
    remaining: Option<i64>,
) -> Result<Step, sqlx::Error> {
    let mut conn = pg.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
    )
    .bind(format!("{}ms", rule.settings.lock_timeout.as_millis()))
    .bind(format!("{}ms", rule.settings.statement_timeout.as_millis()))
    .execute(&mut *tx)
    .await?;
    let locked = batch::lock(&mut tx, resolved, leaf, lo, hi, limit).await?;
    if locked.tids.is_empty() {
        tx.rollback().await?;
        return Ok(Step::Done {
            locked: 0,
            changed: 0,
            unparsable: 0,
            last: None,
        });
    }
    let changed = match resolved.mask {
        Some(_) => batch::mask(&mut tx, resolved, leaf, &locked.tids).await?,
        None => batch::delete(&mut tx, resolved, leaf, &locked.tids).await?,
    };
    if remaining.is_some_and(|r| changed as i64 > r) {
        tx.rollback().await?;
        return Ok(Step::OverCap { changed });
    }
    tx.commit().await?;
    Ok(Step::Done {
        locked: locked.tids.len(),
        changed,
        unparsable: locked.unparsable,
        last: locked.last,
    })
}
