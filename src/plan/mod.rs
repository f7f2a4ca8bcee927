//! Plans: per rule, the cutoff and what a run would do now, without changing
//! anything.
//!
//! `plan` and `run` share [`prepare`], so the numbers a plan shows are the
//! numbers the run starts from. Counting runs in a `READ ONLY` transaction.

pub mod blob;
pub mod due;

use crate::config::{Config, Rule, Target};
use crate::store::postgres::batch::{self, Counts};
use crate::store::postgres::partition;
use crate::store::postgres::resolve::{self, ResolvedRule};
use crate::store::postgres::schema::SchemaError;
use crate::store::Stores;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Connection;
use std::collections::BTreeMap;

/// A whole plan: when it was computed for and one item per rule.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The "now" the plan simulates (`--at`), or the time it was made.
    #[serde(serialize_with = "ser_ts")]
    pub at: DateTime<Utc>,
    /// One item per rule, in file order.
    pub rules: Vec<RuleReport>,
}

/// What a rule would do (plan) or did (run). Plans leave the run fields empty.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    /// Rule name.
    pub rule: String,
    /// Store name.
    pub store: String,
    /// Table, or prefix.
    pub target: String,
    /// `delete` or `mask`.
    pub action: &'static str,
    /// Rule description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Policy clause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<String>,
    /// `keep` as written (normalised).
    pub keep: String,
    /// `now - keep`.
    #[serde(serialize_with = "ser_opt_ts")]
    pub cutoff: Option<DateTime<Utc>>,
    /// Rows the rule would change (guards and holds applied; already-masked
    /// rows excluded).
    pub matched: i64,
    /// Due rows a guard, hold or cascade keeps back.
    pub protected: i64,
    /// Of `protected`, what each guard, hold or store lock keeps back (a
    /// row kept by two counts for both).
    pub protected_by: BTreeMap<String, i64>,
    /// Due rows whose text IP value does not parse (mask rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unparsable: Option<i64>,
    /// Mask rules: due rows a unique key would refuse in their masked form
    /// (plan: predicted; run: kept unmasked and counted). Not in `matched`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<i64>,
    /// Runs of mask rules with `on_conflict = "delete"`: of `conflicts`,
    /// the rows deleted (removals, counted in the records too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts_deleted: Option<i64>,
    /// Plans of `keep_expr` rules: how many rows inside `where` get each
    /// period, clamped to `keep_min`..`keep_max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_distribution: Option<Vec<KeepRows>>,
    /// Table rules: rows inside the rule's `where` whose age is NULL. The
    /// contract keeps them forever; they are counted so that is seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_age: Option<i64>,
    /// Blob rules: versions and delete markers to remove (plan) or removed (run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<i64>,
    /// `blobs` rules: objects deleted with the rows (run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<i64>,
    /// Blob rules: bytes to free (plan) or freed (run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rows in the table (the `max_fraction` base).
    pub total: i64,
    /// Batches the change takes (plan: estimated; run: executed).
    pub batches: i64,
    /// Oldest age among matched rows: how late the promise is.
    #[serde(serialize_with = "ser_opt_ts", skip_serializing_if = "Option::is_none")]
    pub oldest: Option<DateTime<Utc>>,
    /// Rows changed (run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affected: Option<i64>,
    /// Rows other tables lose through `ON DELETE CASCADE`, by `schema.table`
    /// (plan: predicted; run: as PostgreSQL counted them).
    pub cascaded: BTreeMap<String, i64>,
    /// Partitioned tables: partitions dropped whole instead of purged row by
    /// row (plan: would drop; run: dropped), with their rows, which are in
    /// `matched` and `affected`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions_dropped: BTreeMap<String, i64>,
    /// Due rows or objects kept because one item could not be touched
    /// safely, by reason (`bad_key`, `symlink`, `modified`, ...).
    pub skipped: BTreeMap<String, i64>,
    /// `planned`, `would_refuse`, `failed` (plan); `ok`, `refused`,
    /// `failed`, `interrupted` (run).
    pub outcome: Outcome,
    /// Why a rule was (or would be) refused, or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What protects rows (cascade paths into guarded tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Run id (run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// One period of a `keep_expr` rule and the rows that get it.
#[derive(Debug, Clone, Serialize)]
pub struct KeepRows {
    /// The period (`1h`, `7d`).
    pub keep: String,
    /// Rows inside the rule's `where` with it.
    pub rows: i64,
}

/// How a rule's plan or run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Plan: would run.
    Planned,
    /// Plan: a safety check would refuse the run.
    WouldRefuse,
    /// Run: completed.
    Ok,
    /// Run: refused by a safety check, nothing changed.
    Refused,
    /// Plan or run: a store failed.
    Failed,
    /// Run: stopped between batches on request.
    Interrupted,
}

impl Outcome {
    /// The process exit code this outcome calls for (1 failed, 3 refused).
    pub fn exit_code(self) -> i32 {
        match self {
            // An interrupted run left work undone: not a success for a script.
            Outcome::Failed | Outcome::Interrupted => 1,
            Outcome::Refused => 3,
            _ => 0,
        }
    }
}

/// The exit code for a set of outcomes: failed (1) over refused (3) over ok.
pub fn worst_exit_code<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> i32 {
    let codes: Vec<i32> = outcomes.into_iter().map(|o| o.exit_code()).collect();
    if codes.contains(&1) {
        1
    } else if codes.contains(&3) {
        3
    } else {
        0
    }
}

/// Serialises a timestamp as records format it.
pub(crate) fn ser_ts<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::audit::record::format_ts(*ts))
}

fn ser_opt_ts<S: serde::Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => ser_ts(ts, s),
        None => s.serialize_none(),
    }
}

/// Options shared by `plan` and `run`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Simulated "now" instead of the database clock.
    pub at: Option<DateTime<Utc>>,
    /// Lift the `max_fraction` cap for this run.
    pub allow_large: bool,
    /// Preparing a real run: `at` may not lie after the database's now.
    pub for_run: bool,
}

/// A rule ready to run: its report so far and, when runnable, its SQL.
#[derive(Debug)]
pub struct Prepared {
    /// The plan's view of the rule.
    pub report: RuleReport,
    /// The resolved SQL (None when refused or failed).
    pub resolved: Option<ResolvedRule>,
    /// Blob rules: the objects to remove.
    pub blob: Option<blob::Selection>,
}

impl RuleReport {
    /// An empty report for `rule`.
    pub fn new(rule: &Rule) -> RuleReport {
        RuleReport {
            rule: rule.name.clone(),
            store: rule.store.clone(),
            target: rule.target_name(),
            action: rule.action_name(),
            description: rule.description.clone(),
            policy_ref: rule.policy_ref.clone(),
            keep: rule.keep_text(),
            cutoff: None,
            matched: 0,
            protected: 0,
            protected_by: BTreeMap::new(),
            unparsable: None,
            null_age: None,
            keep_distribution: None,
            conflicts: None,
            conflicts_deleted: None,
            versions: None,
            objects: None,
            bytes: None,
            total: 0,
            batches: 0,
            oldest: None,
            affected: None,
            cascaded: BTreeMap::new(),
            partitions_dropped: BTreeMap::new(),
            skipped: BTreeMap::new(),
            outcome: Outcome::Planned,
            reason: None,
            notes: Vec::new(),
            run_id: None,
        }
    }

    fn refuse(mut self, reason: impl Into<String>) -> Prepared {
        self.outcome = Outcome::WouldRefuse;
        self.reason = Some(reason.into());
        Prepared {
            report: self,
            resolved: None,
            blob: None,
        }
    }

    fn fail(mut self, reason: impl Into<String>) -> Prepared {
        self.outcome = Outcome::Failed;
        self.reason = Some(reason.into());
        Prepared {
            report: self,
            resolved: None,
            blob: None,
        }
    }
}

/// Plans every rule in `rules`.
pub async fn plan(config: &Config, stores: &Stores, rules: &[&Rule], options: PlanOptions) -> Plan {
    let mut items = Vec::new();
    for rule in rules {
        items.push(prepare(config, stores, rule, options).await.report);
    }
    Plan {
        at: options.at.unwrap_or_else(Utc::now),
        rules: items,
    }
}

/// Computes a rule's cutoff from the store's clock, resolves its SQL and
/// counts, and applies the safety checks (clock skew, `max_fraction`).
pub async fn prepare(
    config: &Config,
    stores: &Stores,
    rule: &Rule,
    options: PlanOptions,
) -> Prepared {
    let report = RuleReport::new(rule);
    let table = match &rule.target {
        Target::Table(t) => t,
        Target::Prefix(prefix) => {
            return prepare_blob(config, stores, rule, prefix, report, options).await
        }
    };
    let Some(pg) = stores.postgres(&rule.store) else {
        return report.fail(format!("store `{}` is not open", rule.store));
    };
    if pg.down().is_some() {
        // The store's one error was already said; the rule names it.
        return report.fail(format!(
            "store `{}` ({}) is unreachable; nothing was done",
            rule.store,
            pg.address()
        ));
    }
    let clock = match pg.clock().await {
        Ok(c) => c,
        Err(e) => return report.fail(format!("store `{}`: {e}", rule.store)),
    };
    if clock.skew > rule.settings.max_clock_skew {
        return report.refuse(format!(
            "database clock and local clock differ by {}s (max_clock_skew is {}s); fix NTP on one of them",
            clock.skew.as_secs(),
            rule.settings.max_clock_skew.as_secs()
        ));
    }
    let at = options.at.unwrap_or(clock.db_now);
    if options.for_run && at > clock.db_now {
        return report
            .refuse("run --at may only move time backwards (it lies after the database's now)");
    }
    let Some(cutoff) = rule.keep.cutoff(at) else {
        return report.refuse(format!("keep {} reaches before year 0", rule.keep));
    };
    let mut report = report;
    report.cutoff = Some(cutoff);
    let counted = async {
        let mut conn = pg.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        crate::store::postgres::begin_counting(&mut tx, rule.settings.lock_timeout).await?;
        let resolved = resolve::resolve(
            &mut tx,
            config,
            &rule.store,
            table,
            rule.keep_expr.as_ref(),
            cutoff,
            at,
        )
        .await?;
        let mut resolved = resolved;
        if partition::excluded(&resolved, table.filter.is_some(), table.blobs.is_some()).is_none() {
            resolved.drops = partition::candidates(&mut tx, &resolved).await?;
        }
        let counts = batch::count(&mut tx, &resolved).await?;
        let cascaded = batch::count_cascaded(&mut tx, &resolved).await?;
        let conflicts = batch::count_conflicts(&mut tx, &resolved).await?;
        // A plan shows who gets which period; a run needs only its due rows.
        let distribution = if options.for_run {
            Vec::new()
        } else {
            batch::keep_distribution(&mut tx, &resolved, table.filter.as_deref()).await?
        };
        tx.rollback().await?;
        Ok::<_, SchemaError>((resolved, counts, cascaded, distribution, conflicts))
    };
    let (resolved, counts, cascaded, distribution, conflicts) = match counted.await {
        Ok(r) => r,
        Err(SchemaError::Target(e)) => return report.refuse(e.message),
        Err(SchemaError::Db(e)) => return report.fail(describe_db_error(&e)),
    };
    apply_counts(
        &mut report,
        &resolved,
        counts.clone(),
        rule.settings.batch_size,
    );
    report.cascaded = cascaded;
    report.partitions_dropped = resolved
        .drops
        .iter()
        .filter(|c| c.droppable())
        .map(|c| (c.name.clone(), c.rows))
        .collect();
    if resolved.mask.is_some() {
        // `matched` is what the run will mask; conflicts are kept apart.
        report.matched -= conflicts;
        report.conflicts = Some(conflicts);
    }
    if rule.keep_expr.is_some() && !options.for_run {
        report.keep_distribution = Some(
            distribution
                .into_iter()
                .map(|(keep, rows)| KeepRows { keep, rows })
                .collect(),
        );
    }
    report.notes = resolved.notes.clone();
    if let Some(reason) = cap_exceeded(
        &counts,
        rule.settings.max_fraction,
        options.allow_large,
        &report.target,
    ) {
        return report.refuse(reason);
    }
    if let Some(reason) = mostly_unparsable(&counts, table) {
        return report.refuse(reason);
    }
    if let Some(link) = &table.blobs {
        // Counted above so the plan shows what is due; deleting the rows
        // alone would orphan their objects and lose the keys that name them.
        match stores.blob(&link.store) {
            None => {
                return report.refuse(format!(
                    "this rule deletes objects in store `{}` with its rows (`blobs`), but that store is not open; \
                     deleting the rows alone would orphan the objects",
                    link.store
                ))
            }
            Some(store) => {
                if let Err(e) = store.check_identity().await {
                    return report.refuse(format!("{store}: {e}"));
                }
            }
        }
    }
    Prepared {
        report,
        resolved: Some(resolved),
        blob: None,
    }
}

/// Lists the prefix and selects what goes, with the local clock as now.
async fn prepare_blob(
    config: &Config,
    stores: &Stores,
    rule: &Rule,
    prefix: &crate::config::PrefixRule,
    mut report: RuleReport,
    options: PlanOptions,
) -> Prepared {
    let Some(store) = stores.blob(&rule.store) else {
        return report.refuse(format!("store `{}` is not an open blob store", rule.store));
    };
    if let Err(e) = store.check_identity().await {
        return report.refuse(format!("{store}: {e}"));
    }
    let now = Utc::now();
    let at = options.at.unwrap_or(now);
    if options.for_run && at > now {
        return report.refuse("run --at may only move time backwards");
    }
    let Some(cutoff) = rule.keep.cutoff(at) else {
        return report.refuse(format!("keep {} reaches before year 0", rule.keep));
    };
    report.cutoff = Some(cutoff);
    let held: Vec<(String, String)> = config
        .holds
        .iter()
        .filter(|h| h.store == rule.store)
        .filter_map(|h| match &h.target {
            crate::config::HoldTarget::Prefix(p) => Some((h.name.clone(), p.clone())),
            _ => None,
        })
        .collect();
    // A plan needs only the counts: its list keeps nothing.
    let due = if options.for_run {
        due::DueList::default()
    } else {
        due::DueList::counting()
    };
    let selection = match blob::select_listed(store, prefix, cutoff, &held, due).await {
        Ok(selection) => selection,
        Err(blob::SelectError::Skipped { reason, detail }) => {
            // The prefix itself cannot be walked safely: nothing under it
            // is touched, and the plan says so.
            report.skipped.insert(reason.to_string(), 1);
            report.notes.push(format!(
                "{store}: {detail}; nothing under {} is touched",
                prefix.prefix
            ));
            blob::Selection::default()
        }
        Err(blob::SelectError::Failed(why)) => return report.fail(why),
    };
    report.matched = selection.matched;
    report.protected = selection.protected;
    report.protected_by = selection.protected_by.clone();
    report.total = selection.total;
    report.oldest = selection.oldest;
    report.versions = Some(selection.versions);
    report.bytes = Some(selection.bytes);
    if selection.uploads > 0 {
        report.notes.push(format!(
            "{} incomplete upload(s) older than the cutoff are aborted too",
            selection.uploads
        ));
    }
    let per_batch = (rule.settings.batch_size as usize)
        .min(store.batch_limit())
        .max(1);
    report.batches = selection.due.len().div_ceil(per_batch) as i64;
    let counts = Counts {
        total: selection.total,
        matched: selection.matched,
        ..Counts::default()
    };
    if let Some(reason) = cap_exceeded(
        &counts,
        rule.settings.max_fraction,
        options.allow_large,
        &format!("{}:{}", rule.store, prefix.prefix),
    ) {
        return report.refuse(reason.replace(" rows ", " objects "));
    }
    Prepared {
        report,
        resolved: None,
        blob: Some(selection),
    }
}

fn apply_counts(report: &mut RuleReport, resolved: &ResolvedRule, counts: Counts, batch_size: u32) {
    report.matched = counts.matched;
    report.protected = counts.protected;
    report.protected_by = counts.protected_by;
    report.total = counts.total;
    report.oldest = counts.oldest;
    report.unparsable = resolved.mask.as_ref().map(|_| counts.unparsable);
    report.null_age = Some(counts.null_age);
    report.batches = (counts.matched + i64::from(batch_size) - 1) / i64::from(batch_size);
}

/// The most rows a run may change under `max_fraction`, None when lifted.
pub fn cap(total: i64, max_fraction: f64, allow_large: bool) -> Option<i64> {
    // Truncation is the safe direction: never allow more than the fraction.
    (!allow_large).then(|| (total as f64 * max_fraction).floor() as i64)
}

fn cap_exceeded(
    counts: &Counts,
    max_fraction: f64,
    allow_large: bool,
    target: &str,
) -> Option<String> {
    let cap = cap(counts.total, max_fraction, allow_large)?;
    (counts.matched > cap).then(|| {
        format!(
            "would change {} of {} rows of {target} ({:.1}%), above max_fraction {max_fraction}; \
             check the rule, then raise max_fraction or pass --allow-large for this run",
            counts.matched,
            counts.total,
            100.0 * counts.matched as f64 / counts.total.max(1) as f64
        )
    })
}

/// `ip_prefix` replaces text that is not an IP address. When most of the
/// rows to mask hold such text, the column is probably not what the rule
/// thinks it is (an email column, say): refuse rather than wipe it.
fn mostly_unparsable(counts: &Counts, table: &crate::config::TableRule) -> Option<String> {
    let crate::config::TableAction::Mask(spec) = &table.action else {
        return None;
    };
    if spec.on_unparsable != crate::config::OnUnparsable::Replace || counts.unparsable == 0 {
        return None;
    }
    (counts.unparsable * 2 > counts.matched).then(|| {
        format!(
            "{} of the {} rows to mask hold text that is not an IP address, which ip_prefix would replace; \
             check that `columns` names IP address columns (use hmac to pseudonymise other text), \
             or set on_unparsable = \"keep\"",
            counts.unparsable, counts.matched
        )
    })
}

/// A database error as a sentence, naming the constraint when one blocked us.
pub fn describe_db_error(e: &sqlx::Error) -> String {
    if let Some(db) = e.as_database_error() {
        let code = db.code().unwrap_or_default();
        if code == "23503" {
            return format!(
                "blocked by foreign key constraint {} on {} (not ON DELETE CASCADE); the batch was rolled back: {}",
                db.constraint().unwrap_or("?"),
                db.table().unwrap_or("?"),
                db.message()
            );
        }
        if code == "55P03" {
            return format!("lock_timeout: rows were locked by another transaction; the batch was rolled back and the next run resumes ({})", db.message());
        }
        if code == "57014" {
            return format!(
                "statement_timeout: a statement ran too long; the batch was rolled back ({})",
                db.message()
            );
        }
        return format!("database error {code}: {}", db.message());
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_truncates_and_can_be_lifted() {
        assert_eq!(cap(10, 0.5, false), Some(5));
        assert_eq!(cap(3, 0.5, false), Some(1));
        assert_eq!(cap(10, 1.0, false), Some(10));
        assert_eq!(cap(10, 0.5, true), None);
    }

    #[test]
    fn worst_exit_code_prefers_failed_then_refused() {
        assert_eq!(worst_exit_code(&[Outcome::Ok, Outcome::Refused]), 3);
        assert_eq!(worst_exit_code(&[Outcome::Refused, Outcome::Failed]), 1);
        assert_eq!(worst_exit_code(&[Outcome::Ok, Outcome::Interrupted]), 1);
        assert_eq!(
            worst_exit_code(&[Outcome::Ok, Outcome::Planned, Outcome::WouldRefuse]),
            0
        );
        assert_eq!(worst_exit_code(&[]), 0);
    }
}
