//! What commands print: tables for people, one JSON object for programs,
//! progress bars on a terminal.

use crate::engine::Progress;
use crate::plan::{Outcome, RuleReport};
use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, CellAlignment, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;

use super::Format;

/// Prints plan or run reports. JSON goes to stdout as one object.
pub fn print_reports(reports: &[RuleReport], at: DateTime<Utc>, format: Format, run: bool) {
    match format {
        Format::Json => {
            let value =
                serde_json::json!({ "at": crate::audit::record::format_ts(at), "rules": reports });
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        Format::Text => print_table(reports, at, run),
    }
}

/// The columns text output may use: `$COLUMNS`, else the terminal's, else
/// no limit (a pipe to a file).
fn width() -> Option<u16> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w: &u16| *w >= 20)
        .or_else(|| Table::new().width())
}

/// A table that wraps its cells to fit [`width`].
pub fn fitted_table() -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(w) = width() {
        table.set_width(w);
    }
    table
}

/// Prints `line` wrapped to [`width`], continuation lines indented.
pub fn say(line: &str) {
    match width() {
        Some(w) => {
            let options = textwrap::Options::new(usize::from(w))
                .subsequent_indent("      ")
                .break_words(true);
            for l in textwrap::wrap(line, options) {
                println!("{l}");
            }
        }
        None => println!("{line}"),
    }
}

fn short_ts(ts: Option<DateTime<Utc>>) -> String {
    ts.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Below this many columns the plan/run table folds what, keep and cutoff
/// into one cell and leaves out batches, so it fits 80 columns.
const WIDE: u16 = 120;

fn print_table(reports: &[RuleReport], at: DateTime<Utc>, run: bool) {
    let mut table = fitted_table();
    let narrow = width().is_some_and(|w| w < WIDE);
    let mut header = if narrow {
        vec!["rule", "what (UTC)", "matched", "protected"]
    } else {
        vec![
            "rule",
            "action",
            "target",
            "keep",
            "cutoff (UTC)",
            "matched",
            "protected",
        ]
    };
    if run {
        header.push("affected");
    }
    if !narrow {
        header.push("batches");
    }
    header.push("outcome");
    // Numbers and outcomes never split (a column's width counts its two
    // padding spaces); names and targets wrap instead.
    let floors: Vec<u16> = header
        .iter()
        .map(|h| match *h {
            "outcome" => 14,
            "rule" => 8,
            "what (UTC)" => 18,
            h => h.len() as u16 + 2,
        })
        .collect();
    table.set_header(header);
    table.set_constraints(
        floors
            .into_iter()
            .map(|w| comfy_table::ColumnConstraint::LowerBoundary(comfy_table::Width::Fixed(w))),
    );
    for r in reports {
        let target = format!("{}:{}", r.store, r.target);
        let mut row = if narrow {
            vec![
                Cell::new(&r.rule),
                Cell::new(format!(
                    "{} {target}\nkeep {}\ncutoff {}",
                    r.action,
                    r.keep,
                    short_ts(r.cutoff)
                )),
            ]
        } else {
            vec![
                Cell::new(&r.rule),
                Cell::new(r.action),
                Cell::new(target),
                Cell::new(&r.keep),
                Cell::new(short_ts(r.cutoff)),
            ]
        };
        row.push(Cell::new(r.matched).set_alignment(CellAlignment::Right));
        row.push(Cell::new(r.protected).set_alignment(CellAlignment::Right));
        if run {
            row.push(Cell::new(r.affected.unwrap_or(0)).set_alignment(CellAlignment::Right));
        }
        if !narrow {
            row.push(Cell::new(r.batches).set_alignment(CellAlignment::Right));
        }
        row.push(Cell::new(outcome_name(r.outcome)));
        table.add_row(row);
    }
    let verb = if run { "Run" } else { "Plan" };
    println!("{verb} at {} UTC", at.format("%Y-%m-%d %H:%M:%S"));
    println!("{table}");
    for r in reports {
        if let Some(b) = r.bytes {
            let verb = if run { "freed" } else { "to free" };
            let versions = r
                .versions
                .filter(|v| *v > 0)
                .map(|v| format!(", {v} version(s) and delete marker(s)"))
                .unwrap_or_default();
            say(&format!("  {}: {b} byte(s) {verb}{versions}", r.rule));
        }
        if let Some(u) = r.unparsable.filter(|u| *u > 0) {
            say(&format!(
                "  {}: {u} value(s) were not IP addresses (unparsable)",
                r.rule
            ));
        }
        let verb = if r.affected.is_some() {
            "removed"
        } else {
            "would remove"
        };
        if !r.cascaded.is_empty() {
            say(&format!(
                "  {}: ON DELETE CASCADE {verb} {}",
                r.rule,
                counts_text(&r.cascaded, "row(s)")
            ));
        }
        if !r.partitions_dropped.is_empty() {
            let verb = if r.affected.is_some() {
                "dropped"
            } else {
                "would drop"
            };
            let n: i64 = r.partitions_dropped.values().sum();
            say(&format!(
                "  {}: {verb} {} whole partition(s) ({n} rows); the rest in batches",
                r.rule,
                r.partitions_dropped.len()
            ));
        }
        if let Some(d) = r.keep_distribution.as_ref().filter(|d| !d.is_empty()) {
            let parts: Vec<String> = d
                .iter()
                .map(|k| format!("{} {} row(s)", k.keep, k.rows))
                .collect();
            say(&format!(
                "  {}: periods (keep_expr): {}",
                r.rule,
                parts.join(", ")
            ));
        }
        if let Some(n) = r.null_age.filter(|n| *n > 0) {
            say(&format!(
                "  {}: {n} row(s) have no age (NULL) and never expire; age_expr with coalesce gives them one",
                r.rule
            ));
        }
        if !r.protected_by.is_empty() {
            let by: Vec<String> = r
                .protected_by
                .iter()
                .map(|(floor, n)| format!("{floor}: {n}"))
                .collect();
            say(&format!("  {}: kept back by {}", r.rule, by.join(", ")));
        }
        if !r.skipped.is_empty() {
            say(&format!(
                "  {}: kept because they cannot be touched safely: {}",
                r.rule,
                counts_text(&r.skipped, "item(s)")
            ));
        }
        if let Some(reason) = &r.reason {
            say(&format!(
                "  {} {}: {reason}",
                r.rule,
                outcome_name(r.outcome)
            ));
        }
        for note in &r.notes {
            say(&format!("  {}: {note}", r.rule));
        }
    }
}

/// `3 row(s) of public.kids, 1 row(s) of public.notes`.
fn counts_text(counts: &std::collections::BTreeMap<String, i64>, unit: &str) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {unit} of {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Planned => "planned",
        Outcome::WouldRefuse => "would_refuse",
        Outcome::Ok => "ok",
        Outcome::Refused => "refused",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

/// Prints audit records as a table.
pub fn print_audit<'a>(records: impl Iterator<Item = &'a str>) {
    let mut table = fitted_table();
    table.set_header([
        "seq", "ts (UTC)", "kind", "rule", "outcome", "cutoff", "matched", "affected", "key",
    ]);
    for line in records {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let n = |outer: &str, k: &str| {
            v.get(outer)
                .and_then(|o| o.get(k))
                .map(|x| x.to_string())
                .unwrap_or_default()
        };
        let ts = s("ts");
        let (matched, affected) = if s("kind") == "run_intent" {
            (n("planned", "matched"), String::new())
        } else {
            (n("counts", "matched"), n("counts", "affected"))
        };
        table.add_row(vec![
            v.get("seq").map(|x| x.to_string()).unwrap_or_default(),
            ts.get(..19).unwrap_or(&ts).replace('T', " "),
            s("kind"),
            s("rule"),
            s("outcome"),
            s("cutoff").get(..19).unwrap_or("").replace('T', " "),
            matched,
            affected,
            s("key_id"),
        ]);
    }
    println!("{table}");
}

/// One progress bar per rule, on stderr, when it is a terminal.
pub struct ProgressBars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl ProgressBars {
    /// Bars are drawn only when `enabled`.
    pub fn new(enabled: bool) -> ProgressBars {
        ProgressBars {
            multi: enabled.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Clears the bars.
    pub fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
        }
    }
}

impl Progress for ProgressBars {
    fn batch_done(&self, rule: &str, done: i64, expected: i64) {
        let Some(multi) = &self.multi else { return };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars.entry(rule.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(expected.max(1) as u64));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>24} {bar:30} {pos}/{len} rows {per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(rule.to_string());
            bar
        });
        bar.set_length(expected.max(done) as u64);
        bar.set_position(done as u64);
    }
}
