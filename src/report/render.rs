//! Reports as Markdown, CSV and JSON, and the wording they share with the
//! HTML. Times are shown in UTC to the second; JSON keeps the records' own
//! timestamps.

use super::{human, ConfigInForce, Promise, Report};
use serde_json::Value;

/// Runs by outcome, `2 ok, 1 refused`.
pub fn runs(p: &Promise) -> String {
    if p.runs.is_empty() {
        return "none".into();
    }
    p.runs
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lag after the latest run, and the period's largest when larger.
pub fn lag(p: &Promise) -> String {
    let now = match p.compliance_lag_seconds {
        Some(0) => "0".to_string(),
        Some(s) => humanize(s),
        None if p.runs.is_empty() => "-".to_string(),
        None => "unknown".into(),
    };
    match p.max_compliance_lag_seconds {
        Some(max) if max > p.compliance_lag_seconds.unwrap_or(0) => {
            format!("{now} (max {})", humanize(max))
        }
        _ => now,
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
        (0, 0, 0) if seconds > 0 => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The status of a promise: `promise met`, `promise not met`, `no evidence`.
pub fn status(p: &Promise) -> &str {
    &p.status
}

/// `delete 30d (Privacy Policy §6)`.
pub fn promise_text(p: &Promise) -> String {
    format!(
        "{} {}{}",
        p.action,
        p.keep,
        p.policy_ref
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// When the promise was in force according to its records.
pub fn in_force(p: &Promise) -> String {
    if p.from_config_only {
        return "in the config given; no runs recorded".into();
    }
    let span = match (&p.first_run, &p.last_run) {
        (Some(a), Some(b)) if a != b => format!("{} – {}", human(a), human(b)),
        (Some(a), _) => human(a),
        _ => "-".into(),
    };
    match &p.superseded_by {
        Some(next) => format!("{span}, then {next}"),
        None => span,
    }
}

/// `public.kids 3, public.pins 1`, or `0`.
pub fn by_key(map: &std::collections::BTreeMap<String, i64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the writing role could do to the log beyond appending.
pub fn rights(c: &ConfigInForce) -> String {
    match &c.audit_rights {
        Some(Value::Object(o)) => {
            let extra: Vec<&str> = o
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect();
            if extra.is_empty() {
                "append only".into()
            } else {
                format!(
                    "could also {} (triggers still reject changes)",
                    extra.join(", ")
                )
            }
        }
        _ => "not recorded".into(),
    }
}

/// The title: organisation and system when named.
pub fn title(report: &Report) -> String {
    let subject: Vec<&str> = [report.organisation.as_deref(), report.system.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if subject.is_empty() {
        "Retention report".into()
    } else {
        format!("Retention report: {}", subject.join(", "))
    }
}

/// The period in words.
pub fn period(report: &Report) -> String {
    let records = match (&report.first_record, &report.last_record) {
        (Some(a), Some(b)) => format!("records from {} to {}", human(a), human(b)),
        _ => "no records".into(),
    };
    match (&report.from, &report.to) {
        (None, None) => format!("the whole log ({records}), UTC"),
        (from, to) => format!(
            "{} to {} UTC, end excluded ({records})",
            from.as_deref().map_or("the first record".into(), human),
            to.as_deref().map_or("the last record".into(), human)
        ),
    }
}

/// The evidence a report rests on, one sentence each.
pub fn evidence(report: &Report) -> Vec<(String, String)> {
    let v = &report.verification;
    let mut out = Vec::new();
    let verified = match v.range {
        Some((a, b)) => format!(
            "seq {a}..{b} ({} records): every signature, the hash chain and gapless seq, before this report was built; key ids {}{}",
            v.records,
            v.key_ids.join(", "),
            if a > 1 {
                format!("; a sub-range, chained to earlier records by prev {}", v.first_prev)
            } else {
                String::new()
            }
        ),
        None => "the log has no records".into(),
    };
    out.push(("Verified".into(), verified));
    if v.range.is_some() {
        out.push(("Head".into(), v.head.clone()));
    }
    out.push((
        "Checkpoint".into(),
        match &v.checkpoint {
            Some(cp) => {
                let head = if v.range.is_some_and(|(_, last)| last == cp.seq) {
                    "the head above".to_string()
                } else {
                    cp.head.clone()
                };
                format!(
                    "seq {} (head: {head}), made {} UTC, key id {}: the log reaches it and matches",
                    cp.seq,
                    human(&cp.ts),
                    cp.key_id
                )
            }
            None => "none given: a log cut short after its last record would verify too".into(),
        },
    ));
    out.push((
        "In this period".into(),
        match report.seq_range {
            Some((a, b)) => format!("records seq {a}..{b} ({})", report.records),
            None => "no records".into(),
        },
    ));
    out.push(("Source".into(), report.source.clone()));
    out.push((
        "This report".into(),
        match &report.signature {
            Some(s) => format!(
                "signed by key id {}: detached Ed25519 signature of this file's bytes in {} (retentiond report verify --public-key KEY.pem FILE)",
                s.key_id, s.file
            ),
            None => "not signed: re-derive it from the log and the public key, and compare the head".into(),
        },
    ));
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Runs that did not end ok, consecutive ones with the same outcome and
/// reason as one line: `2026-11-10 02:00:04 – 2026-11-12 20:00:04, 12 runs failed: ...`.
pub fn failures(p: &Promise) -> Vec<String> {
    let mut groups: Vec<(&str, &str, usize, &str, &str)> = Vec::new();
    for f in &p.failures {
        match groups.last_mut() {
            Some(g) if g.3 == f.outcome && g.4 == f.reason => {
                g.1 = &f.ts;
                g.2 += 1;
            }
            _ => groups.push((&f.ts, &f.ts, 1, &f.outcome, &f.reason)),
        }
    }
    groups
        .into_iter()
        .map(|(first, last, n, outcome, reason)| {
            if n == 1 {
                format!("{} {outcome}: {reason}", human(first))
            } else {
                format!(
                    "{} – {}, {n} runs {outcome}: {reason}",
                    human(first),
                    human(last)
                )
            }
        })
        .collect()
}

/// Which optional columns any promise has: objects, bytes, partitions.
pub fn extra_columns(report: &Report) -> (bool, bool, bool) {
    let any = |f: fn(&Promise) -> bool| report.rules.iter().any(f);
    (
        any(|p| p.objects.is_some()),
        any(|p| p.bytes.is_some()),
        any(|p| p.partitions_dropped.is_some()),
    )
}

/// Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "# {}\n\nPeriod: {}. Generated {} UTC.\n\n",
        md_escape(&title(report)),
        period(report),
        human(&report.generated)
    );
    out.push_str("## Evidence\n\n");
    for (k, v) in evidence(report) {
        out.push_str(&format!("- {k}: {}\n", md_escape(&v)));
    }
    let (objects, bytes, partitions) = extra_columns(report);
    out.push_str("\n## Promises\n\n| status | rule | promise | target | in force | runs | deleted | masked | cascaded | protected |");
    let mut rule = String::from("\n|---|---|---|---|---|---|---:|---:|---:|---:|");
    for (on, name) in [
        (partitions, "partitions dropped"),
        (objects, "objects"),
        (bytes, "bytes"),
    ] {
        if on {
            out.push_str(&format!(" {name} |"));
            rule.push_str("---:|");
        }
    }
    out.push_str(" latest cutoff | compliance lag |");
    rule.push_str("---|---|\n");
    out.push_str(&rule);
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |n| n.to_string());
    for p in &report.rules {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            status(p),
            md_escape(&p.rule),
            md_escape(&promise_text(p)),
            md_escape(&p.target),
            in_force(p),
            runs(p),
            p.deleted,
            p.masked,
            p.cascaded.values().sum::<i64>(),
            opt(p.protected),
        ));
        for (on, v) in [
            (partitions, p.partitions_dropped),
            (objects, p.objects),
            (bytes, p.bytes),
        ] {
            if on {
                out.push_str(&format!(" {} |", opt(v)));
            }
        }
        out.push_str(&format!(
            " {} | {} |\n",
            p.latest_cutoff.as_deref().map_or("-".into(), human),
            lag(p)
        ));
    }
    out.push_str(
        "\nProtected and skipped: due items kept back at the latest run. Compliance lag: how long past its cutoff the oldest due item was after the latest run (0 when it ended ok).\n",
    );
    out.push_str("\n## Configs in force\n\n| config SHA-256 | first seen | last seen | loads | runs | hosts | audit writer |\n|---|---|---|---:|---:|---|---|\n");
    for c in &report.configs {
        out.push_str(&format!(
            "| {}{} | {} | {} | {} | {} | {} | {} |\n",
            c.sha256,
            if c.loaded_before_period {
                " (loaded before the period)"
            } else {
                ""
            },
            human(&c.first_seen),
            human(&c.last_seen),
            c.loads,
            c.runs,
            md_escape(&c.hosts.join(", ")),
            rights(c)
        ));
    }
    out.push_str("\n## Legal holds in force\n\n");
    if report.holds.is_empty() {
        out.push_str("None recorded.\n");
    } else {
        out.push_str("| hold | target | where | reason | added | released | rules | kept back (latest run) |\n|---|---|---|---|---|---|---|---|\n");
        for h in &report.holds {
            out.push_str(&format!(
                "| {} | {}:{} | {} | {} | {} | {} | {} | {} |\n",
                md_escape(&h.name),
                md_escape(&h.store),
                md_escape(&h.target),
                md_escape(h.filter.as_deref().unwrap_or("-")),
                md_escape(&h.reason),
                human(&h.added),
                h.released.as_deref().map_or("-".into(), human),
                md_escape(&h.rules.join(", ")),
                md_escape(&by_key(&h.protected))
            ));
        }
    }
    out.push_str("\n## Guards\n\n");
    match &report.guards {
        None => out.push_str(
            "The audit log records a guard only where it kept rows back (each promise's \"kept back by\"); give the config (-c) to list every guard.\n",
        ),
        Some(g) if g.is_empty() => out.push_str("None in the config given.\n"),
        Some(guards) => {
            out.push_str("From the config given; what each kept back is from the signed records.\n\n| table | age | no row younger than | reason | rules | kept back (latest run) |\n|---|---|---|---|---|---|\n");
            for g in guards {
                out.push_str(&format!(
                    "| {}:{} | {} | {} | {} | {} | {} |\n",
                    md_escape(&g.store),
                    md_escape(&g.table),
                    md_escape(&g.age),
                    g.min_keep,
                    md_escape(&g.reason),
                    md_escape(&g.rules.join(", ")),
                    md_escape(&by_key(&g.protected))
                ));
            }
        }
    }
    for p in &report.rules {
        if p.cascaded.is_empty()
            && p.skipped.is_empty()
            && p.failures.is_empty()
            && p.guards.is_empty()
            && p.holds.is_empty()
            && p.protected_by.is_empty()
            && p.null_age.unwrap_or(0) == 0
        {
            continue;
        }
        out.push_str(&format!(
            "\n## {} ({} {})\n\n",
            md_escape(&p.rule),
            p.action,
            p.keep
        ));
        for (table, n) in &p.cascaded {
            out.push_str(&format!(
                "- removed by cascade from {}: {n}\n",
                md_escape(table)
            ));
        }
        for (why, n) in &p.skipped {
            out.push_str(&format!(
                "- skipped ({}) at the latest run: {n}\n",
                md_escape(why)
            ));
        }
        if let Some(n) = p.null_age.filter(|n| *n > 0) {
            out.push_str(&format!(
                "- rows with no age (NULL: never expire) at the latest run: {n}\n"
            ));
        }
        for (floor, n) in &p.protected_by {
            out.push_str(&format!(
                "- kept back by {} at the latest run: {n}\n",
                md_escape(floor)
            ));
        }
        for g in &p.guards {
            out.push_str(&format!("- guard: {}\n", md_escape(g)));
        }
        for h in &p.holds {
            out.push_str(&format!("- legal hold: {}\n", md_escape(h)));
        }
        for f in failures(p) {
            out.push_str(&format!("- {}\n", md_escape(&f)));
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

fn pairs(map: &std::collections::BTreeMap<String, i64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// CSV, one row per promise. Times are UTC.
pub fn csv(report: &Report) -> String {
    let mut out = String::from(
        "rule,status,action,keep,policy_ref,target,first_run_utc,last_run_utc,runs_ok,runs_refused,runs_failed,runs_interrupted,runs_abandoned,runs_unfinished,deleted,masked,cascaded,protected,protected_by,null_age,skipped,partitions_dropped,objects,bytes,latest_cutoff_utc,compliance_lag_seconds,max_compliance_lag_seconds,failures\n",
    );
    let opt = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let time = |v: &Option<String>| v.as_deref().map(human).unwrap_or_default();
    for p in &report.rules {
        let n = |k: &str| p.runs.get(k).copied().unwrap_or(0).to_string();
        let fields = [
            p.rule.clone(),
            status(p).to_string(),
            p.action.clone(),
            p.keep.clone(),
            p.policy_ref.clone().unwrap_or_default(),
            p.target.clone(),
            time(&p.first_run),
            time(&p.last_run),
            n("ok"),
            n("refused"),
            n("failed"),
            n("interrupted"),
            n("abandoned"),
            n("unfinished"),
            p.deleted.to_string(),
            p.masked.to_string(),
            pairs(&p.cascaded),
            opt(p.protected),
            pairs(&p.protected_by),
            opt(p.null_age),
            pairs(&p.skipped),
            opt(p.partitions_dropped),
            opt(p.objects),
            opt(p.bytes),
            time(&p.latest_cutoff),
            opt(p.compliance_lag_seconds),
            opt(p.max_compliance_lag_seconds),
            failures(p).join("; "),
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
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_reads_as_a_duration() {
        assert_eq!(humanize(42), "42s");
        assert_eq!(humanize(125), "2m");
        assert_eq!(humanize(3 * 3600 + 60), "3h 1m");
        assert_eq!(humanize(2 * 86_400 + 5 * 3600), "2d 5h");
        assert_eq!(humanize(6 * 3600), "6h");
        assert_eq!(humanize(86_400 + 59), "1d");
    }
}
