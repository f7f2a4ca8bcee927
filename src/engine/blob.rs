//! Deleting a blob rule's selection: batches of at most `batch_size` (and
//! the store's limit), one result per item, stopping between batches when
//! cancelled or when the rule's claim is lost.

use super::{Cancel, Progress};
use crate::audit::log::Claim;
use crate::config::Rule;
use crate::plan::blob::Selection;
use crate::plan::Outcome;
use crate::store::blob::{confirm_gone, BlobRef, BlobStore, StoreError};
use crate::store::postgres::progress::{self, Totals};
use futures_util::stream::{FuturesOrdered, StreamExt};
use std::collections::BTreeMap;

/// What the deletion did.
#[derive(Debug)]
pub struct Deleted {
    /// Keys whose selected items all went.
    pub objects: i64,
    /// Versions and delete markers removed.
    pub versions: i64,
    /// Items kept because they could not be touched safely, by reason.
    pub skipped: BTreeMap<String, i64>,
    /// Bytes freed.
    pub bytes: u64,
    /// Delete calls made.
    pub batches: i64,
    /// `ok`, `failed` or `interrupted`.
    pub outcome: Outcome,
    /// Why, when not ok.
    pub reason: Option<String>,
}

/// Whether the items of one key went: a key counts as deleted when an
/// object item of it went and none of its items failed.
#[derive(Debug, Default)]
struct KeyDone {
    key: String,
    gone: bool,
    failed: bool,
}

impl Deleted {
    /// Nothing deleted yet, `ok` so far.
    fn new() -> Deleted {
        Deleted {
            skipped: BTreeMap::new(),
            objects: 0,
            versions: 0,
            bytes: 0,
            batches: 0,
            outcome: Outcome::Ok,
            reason: None,
        }
    }

    /// Nothing deleted, because of `reason`.
    pub fn failed(reason: String) -> Deleted {
        Deleted {
            outcome: Outcome::Failed,
            reason: Some(reason),
            ..Deleted::new()
        }
    }
}

impl KeyDone {
    /// Accounts for one item's result (its bytes and version when it
    /// went); a new key first settles the last.
    fn add(&mut self, done: &mut Deleted, item: &BlobRef, ok: bool) {
        if item.key != self.key {
            self.settle(done);
            self.key.clone_from(&item.key);
        }
        // An upload aborted is not an object deleted; one that could not
        // be aborted still fails its key.
        self.gone |= ok && !item.pending;
        self.failed |= !ok;
        if ok {
            done.bytes += item.size;
            if item.version.is_some() && !item.pending {
                done.versions += 1;
            }
        }
    }

    fn settle(&mut self, done: &mut Deleted) {
        if self.gone && !self.failed {
            done.objects += 1;
        }
        self.gone = false;
        self.failed = false;
    }
}

/// Deletes `selection` from `store`.
pub async fn execute(
    store: &dyn BlobStore,
    rule: &Rule,
    selection: &mut Selection,
    cancel: &Cancel,
    claim: Option<&Claim>,
    progress: &(dyn Progress + Sync),
    durable: Option<(&sqlx::PgPool, &str)>,
) -> Deleted {
    let mut done = Deleted::new();
    let per_batch = (rule.settings.batch_size as usize)
        .min(store.batch_limit())
        .max(1);
    let matched = selection.matched;
    let mut chunks = match selection.due.chunks(per_batch) {
        Ok(chunks) => chunks,
        Err(e) => {
            done.outcome = Outcome::Failed;
            done.reason = Some(format!("reading the list of objects to delete: {e}"));
            return done;
        }
    };
    let mut key = KeyDone::default();
    // A row per call in flight holds its items until its result is counted.
    let mut free_slots: Vec<u32> = (1..=store.parallelism().max(1) as u32).rev().collect();
    let mut stale_slots: Vec<u32> = Vec::new();
    let mut errors = 0usize;
    let mut first_error = None;
    // Up to `parallelism` delete calls in flight; before each new one, the
    // cancel flag and the claim are checked, so a stop waits only for the
    // calls already sent.
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < store.parallelism().max(1) && done.outcome == Outcome::Ok {
            if cancel.is_cancelled() {
                done.outcome = Outcome::Interrupted;
                done.reason = Some(format!(
                    "interrupted after {} batches; a rerun resumes",
                    done.batches + in_flight.len() as i64
                ));
                break;
            }
            if let Some(claim) = claim {
                if !claim.held().await {
                    done.outcome = Outcome::Interrupted;
                    done.reason = Some("lost the rule's claim; stopped so that no other replica runs this rule at the same time".into());
                    break;
                }
            }
            let chunk = match chunks.next_chunk() {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    done.outcome = Outcome::Failed;
                    done.reason = Some(format!("reading the list of objects to delete: {e}"));
                    break;
                }
            };
            let slot = free_slots.pop().unwrap_or(0);
            if let Some((pool, run_id)) = durable {
                if let Err(e) =
                    progress::in_flight(pool, run_id, &rule.name, slot, &chunk.items).await
                {
                    // Unrecorded, a kill during the call would lose its
                    // count: the call is not made.
                    done.outcome = Outcome::Failed;
                    done.reason = Some(format!(
                        "could not record the next delete call before making it (the audit database): {e}"
                    ));
                    break;
                }
            }
            in_flight.push_back(async move {
                let results = store.delete(&chunk.items).await;
                (chunk, results, slot)
            });
        }
        let Some((chunk, results, slot)) = in_flight.next().await else {
            break;
        };
        done.batches += 1;
        let results = confirm_uncertain(store, rule, &chunk.items, results).await;
        for (item, result) in chunk.items.iter().zip(results) {
            match result {
                Ok(()) => key.add(&mut done, item, true),
                Err(StoreError::Skipped { reason, detail }) => {
                    tracing::warn!(rule = %rule.name, %detail, "Kept an object that cannot be touched safely.");
                    *done.skipped.entry(reason.to_string()).or_default() += 1;
                    key.add(&mut done, item, false);
                }
                Err(e) => {
                    errors += 1;
                    key.add(&mut done, item, false);
                    first_error.get_or_insert_with(|| format!("{}: {e}", item.key));
                }
            }
        }
        // A chunk holds whole keys unless one key is longer than a chunk:
        // its last key is done unless it goes on in the next.
        if !chunk.continues {
            key.settle(&mut done);
        }
        if let Some((pool, run_id)) = durable {
            // After the store answered: a kill before this write leaves the
            // call's items in flight, for the next run to count.
            let totals = Totals {
                affected: done.objects,
                objects: done.objects,
                bytes: i64::try_from(done.bytes).unwrap_or(i64::MAX),
                batches: done.batches,
                cascaded: BTreeMap::new(),
                skipped: done.skipped.clone(),
                versions: done.versions,
                ..Totals::default()
            };
            // A call whose count could not be written keeps its items in
            // flight (its slot is not reused) until a later write clears
            // them with the totals that count it.
            let mut clear = std::mem::take(&mut stale_slots);
            clear.push(slot);
            match progress::settle_call(pool, run_id, &rule.name, &totals, &clear).await {
                Ok(()) => free_slots.extend(clear),
                Err(e) => {
                    tracing::warn!(rule = %rule.name, error = %e, "Could not record the run's progress; stopping after the calls in flight.");
                    stale_slots = clear;
                    if done.outcome == Outcome::Ok {
                        done.outcome = Outcome::Failed;
                        done.reason = Some(format!(
                            "could not record the run's progress in the audit database ({e}); stopped so that its counts stay exact"
                        ));
                    }
                }
            }
        } else {
            free_slots.push(slot);
        }
        progress.batch_done(&rule.name, done.objects, matched);
    }
    key.settle(&mut done);
    if errors > 0 && done.outcome == Outcome::Ok {
        done.outcome = Outcome::Failed;
        done.reason = Some(format!(
            "{errors} item(s) could not be deleted, first: {}",
            first_error.unwrap_or_default()
        ));
    }
    done
}

/// Asks `store` which items of the `calls` a killed run had in flight are
/// gone, and counts them as that run's (no later run will see them), as
/// the run itself would have: a key when all its items in flight went.
/// Returns the counts and how many items the store still shows or could
/// not say about (not counted).
pub async fn recover_in_flight(store: &dyn BlobStore, calls: &[Vec<BlobRef>]) -> (Deleted, usize) {
    let mut done = Deleted::new();
    let mut unconfirmed = 0;
    let mut items: Vec<(&BlobRef, bool)> = Vec::new();
    for call in calls {
        let gone = confirm_gone(store, &call.iter().collect::<Vec<_>>()).await;
        done.batches += i64::from(gone.iter().any(|g| *g));
        unconfirmed += gone.iter().filter(|g| !**g).count();
        items.extend(call.iter().zip(gone));
    }
    // A key longer than a call spans two: its items together.
    items.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    let mut key = KeyDone::default();
    for (item, gone) in items {
        key.add(&mut done, item, gone);
    }
    key.settle(&mut done);
    (done, unconfirmed)
}

/// Items whose delete failed for a reason that leaves doubt (a network or
/// service error after retries: the store may have acted before its answer
/// was lost) are listed again; those it no longer has count as deleted, so
/// the signed log counts them, since no later run will see them.
async fn confirm_uncertain(
    store: &dyn BlobStore,
    rule: &Rule,
    chunk: &[BlobRef],
    mut results: Vec<Result<(), StoreError>>,
) -> Vec<Result<(), StoreError>> {
    let doubtful: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(StoreError::Other(_))))
        .map(|(i, _)| i)
        .collect();
    if doubtful.is_empty() {
        return results;
    }
    let items: Vec<&BlobRef> = doubtful.iter().map(|&i| &chunk[i]).collect();
    let gone = confirm_gone(store, &items).await;
    let confirmed = gone.iter().filter(|g| **g).count();
    if confirmed > 0 {
        tracing::warn!(
            rule = %rule.name,
            confirmed,
            failed = doubtful.len(),
            "A delete call failed, but listing again shows the store did remove these items; they are counted as deleted."
        );
    }
    for (i, gone) in doubtful.into_iter().zip(gone) {
        if gone {
            results[i] = Ok(());
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;

    fn item(key: &str) -> BlobRef {
        BlobRef {
            key: key.into(),
            version: None,
            size: 3,
            listed_modified: chrono::Utc::now(),
            pending: false,
        }
    }

    #[tokio::test]
    async fn recovery_counts_what_is_gone_and_a_key_once_across_calls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), "k").unwrap();
        let store = FsStore::new("s", dir.path());
        // `gone` was split over two calls; `kept` is still there.
        let calls = vec![
            vec![item("a-gone"), item("gone")],
            vec![item("gone"), item("kept")],
        ];
        let (done, unconfirmed) = recover_in_flight(&store, &calls).await;
        assert_eq!((done.objects, done.bytes, done.batches), (2, 9, 2));
        assert_eq!(unconfirmed, 1);
    }
}
