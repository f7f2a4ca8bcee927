//! Prometheus metrics of the daemon, in the classic text format.
//!
//! Labels are low-cardinality: `rule`, `outcome`, `store`. Updated once per
//! rule run from its report, never per row; at start-up, every rule's series
//! are set from a plan ([`Metrics::planned`]) so they exist from the first
//! scrape.

use crate::plan::{Outcome, RuleReport};
use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    rows_deleted: IntCounterVec,
    rows_masked: IntCounterVec,
    objects_deleted: IntCounterVec,
    runs: IntCounterVec,
    duration: HistogramVec,
    last_success: IntGaugeVec,
    last_cutoff: IntGaugeVec,
    overdue: IntGaugeVec,
    lag: IntGaugeVec,
    interval: IntGaugeVec,
    plan_failed: IntGaugeVec,
    store_errors: IntCounterVec,
    ready: IntGauge,
    /// Rules with a recorded run: a start-up plan finishing later must not
    /// overwrite a run's fresher numbers.
    ran: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The outcomes a run ends with, as `retentiond_runs_total` labels them.
const RUN_OUTCOMES: [&str; 4] = ["ok", "refused", "failed", "interrupted"];

/// How long past its cutoff the oldest of `overdue` items is (0 when none).
fn lag_seconds(overdue: i64, oldest: Option<DateTime<Utc>>, cutoff: Option<DateTime<Utc>>) -> i64 {
    match (oldest, cutoff) {
        (Some(oldest), Some(cutoff)) if overdue > 0 => (cutoff - oldest).num_seconds().max(0),
        _ => 0,
    }
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new("retentiond_run_duration_seconds", "Duration of rule runs.")
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ]),
            &["rule"],
        )?;
        r.register(Box::new(duration.clone()))?;
        Ok(Metrics {
            rows_deleted: counter(&r, "retentiond_rows_deleted_total", "Rows deleted by rule runs.", &["rule"])?,
            rows_masked: counter(&r, "retentiond_rows_masked_total", "Rows masked by rule runs.", &["rule"])?,
            objects_deleted: counter(&r, "retentiond_objects_deleted_total", "Blob objects deleted by rule runs.", &["rule"])?,
            runs: counter(&r, "retentiond_runs_total", "Rule runs by outcome.", &["rule", "outcome"])?,
            duration,
            last_success: gauge(&r, "retentiond_last_success_timestamp_seconds", "When a run of the rule last ended ok (Unix time).", &["rule"])?,
            last_cutoff: gauge(&r, "retentiond_last_cutoff_timestamp_seconds", "The cutoff of the rule's latest run, or of its start-up plan before one (Unix time).", &["rule"])?,
            overdue: gauge(&r, "retentiond_overdue_items", "Items past their cutoff and not yet removed, at the latest run (or the start-up plan before one).", &["rule"])?,
            lag: gauge(
                &r,
                "retentiond_compliance_lag_seconds",
                "How long past its cutoff the oldest overdue item was at the latest run (or the start-up plan before one); 0 when the promise is kept.",
                &["rule"],
            )?,
            interval: gauge(
                &r,
                "retentiond_rule_interval_seconds",
                "Seconds between two scheduled runs of the rule: how late a run may be before the promise lags (alerts compare the lag with it).",
                &["rule"],
            )?,
            plan_failed: gauge(
                &r,
                "retentiond_rule_plan_failed",
                "1 when the rule's latest plan (at start-up) or run failed to reach its store, so its overdue and lag gauges are stale or absent.",
                &["rule"],
            )?,
            store_errors: counter(&r, "retentiond_store_errors_total", "Failed store operations (connections, probes, runs).", &["store"])?,
                        ready: {
                let g = IntGauge::new("retentiond_ready", "1 when the config is loaded and every store answers.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            registry: r,
            ran: Default::default(),
        })
    }

    /// Sets every rule's schedule interval (start-up and reload).
    pub fn set_intervals(&self, schedules: &[(String, super::schedule::RuleSchedule)]) {
        let now = chrono::Utc::now();
        for (rule, schedule) in schedules {
            if let Some(interval) = schedule.interval(now) {
                self.interval
                    .with_label_values(&[rule.as_str()])
                    .set(interval.num_seconds());
            }
        }
    }

    /// Records a finished rule run.
    pub fn record(&self, report: &RuleReport, seconds: f64) {
        let rule = report.rule.as_str();
        if let Ok(mut ran) = self.ran.lock() {
            ran.insert(rule.to_string());
        }
        let outcome = serde_json::to_value(report.outcome)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        self.runs.with_label_values(&[rule, outcome.as_str()]).inc();
        self.duration.with_label_values(&[rule]).observe(seconds);
        let affected = report.affected.unwrap_or(0).max(0) as u64;
        match report.action {
            "mask" => self.rows_masked.with_label_values(&[rule]).inc_by(affected),
            _ => self
                .rows_deleted
                .with_label_values(&[rule])
                .inc_by(affected),
        }
        if let Some(c) = report.cutoff {
            self.last_cutoff
                .with_label_values(&[rule])
                .set(c.timestamp());
        }
        let overdue = (report.matched - report.affected.unwrap_or(0)).max(0);
        self.overdue.with_label_values(&[rule]).set(overdue);
        if report.outcome == Outcome::Ok {
            self.last_success
                .with_label_values(&[rule])
                .set(chrono::Utc::now().timestamp());
        }
        self.lag
            .with_label_values(&[rule])
            .set(lag_seconds(overdue, report.oldest, report.cutoff));
        self.plan_failed
            .with_label_values(&[rule])
            .set(i64::from(report.outcome == Outcome::Failed));
        if report.outcome == Outcome::Failed {
            self.store_errors
                .with_label_values(&[report.store.as_str()])
                .inc();
        }
        // Touch the object counter so the series exists for every rule.
        self.objects_deleted.with_label_values(&[rule]).inc_by(0);
    }

    /// Sets a rule's series from its start-up plan (before any run): overdue
    /// items are the plan's matched ones, the lag how long past the cutoff
    /// the oldest of them is. A failed plan sets `retentiond_rule_plan_failed`
    /// and leaves the overdue and lag gauges absent rather than claim 0.
    /// Ignored once a run of the rule was recorded (its numbers are newer).
    pub fn planned(&self, report: &RuleReport) {
        let rule = report.rule.as_str();
        // Held throughout: a run recorded meanwhile waits, then wins.
        let ran = self.ran.lock();
        if ran.as_ref().map_or(true, |ran| ran.contains(rule)) {
            return;
        }
        self.touch(report);
        let failed = report.outcome == Outcome::Failed;
        self.plan_failed
            .with_label_values(&[rule])
            .set(i64::from(failed));
        if failed {
            self.store_error(&report.store);
            return;
        }
        if let Some(c) = report.cutoff {
            self.last_cutoff
                .with_label_values(&[rule])
                .set(c.timestamp());
        }
        self.overdue.with_label_values(&[rule]).set(report.matched);
        self.lag.with_label_values(&[rule]).set(lag_seconds(
            report.matched,
            report.oldest,
            report.cutoff,
        ));
    }

    /// Marks a rule's start-up plan as failed (it did not answer in time).
    pub fn mark_plan_failed(&self, report: &RuleReport) {
        let mut failed = report.clone();
        failed.outcome = Outcome::Failed;
        self.planned(&failed);
    }

    /// Creates the rule's counters and histogram at 0, so every per-rule
    /// series exists before its first run.
    fn touch(&self, report: &RuleReport) {
        let rule = report.rule.as_str();
        match report.action {
            "mask" => self.rows_masked.with_label_values(&[rule]).inc_by(0),
            _ => self.rows_deleted.with_label_values(&[rule]).inc_by(0),
        }
        self.objects_deleted.with_label_values(&[rule]).inc_by(0);
        for outcome in RUN_OUTCOMES {
            self.runs.with_label_values(&[rule, outcome]).inc_by(0);
        }
        let _ = self.duration.with_label_values(&[rule]);
    }

    /// Sets when the rule's newest `ok` run finished, as the audit log says
    /// (any replica's); 0 when it never ran ok.
    pub fn set_last_success(&self, rule: &str, finished: Option<DateTime<Utc>>) {
        self.last_success
            .with_label_values(&[rule])
            .set(finished.map_or(0, |f| f.timestamp()));
    }

    /// Counts a store error outside a rule run (probe, connection).
    pub fn store_error(&self, store: &str) {
        self.store_errors.with_label_values(&[store]).inc();
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
