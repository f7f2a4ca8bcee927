//! Reports as Markdown, CSV and JSON.

use super::{Report, RuleSummary};

fn runs(r: &RuleSummary) -> String {
    if r.runs.is_empty() {
        return "none".into();
    }
    r.runs
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lag(r: &RuleSummary) -> String {
    match r.compliance_lag_seconds {
        Some(0) => "0".into(),
        Some(s) => humanize(s),
        None => "unknown".into(),
    }
}

/// Seconds as a short duration, e.g. `3d 4h`.
pub fn humanize(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The status word of a rule.
pub fn status(r: &RuleSummary) -> &'static str {
    if r.kept {
        "kept"
    } else if r.runs.is_empty() {
        "no evidence"
    } else {
        "not kept"
    }
}

/// A one-line description of what the report was built from.
pub fn provenance(report: &Report) -> String {
    let range = report
        .seq_range
        .map_or("no records in the period".to_string(), |(a, b)| {
            format!("records seq {a}..{b}")
        });
    let head = report.head.as_deref().unwrap_or("-");
    let keys = if report.key_ids.is_empty() {
        "-".to_string()
    } else {
        report.key_ids.join(", ")
    };
    format!(
        "Built from {range} (head {head}); verification: {}; key ids: {keys}",
        report.verification
    )
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "# Retention report {} – {}\n\n{}\n\n",
        report.from,
        report.to,
        provenance(report)
    );
    out.push_str("| status | rule | promise | target | runs | deleted | masked | latest cutoff | compliance lag |\n");
    out.push_str("|---|---|---|---|---|---:|---:|---|---|\n");
    for r in &report.rules {
        let promise = format!(
            "{} {}{}",
            r.action,
            r.keep,
            r.policy_ref
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            status(r),
            md_escape(&r.rule),
            md_escape(&promise),
            md_escape(&r.target),
            runs(r),
            r.deleted,
            r.masked,
            r.latest_cutoff.as_deref().unwrap_or("-"),
            lag(r)
        ));
    }
    for r in &report.rules {
        if r.guards.is_empty() && r.holds.is_empty() && r.failures.is_empty() {
            continue;
        }
        out.push_str(&format!("\n## {}\n\n", md_escape(&r.rule)));
        for g in &r.guards {
            out.push_str(&format!("- guard: {}\n", md_escape(g)));
        }
        for h in &r.holds {
            out.push_str(&format!("- legal hold: {}\n", md_escape(h)));
        }
        for (ts, outcome, reason) in &r.failures {
            out.push_str(&format!("- {ts} {outcome}: {}\n", md_escape(reason)));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV, one row per rule.
pub fn csv(report: &Report) -> String {
    let mut out = String::from(
        "rule,status,action,keep,policy_ref,target,runs_ok,runs_refused,runs_failed,runs_interrupted,runs_unfinished,deleted,masked,bytes,latest_cutoff,compliance_lag_seconds,failures\n",
    );
    for r in &report.rules {
        let n = |k: &str| r.runs.get(k).copied().unwrap_or(0).to_string();
        let fields = [
            r.rule.clone(),
            status(r).to_string(),
            r.action.clone(),
            r.keep.clone(),
            r.policy_ref.clone().unwrap_or_default(),
            r.target.clone(),
            n("ok"),
            n("refused"),
            n("failed"),
            n("interrupted"),
            n("unfinished"),
            r.deleted.to_string(),
            r.masked.to_string(),
            r.bytes.to_string(),
            r.latest_cutoff.clone().unwrap_or_default(),
            r.compliance_lag_seconds
                .map(|s| s.to_string())
                .unwrap_or_default(),
            r.failures
                .iter()
                .map(|(t, o, why)| format!("{t} {o}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

/// JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}
