//! Purge reports for auditors: per rule, the promise, what the signed audit
//! records say happened in a period, and whether the promise is kept.
//!
//! A report is built from the records in `[from, to)` and the rules file
//! (for the promises, guards and holds); it names the seq range and head it
//! was built from and whether the whole log verified, with which keys.
//! Rendering lives in [`render`] (Markdown, CSV, JSON) and [`html`].

pub mod html;
pub mod render;

use crate::config::{Config, HoldTarget, Target};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Start of the period (inclusive).
    pub from: String,
    /// End of the period (exclusive).
    pub to: String,
    /// When the report was made.
    pub generated: String,
    /// First and last seq of the records in the period.
    pub seq_range: Option<(i64, i64)>,
    /// Hash of the last record in the period.
    pub head: Option<String>,
    /// The whole log's verification: `ok: ...` or `invalid: ...`.
    pub verification: String,
    /// True when the whole log verified.
    pub verified: bool,
    /// Keys that signed the log.
    pub key_ids: Vec<String>,
    /// One summary per rule.
    pub rules: Vec<RuleSummary>,
}

/// One rule's period.
#[derive(Debug, Clone, Serialize)]
pub struct RuleSummary {
    /// Rule name.
    pub rule: String,
    /// Its description.
    pub description: Option<String>,
    /// The policy clause.
    pub policy_ref: Option<String>,
    /// `store:target`.
    pub target: String,
    /// `delete` or `mask`.
    pub action: String,
    /// How long data is kept.
    pub keep: String,
    /// Runs by outcome (`ok`, `refused`, `failed`, `interrupted`, and
    /// `unfinished` for an intent without an outcome).
    pub runs: BTreeMap<String, u64>,
    /// Rows (or objects) deleted.
    pub deleted: i64,
    /// Rows masked.
    pub masked: i64,
    /// Bytes freed (blob rules; 0 for SQL rules).
    pub bytes: i64,
    /// The latest run's cutoff.
    pub latest_cutoff: Option<String>,
    /// Seconds the oldest overdue item was past its cutoff at the latest
    /// run (0 when that run completed).
    pub compliance_lag_seconds: Option<i64>,
    /// Guards on the rule's table.
    pub guards: Vec<String>,
    /// Holds on the rule's table or prefix.
    pub holds: Vec<String>,
    /// Runs that did not end ok: (time, outcome, reason).
    pub failures: Vec<(String, String, String)>,
    /// Items removed (deleted or masked) per bucket of `bucket_days` UTC
    /// days, labelled by the bucket's first day.
    pub series: Vec<(String, i64)>,
    /// Width of a `series` bucket in days.
    pub bucket_days: i64,
    /// Green when the latest run in the period ended ok.
    pub kept: bool,
}

/// Builds a report from the period's records (in seq order) and the config.
pub fn build(
    config: &Config,
    records: &[Value],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    verification: Result<crate::audit::verify::Proof, crate::audit::verify::Invalid>,
) -> Report {
    let seqs: Vec<i64> = records.iter().filter_map(|r| r["seq"].as_i64()).collect();
    let seq_range = seqs.first().zip(seqs.last()).map(|(a, b)| (*a, *b));
    let head = records
        .last()
        .and_then(|r| crate::audit::record::canonical(r).ok())
        .map(|l| crate::audit::record::sha256_hex(l.as_bytes()));
    let (verified, verification, key_ids) = match &verification {
        Ok(p) => {
            let range = p
                .range
                .map_or("no records".to_string(), |(a, b)| format!("seq {a}..{b}"));
            (
                true,
                format!("ok: the whole log verified ({range}, head {})", p.head),
                p.key_ids.iter().cloned().collect(),
            )
        }
        Err(e) => (false, format!("invalid: {e}"), Vec::new()),
    };
    let mut names: Vec<String> = config.rules.iter().map(|r| r.name.clone()).collect();
    for r in records {
        if let Some(n) = r["rule"].as_str() {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    let rules = names
        .iter()
        .map(|name| summarize(config, name, records, from, to))
        .collect();
    Report {
        from: crate::audit::record::format_ts(from),
        to: crate::audit::record::format_ts(to),
        generated: crate::audit::record::format_ts(Utc::now()),
        seq_range,
        head,
        verification,
        verified,
        key_ids,
        rules,
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn summarize(
    config: &Config,
    name: &str,
    records: &[Value],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> RuleSummary {
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["rule"].as_str() == Some(name))
        .collect();
    let intents: Vec<&&Value> = mine.iter().filter(|r| r["kind"] == "run_intent").collect();
    let outcomes: Vec<&&Value> = mine.iter().filter(|r| r["kind"] == "run_outcome").collect();
    let rule = config.rules.iter().find(|r| r.name == name);
    let last_intent = intents.last();
    let pick = |key: &str| last_intent.and_then(|r| text(r, key));
    let mut s = RuleSummary {
        rule: name.to_string(),
        description: rule
            .and_then(|r| r.description.clone())
            .or_else(|| pick("description")),
        policy_ref: rule
            .and_then(|r| r.policy_ref.clone())
            .or_else(|| pick("policy_ref")),
        target: rule
            .map(|r| format!("{}:{}", r.store, r.target_name()))
            .or_else(|| {
                last_intent.map(|r| {
                    format!(
                        "{}:{}",
                        text(r, "store").unwrap_or_default(),
                        text(r, "target").unwrap_or_default()
                    )
                })
            })
            .unwrap_or_default(),
        action: rule
            .map(|r| r.action_name().to_string())
            .or_else(|| pick("action"))
            .unwrap_or_default(),
        keep: rule
            .map(|r| r.keep.to_string())
            .or_else(|| pick("keep"))
            .unwrap_or_default(),
        runs: BTreeMap::new(),
        deleted: 0,
        masked: 0,
        bytes: 0,
        latest_cutoff: None,
        compliance_lag_seconds: None,
        guards: Vec::new(),
        holds: Vec::new(),
        failures: Vec::new(),
        series: Vec::new(),
        bucket_days: 1,
        kept: false,
    };
    let (start, bucket_days, buckets) = buckets(records, from, to);
    let mut series = vec![0i64; buckets];
    for o in &outcomes {
        let outcome = text(o, "outcome").unwrap_or_else(|| "unknown".into());
        *s.runs.entry(outcome.clone()).or_default() += 1;
        let affected = o["counts"]["affected"].as_i64().unwrap_or(0);
        if o["action"] == "mask" {
            s.masked += affected;
        } else {
            s.deleted += affected;
        }
        s.bytes += o["counts"]["bytes"].as_i64().unwrap_or(0);
        if let Some(d) = text(o, "ts").and_then(|t| DateTime::parse_from_rfc3339(&t).ok()) {
            let i = (d.with_timezone(&Utc).date_naive() - start).num_days() / bucket_days;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| series.get_mut(i)) {
                *slot += affected;
            }
        }
        if outcome != "ok" {
            s.failures.push((
                text(o, "ts").unwrap_or_default(),
                outcome,
                text(o, "reason").unwrap_or_default(),
            ));
        }
    }
    let finished: Vec<Option<String>> = outcomes.iter().map(|o| text(o, "run_id")).collect();
    let unfinished = intents
        .iter()
        .filter(|i| !finished.contains(&text(i, "run_id")))
        .count() as u64;
    if unfinished > 0 {
        s.runs.insert("unfinished".into(), unfinished);
    }
    if let Some(last) = outcomes.last() {
        s.latest_cutoff = text(last, "cutoff");
        s.kept = last["outcome"] == "ok";
        let intent = intents.iter().find(|i| i["run_id"] == last["run_id"]);
        s.compliance_lag_seconds = if s.kept {
            Some(0)
        } else {
            let ts = |v: Option<String>| v.and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
            match (
                intent.and_then(|i| ts(i["planned"]["oldest"].as_str().map(String::from))),
                ts(text(last, "cutoff")),
            ) {
                (Some(oldest), Some(cutoff)) => Some((cutoff - oldest).num_seconds().max(0)),
                _ => None,
            }
        };
    }
    if let Some(r) = rule {
        s.guards = match &r.target {
            Target::Table(t) => config
                .guards_on(&r.store, &t.table)
                .map(|g| format!("{}.{} kept {} ({})", g.table, g.age, g.min_keep, g.reason))
                .collect(),
            Target::Prefix(_) => Vec::new(),
        };
        s.holds = config
            .holds
            .iter()
            .filter(|h| h.store == r.store)
            .filter(|h| match (&h.target, &r.target) {
                (HoldTarget::Rows { table, .. }, Target::Table(t)) => table == &t.table,
                (HoldTarget::Prefix(p), Target::Prefix(rp)) => {
                    p.starts_with(&rp.prefix) || rp.prefix.starts_with(p.as_str())
                }
                _ => false,
            })
            .map(|h| format!("{} ({})", h.name, h.reason))
            .collect();
    }
    s.bucket_days = bucket_days;
    s.series = series
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (start + chrono::Duration::days(i as i64 * bucket_days)).to_string(),
                n,
            )
        })
        .collect();
    s
}

/// Most bars a chart shows.
const MAX_BUCKETS: i64 = 120;

/// The chart's first day, bucket width in days and bucket count: the period,
/// narrowed to the days that have records, cut into at most
/// [`MAX_BUCKETS`] buckets of whole days.
fn buckets(records: &[Value], from: DateTime<Utc>, to: DateTime<Utc>) -> (NaiveDate, i64, usize) {
    let days_of = |r: &Value| {
        text(r, "ts")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|d| d.with_timezone(&Utc).date_naive())
    };
    let first = records
        .iter()
        .find_map(days_of)
        .unwrap_or(from.date_naive())
        .max(from.date_naive());
    let last = records
        .iter()
        .rev()
        .find_map(days_of)
        .unwrap_or(first)
        .min(to.date_naive());
    let days = (last - first).num_days() + 1;
    let width = ((days + MAX_BUCKETS - 1) / MAX_BUCKETS).max(1);
    (first, width, ((days + width - 1) / width) as usize)
}
