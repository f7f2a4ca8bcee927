//! The records a rule run writes, as types: what `run_intent` and
//! `run_outcome` carry is defined here once, written by the engine and read
//! back (an abandoned run's intent, reports) without string keys.
//!
//! Field names are the record format (docs/audit-format.md): renaming one
//! is a format change.

use super::record::Event;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `protected_by` key of a legal hold.
pub fn hold_label(name: &str) -> String {
    format!("hold {name}")
}

/// The `protected_by` key of a guard.
pub fn guard_label(g: &crate::config::Guard) -> String {
    format!("guard {}.{} min_keep {}", g.table, g.age, g.min_keep)
}

/// What identifies a rule run and the promise it kept, in both records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleRun {
    /// This run.
    pub run_id: String,
    /// The rule.
    pub rule: String,
    /// Its store.
    pub store: String,
    /// Its table, or `store:prefix`.
    pub target: String,
    /// `delete` or `mask`.
    pub action: String,
    /// The rule's `keep`.
    pub keep: String,
    /// `now - keep` for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<String>,
    /// The rule's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The policy clause it enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<String>,
    /// The rule's `age_expr`, when its age is an expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_expr: Option<String>,
    /// The rule's `age_unit`, when its age is an integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_unit: Option<String>,
    /// The rule's `keep_expr`, when its period comes from the data; then
    /// `keep` reads `keep_min..keep_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_expr: Option<String>,
    /// With `keep_expr`: the shortest period any row gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_min: Option<String>,
    /// With `keep_expr`: the longest, and that of a row whose expression
    /// is NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_max: Option<String>,
    /// When it started (after taking the rule's claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

/// The plan a run starts from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Rows or objects due and unprotected.
    pub matched: i64,
    /// Due but kept by a guard, hold, cascade or lock.
    pub protected: i64,
    /// Of `protected`, what each guard (`guard <table>.<age> min_keep
    /// <keep>`), hold (`hold <name>`) or store lock (`store lock`) keeps; a
    /// row two of them keep counts for both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected_by: BTreeMap<String, i64>,
    /// Rows or objects under the rule (the `max_fraction` base).
    pub total: i64,
    /// Batches expected.
    pub batches: i64,
    /// Rows the delete is expected to remove from other tables.
    #[serde(default)]
    pub cascaded: BTreeMap<String, i64>,
    /// Items expected to be kept because they cannot be touched safely.
    #[serde(default)]
    pub skipped: BTreeMap<String, i64>,
    /// Rows inside the rule's `where` whose age is NULL (never expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_age: Option<i64>,
    /// Mask rules: due rows a unique key would refuse in masked form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<i64>,
    /// Partitions to drop whole, with their rows (in `matched`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions_dropped: BTreeMap<String, i64>,
    /// The oldest due item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
}

/// `run_intent`: written before the first batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunIntent {
    /// The run.
    #[serde(flatten)]
    pub run: RuleRun,
    /// What the plan found.
    #[serde(default)]
    pub planned: Planned,
    /// The config's SHA-256.
    #[serde(default)]
    pub config_sha256: String,
    /// The process's host (pod name).
    #[serde(default)]
    pub host: String,
}

/// What a run changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows or objects due at the start (absent for abandoned runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<i64>,
    /// Rows changed, or objects deleted: exactly, killed runs included.
    pub affected: i64,
    /// Due but kept by a guard, hold, cascade or lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<i64>,
    /// Of `protected`, by guard, hold or store lock (as in [`Planned`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected_by: BTreeMap<String, i64>,
    /// Batches committed.
    pub batches: i64,
    /// Rows removed from other tables by `ON DELETE CASCADE`.
    #[serde(default)]
    pub cascaded: BTreeMap<String, i64>,
    /// Items kept because they could not be touched safely, by reason.
    #[serde(default)]
    pub skipped: BTreeMap<String, i64>,
    /// Due text values that are not IP addresses (mask rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unparsable: Option<i64>,
    /// Rows inside the rule's `where` whose age is NULL (never expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_age: Option<i64>,
    /// Mask rules: due rows a unique key refused in their masked form
    /// (kept unmasked, or deleted with `on_conflict = "delete"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<i64>,
    /// Of `conflicts`, the rows deleted: removals, counted exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts_deleted: Option<i64>,
    /// Partitions dropped whole, with their rows (counted in `affected`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions_dropped: BTreeMap<String, i64>,
    /// Versions and delete markers removed (blob rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<i64>,
    /// Objects removed with rows (`blobs` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<i64>,
    /// Bytes freed (at most 2^53, as every integer in a record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// `run_outcome`: written after the last batch, or by the next run of the
/// rule for a run that never wrote one (`abandoned`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run.
    #[serde(flatten)]
    pub run: RuleRun,
    /// `ok`, `refused`, `failed`, `interrupted` or `abandoned`.
    pub outcome: String,
    /// Why, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it changed.
    #[serde(default)]
    pub counts: Counts,
    /// When it ended (for abandoned runs: when that was noticed).
    pub finished: String,
}

fn event(kind: &'static str, value: impl Serialize) -> Event {
    let fields = match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Event { kind, fields }
}

impl RunIntent {
    /// As a record to append.
    pub fn event(&self) -> Event {
        event("run_intent", self)
    }
}

impl RunOutcome {
    /// As a record to append.
    pub fn event(&self) -> Event {
        event("run_outcome", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_the_format_names() {
        let outcome = RunOutcome {
            run: RuleRun {
                run_id: "r1".into(),
                rule: "logs".into(),
                keep: "30d".into(),
                ..RuleRun::default()
            },
            outcome: "abandoned".into(),
            counts: Counts {
                affected: 7,
                cascaded: BTreeMap::from([("public.kids".to_string(), 3)]),
                ..Counts::default()
            },
            finished: "2026-12-05T00:00:00.000000Z".into(),
            ..RunOutcome::default()
        };
        let e = outcome.event();
        assert_eq!(e.kind, "run_outcome");
        assert_eq!(e.fields["run_id"], "r1");
        assert_eq!(e.fields["counts"]["cascaded"]["public.kids"], 3);
        assert!(e.fields["counts"].get("matched").is_none());
        let back: RunOutcome = serde_json::from_value(Value::Object(e.fields)).unwrap();
        assert_eq!(back, outcome);
    }
}
