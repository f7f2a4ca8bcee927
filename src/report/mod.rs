//! Purge reports for auditors: per promise (a rule with one `keep`), what the
//! signed audit records say happened in a period, and whether the promise
//! was met.
//!
//! A report is built only from a log that verified (the caller refuses
//! otherwise), in one pass over every record: the records in `[from, to)`
//! are counted, the ones before still say which legal holds and config were
//! in force when the period began. Promises come from the records, not from
//! today's config: a rule whose `keep` changed shows one row per `keep`. A
//! config, when given, adds only what the log does not hold: its guards, and
//! its rules that have no records ("no evidence").
//!
//! Rendering lives in [`render`] (Markdown, CSV, JSON) and [`html`].

pub mod html;
pub mod render;

use crate::audit::events::{RunIntent, RunOutcome};
use crate::audit::verify::Proof;
use crate::config::Config;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The `format` of a JSON report.
pub const FORMAT: &str = "retentiond-report/2";

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`FORMAT`].
    pub format: &'static str,
    /// The organisation whose promises these are (`[report] organisation`).
    pub organisation: Option<String>,
    /// The system they apply to (`[report] system`).
    pub system: Option<String>,
    /// Start of the period (inclusive), when one was given.
    pub from: Option<String>,
    /// End of the period (exclusive), when one was given.
    pub to: Option<String>,
    /// The first and last record in the period.
    pub first_record: Option<String>,
    /// See `first_record`.
    pub last_record: Option<String>,
    /// When the report was made.
    pub generated: String,
    /// Where the records were read from.
    pub source: String,
    /// First and last seq of the records in the period.
    pub seq_range: Option<(i64, i64)>,
    /// Records in the period.
    pub records: u64,
    /// Always true: a log that does not verify is not reported on.
    pub verified: bool,
    /// What verifying the whole log proved, before the report was built.
    pub verification: Verification,
    /// The config hashes in force during the period.
    pub configs: Vec<ConfigInForce>,
    /// Legal holds in force during the period (from the log).
    pub holds: Vec<HoldInForce>,
    /// Guards of the config given (the log does not record guards); None
    /// when no config was given.
    pub guards: Option<Vec<GuardInForce>>,
    /// One entry per promise.
    pub rules: Vec<Promise>,
    /// The detached signature written with this report, if any.
    pub signature: Option<SignedBy>,
}

/// What verification proved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// `audit verify`'s line for this log.
    pub summary: String,
    /// First and last seq verified.
    pub range: Option<(i64, i64)>,
    /// Records verified.
    pub records: u64,
    /// `prev` of the first record (64 zeros from seq 1).
    pub first_prev: String,
    /// Hash of the last record: the log's head.
    pub head: String,
    /// Keys that signed the records.
    pub key_ids: Vec<String>,
    /// The checkpoint the log was checked against.
    pub checkpoint: Option<CheckpointRef>,
}

/// A checkpoint that matched.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRef {
    /// Its seq.
    pub seq: i64,
    /// Its head.
    pub head: String,
    /// When it was made.
    pub ts: String,
    /// Who signed it.
    pub key_id: String,
}

/// The signature that accompanies a report.
#[derive(Debug, Clone, Serialize)]
pub struct SignedBy {
    /// Ed25519 key id of the signer.
    pub key_id: String,
    /// The signature file, next to the report.
    pub file: String,
}

/// A config hash seen in the period.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigInForce {
    /// SHA-256 of the config file.
    pub sha256: String,
    /// First time seen in the period (or its load, before the period).
    pub first_seen: String,
    /// Last time seen.
    pub last_seen: String,
    /// `config_loaded` records in the period.
    pub loads: u64,
    /// Rule runs under it in the period.
    pub runs: u64,
    /// True when it was loaded before the period and still in force at its start.
    pub loaded_before_period: bool,
    /// Hosts that loaded it.
    pub hosts: Vec<String>,
    /// Paths it was loaded from.
    pub paths: Vec<String>,
    /// The latest `audit_rights` recorded with it.
    pub audit_rights: Option<Value>,
}

/// A legal hold, from `hold_added` / `hold_released` records.
#[derive(Debug, Clone, Serialize)]
pub struct HoldInForce {
    /// Its name.
    pub name: String,
    /// Store.
    pub store: String,
    /// Table or prefix.
    pub target: String,
    /// Its `where`, for a table.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// Why.
    pub reason: String,
    /// When it was recorded as added.
    pub added: String,
    /// When it was released, if it was.
    pub released: Option<String>,
    /// Promises on its target.
    pub rules: Vec<String>,
    /// What it kept back at each promise's latest run, by rule (from the
    /// records' `protected_by`).
    pub protected: BTreeMap<String, i64>,
}

/// A guard of the config given.
#[derive(Debug, Clone, Serialize)]
pub struct GuardInForce {
    /// Store.
    pub store: String,
    /// Table.
    pub table: String,
    /// Age column.
    pub age: String,
    /// No row younger than this is deleted.
    pub min_keep: String,
    /// Why.
    pub reason: String,
    /// Promises on its table.
    pub rules: Vec<String>,
    /// What it kept back at each promise's latest run, by rule (from the
    /// records' `protected_by`).
    pub protected: BTreeMap<String, i64>,
}

/// A run that did not end ok.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// When its outcome was recorded.
    pub ts: String,
    /// `refused`, `failed`, `interrupted`, `abandoned`.
    pub outcome: String,
    /// Why.
    pub reason: String,
}

/// The compliance lag at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct LagPoint {
    /// When.
    pub ts: String,
    /// How long the oldest due item was past its cutoff (0: nothing overdue).
    pub seconds: i64,
    /// `start` (a run's intent), or the run's outcome.
    pub at: String,
}

/// One promise: a rule with one `keep`, over the period.
#[derive(Debug, Clone, Serialize)]
pub struct Promise {
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
    /// First record of this promise in the period.
    pub first_run: Option<String>,
    /// Last record of this promise in the period.
    pub last_run: Option<String>,
    /// The same rule's next promise (`delete 20d`), when its keep changed.
    pub superseded_by: Option<String>,
    /// True when only the config names it: the log has no run of it.
    pub from_config_only: bool,
    /// Config hashes of its runs.
    pub config_sha256: Vec<String>,
    /// Runs by outcome (`ok`, `refused`, `failed`, `interrupted`,
    /// `abandoned`, and `unfinished` for an intent without an outcome).
    pub runs: BTreeMap<String, u64>,
    /// Rows (or objects) deleted.
    pub deleted: i64,
    /// Rows masked.
    pub masked: i64,
    /// Rows removed from other tables by `ON DELETE CASCADE`, by table.
    pub cascaded: BTreeMap<String, i64>,
    /// Due items kept back by guards, holds, cascades and locks at the
    /// latest run.
    pub protected: Option<i64>,
    /// Of `protected`, what each guard, hold or store lock kept back at the
    /// latest run (from the signed records; a row kept by two counts for
    /// both).
    pub protected_by: BTreeMap<String, i64>,
    /// Rows whose age was NULL at the latest run: the contract keeps them
    /// forever, so a promise can be kept on paper and broken in fact.
    pub null_age: Option<i64>,
    /// Due items kept because they could not be touched safely, by reason,
    /// at the latest run.
    pub skipped: BTreeMap<String, i64>,
    /// Partitions dropped (only when records carry them).
    pub partitions_dropped: Option<i64>,
    /// Objects deleted (blob work).
    pub objects: Option<i64>,
    /// Bytes deleted (blob work).
    pub bytes: Option<i64>,
    /// The latest run's cutoff.
    pub latest_cutoff: Option<String>,
    /// When the latest run ended.
    pub latest_outcome: Option<String>,
    /// Seconds the oldest due item was past its cutoff after the latest run
    /// (0 when it ended ok).
    pub compliance_lag_seconds: Option<i64>,
    /// The largest lag seen in the period.
    pub max_compliance_lag_seconds: Option<i64>,
    /// Guards on its table, from the config given.
    pub guards: Vec<String>,
    /// Holds on its target in force during the period.
    pub holds: Vec<String>,
    /// Runs that did not end ok.
    pub failures: Vec<Failure>,
    /// Items removed (deleted or masked) per bucket of `bucket_days` UTC
    /// days, labelled by the bucket's first day.
    pub series: Vec<(String, i64)>,
    /// Width of a `series` bucket in days.
    pub bucket_days: i64,
    /// The compliance lag at each run's start and end.
    pub lag_series: Vec<LagPoint>,
    /// True when the latest run in the period ended ok.
    pub promise_met: bool,
    /// `promise met`, `promise not met` or `no evidence`.
    pub status: String,
}

/// What a report needs besides the records.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// `[report] organisation`, or `--organisation`.
    pub organisation: Option<String>,
    /// `[report] system`, or `--system`.
    pub system: Option<String>,
    /// Where the records came from, for people.
    pub source: String,
    /// The config, when given: guards, and rules without records.
    pub config: Option<&'a Config>,
    /// The checkpoint the log was verified against.
    pub checkpoint: Option<Value>,
    /// The signature that will accompany the report.
    pub signed_by: Option<SignedBy>,
}

/// `audit verify`'s success line for a proof.
pub fn verified_line(proof: &Proof) -> String {
    match proof.range {
        None => "ok: no records".to_string(),
        Some((first, last)) => {
            let keys: Vec<&str> = proof.key_ids.iter().map(String::as_str).collect();
            let checkpoint = proof
                .checkpoint
                .map(|seq| format!(", checkpoint seq {seq} matches"))
                .unwrap_or_default();
            format!(
                "ok: verified seq {first}..{last} ({} records), prev of first: {}, head: {}, key ids: {}{checkpoint}",
                proof.count,
                proof.first_prev,
                proof.head,
                keys.join(", ")
            )
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a record timestamp; other text as is.
pub fn human(ts: &str) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => ts.to_string(),
    }
}

fn parse_ts(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// What identifies a promise: rule, store, target, action, keep.
type Key = (String, String, String, String, String);

fn key_of(run: &crate::audit::events::RuleRun) -> Key {
    (
        run.rule.clone(),
        run.store.clone(),
        run.target.clone(),
        run.action.clone(),
        run.keep.clone(),
    )
}

/// An intent whose outcome has not been read yet.
struct Open {
    key: Key,
    inside: bool,
    lag: Option<i64>,
    protected: i64,
    protected_by: BTreeMap<String, i64>,
    null_age: Option<i64>,
}

#[derive(Default)]
struct Acc {
    key: Key,
    description: Option<String>,
    policy_ref: Option<String>,
    first: Option<String>,
    last: Option<String>,
    from_config_only: bool,
    configs: BTreeSet<String>,
    runs: BTreeMap<String, u64>,
    deleted: i64,
    masked: i64,
    cascaded: BTreeMap<String, i64>,
    protected: Option<i64>,
    protected_by: BTreeMap<String, i64>,
    null_age: Option<i64>,
    skipped: BTreeMap<String, i64>,
    partitions_dropped: Option<i64>,
    objects: Option<i64>,
    bytes: Option<i64>,
    latest_cutoff: Option<String>,
    latest_outcome: Option<(String, String)>,
    lag_after: Option<i64>,
    per_day: BTreeMap<NaiveDate, i64>,
    lag: Vec<LagPoint>,
    failures: Vec<Failure>,
}

impl Acc {
    fn touch(&mut self, ts: &str) {
        if self.first.is_none() {
            self.first = Some(ts.to_string());
        }
        self.last = Some(ts.to_string());
    }
}

struct ConfigAcc {
    sha256: String,
    first: String,
    last: String,
    loads: u64,
    runs: u64,
    before: bool,
    hosts: BTreeSet<String>,
    paths: BTreeSet<String>,
    rights: Option<Value>,
}

impl ConfigAcc {
    fn new(sha256: &str, ts: &str) -> ConfigAcc {
        ConfigAcc {
            sha256: sha256.to_string(),
            first: ts.to_string(),
            last: ts.to_string(),
            loads: 0,
            runs: 0,
            before: false,
            hosts: BTreeSet::new(),
            paths: BTreeSet::new(),
            rights: None,
        }
    }

    fn loaded(&mut self, r: &Value) {
        if let Some(h) = text(r, "host") {
            self.hosts.insert(h);
        }
        if let Some(p) = text(r, "config_path") {
            self.paths.insert(p);
        }
        if let Some(rights) = r.get("audit_rights") {
            self.rights = Some(rights.clone());
        }
    }
}

/// Builds a report from a verified log, one record at a time, in seq order.
pub struct Builder {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    seq_range: Option<(i64, i64)>,
    records: u64,
    first_ts: Option<(DateTime<Utc>, String)>,
    last_ts: Option<(DateTime<Utc>, String)>,
    promises: Vec<Acc>,
    index: HashMap<Key, usize>,
    open: HashMap<String, Open>,
    holds: BTreeMap<String, HoldInForce>,
    released: Vec<HoldInForce>,
    configs: Vec<ConfigAcc>,
    before: Option<ConfigAcc>,
    /// The rule names of the latest `config_loaded` record that lists
    /// them, in the config's order.
    recorded_order: Vec<String>,
}

impl Builder {
    /// A builder for `[from, to)` (open ends: the whole log).
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Builder {
        Builder {
            from,
            to,
            seq_range: None,
            records: 0,
            first_ts: None,
            last_ts: None,
            promises: Vec::new(),
            index: HashMap::new(),
            open: HashMap::new(),
            holds: BTreeMap::new(),
            released: Vec::new(),
            configs: Vec::new(),
            before: None,
            recorded_order: Vec::new(),
        }
    }

    fn promise(&mut self, key: &Key) -> &mut Acc {
        let i = match self.index.get(key) {
            Some(i) => *i,
            None => {
                self.promises.push(Acc {
                    key: key.clone(),
                    ..Acc::default()
                });
                self.index.insert(key.clone(), self.promises.len() - 1);
                self.promises.len() - 1
            }
        };
        &mut self.promises[i]
    }

    fn config(&mut self, sha256: &str, ts: &str) -> &mut ConfigAcc {
        let i = match self.configs.iter().position(|c| c.sha256 == sha256) {
            Some(i) => i,
            None => {
                self.configs.push(ConfigAcc::new(sha256, ts));
                self.configs.len() - 1
            }
        };
        let c = &mut self.configs[i];
        c.last = ts.to_string();
        c
    }

    /// Takes the next record of the log (a verified line, parsed).
    pub fn add(&mut self, r: &Value) {
        let Some(ts_text) = text(r, "ts") else {
            return;
        };
        let Some(ts) = parse_ts(Some(&ts_text)) else {
            return;
        };
        let before = self.from.is_some_and(|f| ts < f);
        let inside = !before && self.to.is_none_or(|t| ts < t);
        if inside {
            if let Some(seq) = r.get("seq").and_then(Value::as_i64) {
                self.seq_range = Some((self.seq_range.map_or(seq, |s| s.0), seq));
            }
            self.records += 1;
            if self.first_ts.is_none() {
                self.first_ts = Some((ts, ts_text.clone()));
            }
            self.last_ts = Some((ts, ts_text.clone()));
        }
        match r.get("kind").and_then(Value::as_str) {
            Some("config_loaded") => {
                let sha = text(r, "config_sha256").unwrap_or_default();
                if let Some(rules) = r.get("rules").and_then(Value::as_array) {
                    self.recorded_order = rules
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect();
                }
                if inside {
                    let c = self.config(&sha, &ts_text);
                    c.loads += 1;
                    c.loaded(r);
                } else if before {
                    let mut c = ConfigAcc::new(&sha, &ts_text);
                    c.loaded(r);
                    c.before = true;
                    self.before = Some(c);
                }
            }
            Some("hold_added") => {
                let name = text(r, "hold").unwrap_or_default();
                let hold = HoldInForce {
                    name: name.clone(),
                    store: text(r, "store").unwrap_or_default(),
                    target: text(r, "target").unwrap_or_default(),
                    filter: text(r, "where"),
                    reason: text(r, "reason").unwrap_or_default(),
                    added: ts_text.clone(),
                    released: None,
                    rules: Vec::new(),
                    protected: BTreeMap::new(),
                };
                if let Some(mut old) = self.holds.insert(name, hold) {
                    old.released = Some(ts_text);
                    self.released.push(old);
                }
            }
            Some("hold_released") => {
                if let Some(mut h) = self.holds.remove(&text(r, "hold").unwrap_or_default()) {
                    h.released = Some(ts_text);
                    self.released.push(h);
                }
            }
            Some("run_intent") => {
                let Ok(intent) = serde_json::from_value::<RunIntent>(r.clone()) else {
                    return;
                };
                let key = key_of(&intent.run);
                let lag = lag_at_start(&intent);
                if inside {
                    let acc = self.promise(&key);
                    acc.touch(&ts_text);
                    acc.description = intent.run.description.clone().or(acc.description.take());
                    acc.policy_ref = intent.run.policy_ref.clone().or(acc.policy_ref.take());
                    if !intent.config_sha256.is_empty() {
                        acc.configs.insert(intent.config_sha256.clone());
                    }
                    if let Some(seconds) = lag {
                        acc.lag.push(LagPoint {
                            ts: ts_text.clone(),
                            seconds,
                            at: "start".into(),
                        });
                    }
                    if !intent.config_sha256.is_empty() {
                        let c = self.config(&intent.config_sha256, &ts_text);
                        c.runs += 1;
                        c.hosts.insert(intent.host.clone());
                    }
                }
                self.open.insert(
                    intent.run.run_id.clone(),
                    Open {
                        key,
                        inside,
                        lag,
                        protected: intent.planned.protected,
                        protected_by: intent.planned.protected_by.clone(),
                        null_age: intent.planned.null_age,
                    },
                );
            }
            Some("run_outcome") => {
                let Ok(outcome) = serde_json::from_value::<RunOutcome>(r.clone()) else {
                    return;
                };
                let intent = self.open.remove(&outcome.run.run_id);
                if inside {
                    self.outcome(&outcome, intent, r, &ts_text, ts);
                }
            }
            _ => {}
        }
    }

    fn outcome(
        &mut self,
        o: &RunOutcome,
        intent: Option<Open>,
        r: &Value,
        ts_text: &str,
        ts: DateTime<Utc>,
    ) {
        let key = intent
            .as_ref()
            .map_or_else(|| key_of(&o.run), |i| i.key.clone());
        let acc = self.promise(&key);
        acc.touch(ts_text);
        if o.run.description.is_some() {
            acc.description = o.run.description.clone();
        }
        if o.run.policy_ref.is_some() {
            acc.policy_ref = o.run.policy_ref.clone();
        }
        *acc.runs.entry(o.outcome.clone()).or_default() += 1;
        let affected = o.counts.affected;
        if o.run.action == "mask" {
            acc.masked += affected;
        } else {
            acc.deleted += affected;
        }
        *acc.per_day.entry(ts.date_naive()).or_default() += affected;
        for (table, n) in &o.counts.cascaded {
            *acc.cascaded.entry(table.clone()).or_default() += n;
        }
        let add = |slot: &mut Option<i64>, n: Option<i64>| {
            if let Some(n) = n {
                *slot = Some(slot.unwrap_or(0) + n);
            }
        };
        add(
            &mut acc.partitions_dropped,
            r["counts"]
                .get("partitions_dropped")
                .and_then(Value::as_i64),
        );
        add(&mut acc.objects, o.counts.objects);
        add(
            &mut acc.bytes,
            o.counts.bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
        acc.protected = o.counts.protected.or(intent.as_ref().map(|i| i.protected));
        acc.null_age = o
            .counts
            .null_age
            .or(intent.as_ref().and_then(|i| i.null_age));
        acc.protected_by = if o.counts.protected_by.is_empty() {
            intent
                .as_ref()
                .map(|i| i.protected_by.clone())
                .unwrap_or_default()
        } else {
            o.counts.protected_by.clone()
        };
        acc.skipped = o.counts.skipped.clone();
        if o.run.cutoff.is_some() {
            acc.latest_cutoff = o.run.cutoff.clone();
        }
        acc.latest_outcome = Some((ts_text.to_string(), o.outcome.clone()));
        let lag = if o.outcome == "ok" {
            Some(0)
        } else {
            intent.as_ref().and_then(|i| i.lag)
        };
        acc.lag_after = lag;
        if let Some(seconds) = lag {
            acc.lag.push(LagPoint {
                ts: ts_text.to_string(),
                seconds,
                at: o.outcome.clone(),
            });
        }
        if o.outcome != "ok" {
            acc.failures.push(Failure {
                ts: ts_text.to_string(),
                outcome: o.outcome.clone(),
                reason: o.reason.clone().unwrap_or_default(),
            });
        }
    }

    /// The report, given what verification proved.
    pub fn finish(mut self, cx: &Context, proof: &Proof) -> Report {
        for open in std::mem::take(&mut self.open).into_values() {
            if open.inside {
                *self
                    .promise(&open.key)
                    .runs
                    .entry("unfinished".into())
                    .or_default() += 1;
            }
        }
        if let Some(config) = cx.config {
            for rule in &config.rules {
                let key = (
                    rule.name.clone(),
                    rule.store.clone(),
                    rule.target_name(),
                    rule.action_name().to_string(),
                    rule.keep_text(),
                );
                if !self.index.contains_key(&key) {
                    let acc = self.promise(&key);
                    acc.from_config_only = true;
                    acc.description = rule.description.clone();
                    acc.policy_ref = rule.policy_ref.clone();
                }
            }
        }
        let (start, bucket_days, buckets) = self.buckets();
        // Rules in the config's order (given, else the latest recorded: one
        // run records its rules in any order, as they run concurrently),
        // then rules no longer in it in order of first appearance; a rule's
        // promises by time.
        let mut order: Vec<&String> = Vec::new();
        let configured: Vec<&str> = match cx.config {
            Some(c) => c.rules.iter().map(|r| r.name.as_str()).collect(),
            None => self.recorded_order.iter().map(String::as_str).collect(),
        };
        let configured = configured.into_iter().filter_map(|rule| {
            self.promises
                .iter()
                .map(|p| &p.key.0)
                .find(|name| name.as_str() == rule)
        });
        for name in configured.chain(self.promises.iter().map(|p| &p.key.0)) {
            if !order.contains(&name) {
                order.push(name);
            }
        }
        let mut sorted: Vec<&Acc> = Vec::new();
        for rule in order {
            let mut mine: Vec<&Acc> = self.promises.iter().filter(|p| &p.key.0 == rule).collect();
            mine.sort_by_key(|p| (p.from_config_only, p.first.clone()));
            sorted.extend(mine);
        }
        let holds: Vec<HoldInForce> = self
            .released
            .iter()
            .chain(self.holds.values())
            .filter(|h| {
                let added = parse_ts(Some(&h.added));
                let released = parse_ts(h.released.as_deref());
                self.to.is_none_or(|to| added.is_none_or(|a| a < to))
                    && self
                        .from
                        .is_none_or(|from| released.is_none_or(|r| r >= from))
            })
            .cloned()
            .collect();
        let mut promises: Vec<Promise> = Vec::new();
        for (i, acc) in sorted.iter().enumerate() {
            let next = sorted
                .get(i + 1)
                .filter(|n| n.key.0 == acc.key.0 && !n.from_config_only && !acc.from_config_only);
            promises.push(promise(
                acc,
                next.map(|n| format!("{} {}", n.key.3, n.key.4)),
                cx.config,
                &holds,
                (start, bucket_days, buckets),
            ));
        }
        // What each floor kept, per promise: a hold or guard on a child
        // table protects the parent's promise through a cascade, so this
        // also names promises on other targets.
        let kept_by = |label: &str| -> BTreeMap<String, i64> {
            let mut out = BTreeMap::new();
            for p in &promises {
                if let Some(n) = p.protected_by.get(label) {
                    *out.entry(p.rule.clone()).or_default() += n;
                }
            }
            out
        };
        let holds = holds
            .into_iter()
            .map(|mut h| {
                h.protected = kept_by(&crate::audit::events::hold_label(&h.name));
                h.rules = promises
                    .iter()
                    .filter(|p| hold_applies(&h, &store_of(p), &target_of(p)))
                    .map(|p| p.rule.clone())
                    .chain(h.protected.keys().cloned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                h
            })
            .collect();
        let guards = cx.config.map(|config| {
            config
                .guards
                .iter()
                .map(|g| {
                    let protected = kept_by(&crate::audit::events::guard_label(g));
                    GuardInForce {
                        store: g.store.clone(),
                        table: g.table.to_string(),
                        age: g.age.to_string(),
                        min_keep: g.min_keep.to_string(),
                        reason: g.reason.clone(),
                        rules: promises
                            .iter()
                            .filter(|p| {
                                store_of(p) == g.store
                                    && same_table(&target_of(p), &g.table.to_string())
                            })
                            .map(|p| p.rule.clone())
                            .chain(protected.keys().cloned())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        protected,
                    }
                })
                .collect()
        });
        let mut configs = std::mem::take(&mut self.configs);
        if let Some(before) = self.before.take() {
            match configs.iter_mut().find(|c| c.sha256 == before.sha256) {
                Some(c) => {
                    c.before = true;
                    c.first = before.first;
                    c.hosts.extend(before.hosts);
                    c.paths.extend(before.paths);
                    if c.rights.is_none() {
                        c.rights = before.rights;
                    }
                }
                None => configs.insert(0, before),
            }
        }
        let checkpoint = cx.checkpoint.as_ref().map(|cp| CheckpointRef {
            seq: cp.get("seq").and_then(Value::as_i64).unwrap_or_default(),
            head: text(cp, "head").unwrap_or_default(),
            ts: text(cp, "ts").unwrap_or_default(),
            key_id: text(cp, "key_id").unwrap_or_default(),
        });
        Report {
            format: FORMAT,
            organisation: cx.organisation.clone(),
            system: cx.system.clone(),
            from: self.from.map(crate::audit::record::format_ts),
            to: self.to.map(crate::audit::record::format_ts),
            first_record: self.first_ts.map(|t| t.1),
            last_record: self.last_ts.map(|t| t.1),
            generated: crate::audit::record::format_ts(Utc::now()),
            source: cx.source.clone(),
            seq_range: self.seq_range,
            records: self.records,
            verified: true,
            verification: Verification {
                summary: verified_line(proof),
                range: proof.range,
                records: proof.count,
                first_prev: proof.first_prev.clone(),
                head: proof.head.clone(),
                key_ids: proof.key_ids.iter().cloned().collect(),
                checkpoint,
            },
            configs: configs
                .into_iter()
                .map(|c| ConfigInForce {
                    sha256: c.sha256,
                    first_seen: c.first,
                    last_seen: c.last,
                    loads: c.loads,
                    runs: c.runs,
                    loaded_before_period: c.before,
                    hosts: c.hosts.into_iter().filter(|h| !h.is_empty()).collect(),
                    paths: c.paths.into_iter().collect(),
                    audit_rights: c.rights,
                })
                .collect(),
            holds,
            guards,
            rules: promises,
            signature: cx.signed_by.clone(),
        }
    }

    /// The chart's first day, bucket width in days and bucket count: the
    /// days of the period that have records, cut into at most
    /// [`MAX_BUCKETS`] buckets of whole days.
    fn buckets(&self) -> (NaiveDate, i64, usize) {
        let first = self
            .first_ts
            .as_ref()
            .map(|t| t.0.date_naive())
            .or(self.from.map(|f| f.date_naive()))
            .unwrap_or_else(|| Utc::now().date_naive());
        let last = self
            .last_ts
            .as_ref()
            .map_or(first, |t| t.0.date_naive())
            .max(first);
        let days = (last - first).num_days() + 1;
        let width = ((days + MAX_BUCKETS - 1) / MAX_BUCKETS).max(1);
        (first, width, ((days + width - 1) / width) as usize)
    }
}

/// Most bars a chart shows.
const MAX_BUCKETS: i64 = 120;

/// How long past its cutoff the oldest due item was when a run started: 0
/// with nothing due, None when the run failed before knowing.
fn lag_at_start(i: &RunIntent) -> Option<i64> {
    let cutoff = parse_ts(i.run.cutoff.as_deref())?;
    if i.planned.matched == 0 {
        return Some(0);
    }
    let oldest = parse_ts(i.planned.oldest.as_deref())?;
    Some((cutoff - oldest).num_seconds().max(0))
}

fn store_of(p: &Promise) -> String {
    p.target.split_once(':').map_or("", |s| s.0).to_string()
}

fn target_of(p: &Promise) -> String {
    p.target
        .split_once(':')
        .map_or(p.target.as_str(), |s| s.1)
        .to_string()
}

/// `public.t` and `t` are the same table.
fn same_table(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.strip_prefix("public.").unwrap_or(s).to_string();
    bare(a) == bare(b)
}

fn hold_applies(h: &HoldInForce, store: &str, target: &str) -> bool {
    h.store == store
        && if h.filter.is_some() {
            same_table(&h.target, target)
        } else {
            h.target.starts_with(target) || target.starts_with(h.target.as_str())
        }
}

fn promise(
    acc: &Acc,
    superseded_by: Option<String>,
    config: Option<&Config>,
    holds: &[HoldInForce],
    (start, bucket_days, buckets): (NaiveDate, i64, usize),
) -> Promise {
    let (rule, store, target, action, keep) = acc.key.clone();
    let mut series = vec![0i64; buckets];
    for (day, n) in &acc.per_day {
        let i = (*day - start).num_days() / bucket_days;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| series.get_mut(i)) {
            *slot += n;
        }
    }
    let series = series
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (start + chrono::Duration::days(i as i64 * bucket_days)).to_string(),
                n,
            )
        })
        .collect();
    let guards = config
        .map(|c| {
            c.guards
                .iter()
                .filter(|g| g.store == store && same_table(&g.table.to_string(), &target))
                .map(|g| format!("{}.{} kept {} ({})", g.table, g.age, g.min_keep, g.reason))
                .collect()
        })
        .unwrap_or_default();
    let holds = holds
        .iter()
        .filter(|h| hold_applies(h, &store, &target))
        .map(|h| format!("{} ({})", h.name, h.reason))
        .collect();
    let promise_met = acc
        .latest_outcome
        .as_ref()
        .is_some_and(|(_, outcome)| outcome == "ok");
    let status = if promise_met {
        "promise met"
    } else if acc.runs.is_empty() {
        "no evidence"
    } else {
        "promise not met"
    };
    Promise {
        rule,
        description: acc.description.clone(),
        policy_ref: acc.policy_ref.clone(),
        target: format!("{store}:{target}"),
        action,
        keep,
        first_run: acc.first.clone(),
        last_run: acc.last.clone(),
        superseded_by,
        from_config_only: acc.from_config_only,
        config_sha256: acc.configs.iter().cloned().collect(),
        runs: acc.runs.clone(),
        deleted: acc.deleted,
        masked: acc.masked,
        cascaded: acc.cascaded.clone(),
        protected: acc.protected,
        protected_by: acc.protected_by.clone(),
        null_age: acc.null_age,
        skipped: acc.skipped.clone(),
        partitions_dropped: acc.partitions_dropped,
        objects: acc.objects,
        bytes: acc.bytes,
        latest_cutoff: acc.latest_cutoff.clone(),
        latest_outcome: acc.latest_outcome.as_ref().map(|(ts, _)| ts.clone()),
        compliance_lag_seconds: acc.lag_after,
        max_compliance_lag_seconds: acc.lag.iter().map(|p| p.seconds).max(),
        guards,
        holds,
        failures: acc.failures.clone(),
        series,
        bucket_days,
        lag_series: acc.lag.clone(),
        promise_met,
        status: status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intent(seq: i64, ts: &str, run: &str, keep: &str, oldest: &str, matched: i64) -> Value {
        json!({"seq": seq, "ts": ts, "kind": "run_intent", "run_id": run, "rule": "r", "store": "app",
               "target": "t", "action": "delete", "keep": keep, "cutoff": "2026-11-01T00:00:00.000000Z",
               "planned": {"matched": matched, "protected": 2, "total": 9, "batches": 1, "oldest": oldest},
               "config_sha256": "aa", "host": "h"})
    }

    fn outcome(seq: i64, ts: &str, run: &str, keep: &str, outcome: &str, affected: i64) -> Value {
        json!({"seq": seq, "ts": ts, "kind": "run_outcome", "run_id": run, "rule": "r", "store": "app",
               "target": "t", "action": "delete", "keep": keep, "cutoff": "2026-11-01T00:00:00.000000Z",
               "outcome": outcome, "finished": ts,
               "counts": {"affected": affected, "batches": 1, "cascaded": {"public.kids": 2}, "skipped": {"foreign_key": 1}}})
    }

    #[test]
    fn a_keep_change_makes_two_promises_and_the_lag_follows_the_runs() {
        let mut b = Builder::new(None, None);
        for r in [
            intent(
                1,
                "2026-11-02T00:00:00.000000Z",
                "a",
                "30d",
                "2026-10-30T00:00:00.000000Z",
                3,
            ),
            outcome(2, "2026-11-02T00:00:01.000000Z", "a", "30d", "ok", 3),
            intent(
                3,
                "2026-11-03T00:00:00.000000Z",
                "b",
                "20d",
                "2026-10-29T00:00:00.000000Z",
                4,
            ),
            outcome(4, "2026-11-03T00:00:01.000000Z", "b", "20d", "failed", 1),
            intent(
                5,
                "2026-11-04T00:00:00.000000Z",
                "c",
                "20d",
                "2026-10-29T00:00:00.000000Z",
                4,
            ),
        ] {
            b.add(&r);
        }
        let report = b.finish(&Context::default(), &Proof::default());
        assert_eq!(report.rules.len(), 2);
        let (old, new) = (&report.rules[0], &report.rules[1]);
        assert_eq!((old.keep.as_str(), new.keep.as_str()), ("30d", "20d"));
        assert_eq!(old.superseded_by.as_deref(), Some("delete 20d"));
        assert_eq!(old.status, "promise met");
        assert_eq!(old.cascaded["public.kids"], 2);
        assert_eq!(new.status, "promise not met");
        assert_eq!(new.runs["unfinished"], 1);
        assert_eq!(new.compliance_lag_seconds, Some(3 * 86_400));
        assert_eq!(new.max_compliance_lag_seconds, Some(3 * 86_400));
        assert_eq!(new.skipped["foreign_key"], 1);
        assert_eq!(new.protected, Some(2), "from the intent");
        assert_eq!(report.records, 5);
        assert_eq!(report.configs[0].runs, 3);
    }

    #[test]
    fn holds_in_force_during_the_period_only() {
        let from = parse_ts(Some("2026-11-10T00:00:00Z"));
        let mut b = Builder::new(from, None);
        let hold = |seq, ts: &str, kind: &str, name: &str| json!({"seq": seq, "ts": ts, "kind": kind, "hold": name, "store": "app", "target": "t", "where": "id = 1", "reason": "case"});
        b.add(&hold(1, "2026-11-01T00:00:00.000000Z", "hold_added", "old"));
        b.add(&hold(
            2,
            "2026-11-02T00:00:00.000000Z",
            "hold_released",
            "old",
        ));
        b.add(&hold(
            3,
            "2026-11-03T00:00:00.000000Z",
            "hold_added",
            "kept",
        ));
        let report = b.finish(&Context::default(), &Proof::default());
        let names: Vec<&str> = report.holds.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["kept"]);
        assert_eq!(report.records, 0);
    }
}
