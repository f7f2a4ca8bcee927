//! Prometheus metrics of the daemon, in the classic text format.
//!
//! Labels are low-cardinality: `rule`, `outcome`, `store`. Updated once per
//! rule run from its report, never per row.

use crate::plan::{Outcome, RuleReport};
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
    store_errors: IntCounterVec,
    ready: IntGauge,
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
            last_cutoff: gauge(&r, "retentiond_last_cutoff_timestamp_seconds", "The cutoff of the rule's latest run (Unix time).", &["rule"])?,
            overdue: gauge(&r, "retentiond_overdue_items", "Items past their cutoff and not yet removed, at the latest run.", &["rule"])?,
            lag: gauge(
                &r,
                "retentiond_compliance_lag_seconds",
                "How long past its cutoff the oldest overdue item was at the latest run; 0 when the promise is kept.",
                &["rule"],
            )?,
            store_errors: counter(&r, "retentiond_store_errors_total", "Failed store operations (connections, probes, runs).", &["store"])?,
                        ready: {
                let g = IntGauge::new("retentiond_ready", "1 when the config is loaded and every store answers.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            registry: r,
        })
    }

    /// Records a finished rule run.
    pub fn record(&self, report: &RuleReport, seconds: f64) {
        let rule = report.rule.as_str();
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
        let lag = match (report.outcome, report.oldest, report.cutoff) {
            (Outcome::Ok, _, _) if overdue == 0 => 0,
            (_, Some(oldest), Some(cutoff)) if overdue > 0 => {
                (cutoff - oldest).num_seconds().max(0)
            }
            _ => 0,
        };
        self.lag.with_label_values(&[rule]).set(lag);
        if report.outcome == Outcome::Failed {
            self.store_errors
                .with_label_values(&[report.store.as_str()])
                .inc();
        }
        // Touch the object counter so the series exists for every rule.
        self.objects_deleted.with_label_values(&[rule]).inc_by(0);
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
