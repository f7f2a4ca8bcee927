//! The report as one self-contained, printable HTML file: no scripts, no
//! external styles, fonts or images. A status per promise, the evidence it
//! rests on, and per promise two inline SVG charts on one time axis: items
//! removed per day, and the compliance lag at each run.

use super::render::{
    by_key, evidence, extra_columns, failures, in_force, lag, period, rights, runs, title,
};
use super::{human, Promise, Report};
use chrono::{DateTime, NaiveDate, Utc};

/// HTML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1180px;padding:0 1.5rem;color:#1b1f24}\
h1{font-size:1.5rem;margin:0}h2{font-size:1.15rem;margin:1.8rem 0 .5rem}h3{font-size:1rem;margin:0}\
.subject{font-size:1.1rem;color:#424a53;margin:.1rem 0 .4rem}.period{margin:.2rem 0}.muted{color:#57606a}\
.evidence{border:1px solid #d0d7de;border-radius:6px;padding:.6rem .9rem;background:#f6f8fa;margin-top:1rem}\
.evidence dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.3rem 0}\
.evidence dt{font-weight:600}.evidence dd{margin:0;overflow-wrap:anywhere}\
code,.hash{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}\
table{border-collapse:collapse;width:100%;margin-top:.4rem}\
th,td{border-bottom:1px solid #d0d7de;padding:.3rem .4rem;text-align:left;vertical-align:top;font-size:.86rem}\
th{background:#f6f8fa;font-size:.85rem}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
td small,.small{font-size:.8rem;color:#57606a}td.t{white-space:nowrap}th.promise-col{min-width:13rem}td.rule{font-weight:600}td.rule small{font-weight:400}\
.badge{color:#fff;border-radius:4px;padding:.05rem .45rem;white-space:nowrap;font-size:.85rem;font-weight:600}\
.met{background:#1a7f37}.notmet{background:#cf222e}.noevidence{background:#6e7781}\
.promise{border-top:2px solid #d0d7de;margin-top:1.6rem;padding-top:.7rem;break-inside:avoid}\
.promise h3{display:flex;gap:.6rem;align-items:baseline;flex-wrap:wrap}\
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.3rem 1.2rem;margin:.6rem 0}\
.facts div{border-left:3px solid #d0d7de;padding-left:.5rem}.facts b{display:block;font-size:.78rem;color:#57606a;font-weight:600}\
.charts{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.charts svg{width:100%;height:auto}\
.bad{color:#cf222e}ul{margin:.3rem 0 .3rem 1.2rem;padding:0}\
@page{size:A4;margin:12mm}\
@media print{html{font-size:11.5px}body{margin:0;padding:0;max-width:none;font-size:1rem}th.promise-col{min-width:9rem}th,td{padding:.2rem .3rem}h2{break-after:avoid}thead{display:table-header-group}tr{break-inside:avoid}\
.badge,.evidence,th{-webkit-print-color-adjust:exact;print-color-adjust:exact}}";

fn badge(p: &Promise) -> String {
    let class = match p.status.as_str() {
        "promise met" => "met",
        "no evidence" => "noevidence",
        _ => "notmet",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(&p.status))
}

/// `12.3 MiB`.
fn bytes(n: i64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".to_string(), |n| n.to_string())
}

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let title = title(report);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(&format!(
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    ));
    out.push_str("<h1>Retention report</h1>");
    let subject: Vec<&str> = [report.organisation.as_deref(), report.system.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !subject.is_empty() {
        out.push_str(&format!(
            "<p class=\"subject\">{}</p>",
            esc(&subject.join(" · "))
        ));
    }
    out.push_str(&format!(
        "<p class=\"period\">Period: {}. <span class=\"muted\">Generated {} UTC.</span></p>\n",
        esc(&period(report)),
        esc(&human(&report.generated))
    ));
    out.push_str("<section class=\"evidence\"><h3>Evidence</h3><dl>");
    for (k, v) in evidence(report) {
        let class = if k == "Head" { " class=\"hash\"" } else { "" };
        out.push_str(&format!("<dt>{}</dt><dd{class}>{}</dd>", esc(&k), esc(&v)));
    }
    out.push_str("</dl></section>\n");

    out.push_str("<h2>Promises</h2>");
    let (objects, byte_col, partitions) = extra_columns(report);
    out.push_str("<table id=\"rules\"><thead><tr><th>Status</th><th>Rule</th><th class=\"promise-col\">Promise</th><th>Runs</th>\
                  <th>Deleted</th><th>Masked</th><th>Cascaded</th><th>Protected</th>");
    for (on, name) in [
        (partitions, "Partitions dropped"),
        (objects || byte_col, "Objects (bytes)"),
    ] {
        if on {
            out.push_str(&format!("<th>{name}</th>"));
        }
    }
    out.push_str("<th>Latest cutoff</th><th>Compliance lag</th></tr></thead><tbody>\n");
    for p in &report.rules {
        out.push_str(&format!(
            "<tr><td>{}</td><td class=\"rule\">{}<br><small>{}</small></td><td><b>{} {}</b>{}<br><small>{}</small></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
            badge(p),
            esc(&p.rule),
            esc(&p.target),
            esc(&p.action),
            esc(&p.keep),
            p.policy_ref
                .as_ref()
                .map(|r| format!("<br><small>{}</small>", esc(r)))
                .unwrap_or_default(),
            esc(&in_force(p)),
            esc(&runs(p)),
            p.deleted,
            p.masked,
            p.cascaded.values().sum::<i64>(),
            opt(p.protected),
        ));
        if partitions {
            out.push_str(&format!(
                "<td class=\"n\">{}</td>",
                opt(p.partitions_dropped)
            ));
        }
        if objects || byte_col {
            out.push_str(&format!(
                "<td class=\"n\">{}{}</td>",
                opt(p.objects),
                p.bytes
                    .map(|b| format!("<br><small>{}</small>", bytes(b)))
                    .unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "<td class=\"t\">{}</td><td>{}</td></tr>\n",
            esc(&p.latest_cutoff.as_deref().map_or("-".into(), human)).replacen(' ', "<br>", 1),
            esc(&lag(p))
        ));
    }
    out.push_str("</tbody></table>\n<p class=\"small\">Times are UTC. Protected: due items kept back by guards, holds, cascades and locks at the latest run. \
                  Compliance lag: how long past its cutoff the oldest due item was after the latest run (0 when it ended ok), and the most in the period.</p>\n");
    for p in &report.rules {
        out.push_str(&promise_section(p));
    }

    out.push_str("<h2>Configs in force</h2><table><thead><tr><th>Config SHA-256</th><th>First seen</th><th>Last seen</th><th>Loads</th><th>Runs</th><th>Hosts</th><th>Audit writer</th></tr></thead><tbody>");
    for c in &report.configs {
        out.push_str(&format!(
            "<tr><td class=\"hash\">{}{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.sha256),
            if c.loaded_before_period {
                "<br><small>loaded before the period</small>"
            } else {
                ""
            },
            esc(&human(&c.first_seen)),
            esc(&human(&c.last_seen)),
            c.loads,
            c.runs,
            esc(&c.hosts.join(", ")),
            esc(&rights(c))
        ));
    }
    out.push_str("</tbody></table>\n");

    out.push_str("<h2>Legal holds in force</h2>");
    if report.holds.is_empty() {
        out.push_str("<p>None recorded.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Hold</th><th>Target</th><th>Where</th><th>Reason</th><th>Added</th><th>Released</th><th>Rules</th><th>Kept back (latest run)</th></tr></thead><tbody>");
        for h in &report.holds {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}:{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&h.name),
                esc(&h.store),
                esc(&h.target),
                esc(h.filter.as_deref().unwrap_or("-")),
                esc(&h.reason),
                esc(&human(&h.added)),
                esc(&h.released.as_deref().map_or("-".into(), human)),
                esc(&h.rules.join(", ")),
                esc(&by_key(&h.protected))
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("<h2>Guards</h2>");
    match &report.guards {
        None => out.push_str("<p class=\"muted\">The audit log records a guard only where it kept rows back (each promise's \u{201c}Kept back by\u{201d}); a report made with the config (<code>-c</code>) lists every guard.</p>"),
        Some(g) if g.is_empty() => out.push_str("<p>None in the config given.</p>"),
        Some(guards) => {
            out.push_str("<p class=\"small\">From the config given; what each kept back is from the signed records.</p><table><thead><tr><th>Table</th><th>Age column</th><th>No row younger than</th><th>Reason</th><th>Rules</th><th>Kept back (latest run)</th></tr></thead><tbody>");
            for g in guards {
                out.push_str(&format!(
                    "<tr><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&g.store),
                    esc(&g.table),
                    esc(&g.age),
                    esc(&g.min_keep),
                    esc(&g.reason),
                    esc(&g.rules.join(", ")),
                    esc(&by_key(&g.protected))
                ));
            }
            out.push_str("</tbody></table>\n");
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn fact(out: &mut String, name: &str, value: &str) {
    out.push_str(&format!("<div><b>{}</b>{}</div>", esc(name), esc(value)));
}

fn promise_section(p: &Promise) -> String {
    let mut out = format!(
        "<section class=\"promise\"><h3>{} <span>{}</span> <span class=\"muted\">{} {} · {}</span></h3>",
        badge(p),
        esc(&p.rule),
        esc(&p.action),
        esc(&p.keep),
        esc(&p.target)
    );
    if let Some(d) = &p.description {
        out.push_str(&format!("<p>{}</p>", esc(d)));
    }
    if let Some(r) = &p.policy_ref {
        out.push_str(&format!("<p class=\"small\">{}</p>", esc(r)));
    }
    out.push_str("<div class=\"facts\">");
    fact(&mut out, "In force", &in_force(p));
    fact(&mut out, "Runs", &runs(p));
    let removed = if p.action == "mask" {
        ("Masked", p.masked)
    } else {
        ("Deleted", p.deleted)
    };
    fact(&mut out, removed.0, &removed.1.to_string());
    fact(&mut out, "Removed by cascade", &by_key(&p.cascaded));
    fact(&mut out, "Protected (latest run)", &opt(p.protected));
    if !p.protected_by.is_empty() {
        fact(&mut out, "Kept back by", &by_key(&p.protected_by));
    }
    if let Some(n) = p.null_age.filter(|n| *n > 0) {
        fact(&mut out, "No age (NULL, never expire)", &n.to_string());
    }
    fact(&mut out, "Skipped (latest run)", &by_key(&p.skipped));
    if let Some(n) = p.partitions_dropped {
        fact(&mut out, "Partitions dropped", &n.to_string());
    }
    if let Some(n) = p.objects {
        fact(&mut out, "Objects deleted", &n.to_string());
    }
    if let Some(n) = p.bytes {
        fact(&mut out, "Bytes deleted", &format!("{} ({n})", bytes(n)));
    }
    fact(
        &mut out,
        "Latest cutoff",
        &p.latest_cutoff.as_deref().map_or("-".into(), human),
    );
    fact(
        &mut out,
        "Latest run ended",
        &p.latest_outcome.as_deref().map_or("-".into(), human),
    );
    fact(&mut out, "Compliance lag", &lag(p));
    if !p.config_sha256.is_empty() {
        let short: Vec<&str> = p
            .config_sha256
            .iter()
            .map(|h| h.get(..12).unwrap_or(h))
            .collect();
        fact(&mut out, "Config", &short.join(", "));
    }
    if !p.guards.is_empty() {
        fact(&mut out, "Guards", &p.guards.join("; "));
    }
    if !p.holds.is_empty() {
        fact(&mut out, "Legal holds", &p.holds.join("; "));
    }
    out.push_str("</div>");
    if !p.from_config_only {
        out.push_str(&format!(
            "<div class=\"charts\">{}{}</div>",
            removed_chart(p),
            lag_chart(p)
        ));
    }
    let failures = failures(p);
    if !failures.is_empty() {
        const SHOWN: usize = 25;
        out.push_str("<ul>");
        if failures.len() > SHOWN {
            out.push_str(&format!(
                "<li>{} earlier lines are in the JSON report</li>",
                failures.len() - SHOWN
            ));
        }
        for f in &failures[failures.len().saturating_sub(SHOWN)..] {
            out.push_str(&format!("<li class=\"bad\">{}</li>", esc(f)));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");
    out
}

/// Chart geometry: a 460×220 view box, plot inside the margins.
const W: f64 = 460.0;
const H: f64 = 220.0;
const LEFT: f64 = 54.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 48.0;

/// The shared time axis: the first bucket's day to the end of the last.
struct Axis {
    start: NaiveDate,
    days: i64,
}

impl Axis {
    fn of(p: &Promise) -> Axis {
        let start = p
            .series
            .first()
            .and_then(|(d, _)| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .unwrap_or_else(|| Utc::now().date_naive());
        Axis {
            start,
            days: (p.series.len().max(1) as i64) * p.bucket_days.max(1),
        }
    }

    /// x of a moment, in days from the start.
    fn x(&self, days: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * days / self.days as f64
    }

    /// Date ticks along the bottom and the axis title: up to a week, each
    /// day labelled in its middle; longer, at most six round steps.
    fn draw(&self, out: &mut String) {
        let tick = |out: &mut String, x: f64| {
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>",
                H - BOTTOM,
                H - BOTTOM + 4.0
            ));
        };
        let label = |out: &mut String, x: f64, d: i64| {
            out.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#57606a\" text-anchor=\"middle\">{}</text>",
                H - BOTTOM + 15.0,
                (self.start + chrono::Duration::days(d)).format("%Y-%m-%d")
            ));
        };
        if self.days <= 5 {
            for d in 0..=self.days {
                tick(out, self.x(d as f64));
                if d < self.days {
                    label(out, self.x(d as f64 + 0.5), d);
                }
            }
        } else {
            let step = [1, 2, 7, 14, 28, 61, 91, 182, 365, 730, 1461]
                .into_iter()
                .find(|s| self.days / s <= 5)
                .unwrap_or(self.days);
            let mut d = 0;
            while d <= self.days {
                tick(out, self.x(d as f64));
                if self.days - d >= step / 2 {
                    label(out, self.x(d as f64), d);
                }
                d += step;
            }
        }
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>",
            H - BOTTOM,
            W - RIGHT,
            H - BOTTOM
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10.5\" fill=\"#424a53\" text-anchor=\"middle\">date (UTC)</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 8.0
        ));
    }
}

/// 0 and a few round values up to at least `max`.
fn ticks(max: f64) -> Vec<f64> {
    let max = max.max(1.0);
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
        .max(if max <= 4.0 { 1.0 } else { 0.0 });
    let top = (max / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        out.push(v);
        v += step;
    }
    out
}

fn number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// The frame: title, y ticks and grid, y-axis title; returns y of a value.
fn frame(out: &mut String, title: &str, y_title: &str, ticks: &[f64]) -> impl Fn(f64) -> f64 {
    let top = *ticks.last().unwrap_or(&1.0);
    let plot = H - TOP - BOTTOM;
    let y = move |v: f64| H - BOTTOM - plot * v / top.max(f64::MIN_POSITIVE);
    out.push_str(&format!(
        "<text x=\"0\" y=\"14\" font-size=\"12.5\" font-weight=\"600\" fill=\"#1b1f24\">{}</text>",
        esc(title)
    ));
    for t in ticks {
        let ty = y(*t);
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#57606a\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 5.0,
            ty + 3.5,
            number(*t)
        ));
    }
    out.push_str(&format!(
        "<text transform=\"translate(11 {:.1}) rotate(-90)\" font-size=\"10.5\" fill=\"#424a53\" text-anchor=\"middle\">{}</text>",
        TOP + plot / 2.0,
        esc(y_title)
    ));
    y
}

fn svg_open(label: &str) -> String {
    format!(
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(label)
    )
}

/// Bars of items removed per day (or per bucket of days).
fn removed_chart(p: &Promise) -> String {
    let axis = Axis::of(p);
    let what = match (p.action.as_str(), p.objects.is_some()) {
        ("mask", _) => "rows masked",
        (_, true) => "items deleted",
        _ => "rows deleted",
    };
    let per = if p.bucket_days == 1 {
        "day".to_string()
    } else {
        format!("{} days", p.bucket_days)
    };
    let total: i64 = p.series.iter().map(|(_, v)| v).sum();
    let mut svg = svg_open(&format!("{}: {what} per {per}", p.rule));
    let max = p.series.iter().map(|(_, v)| *v).max().unwrap_or(0) as f64;
    let ticks = ticks(max);
    let y = frame(
        &mut svg,
        &format!("{} per {per} ({total} in all)", capitalise(what)),
        &format!("{what} per {per}"),
        &ticks,
    );
    for (i, (day, v)) in p.series.iter().enumerate() {
        if *v == 0 {
            continue;
        }
        let d0 = (i as i64 * p.bucket_days) as f64;
        let (x0, x1) = (axis.x(d0), axis.x(d0 + p.bucket_days as f64));
        let gap = ((x1 - x0) * 0.15).min(3.0);
        let top = y(*v as f64);
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#0969da\"><title>{day}: {v}</title></rect>",
            x0 + gap / 2.0,
            (x1 - x0 - gap).max(1.0),
            (H - BOTTOM - top).max(0.5)
        ));
    }
    axis.draw(&mut svg);
    svg.push_str("</svg>");
    svg
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The compliance lag over time: per day (bucket), the most any run saw,
/// as a stepped area; red dots mark days with a run that did not end ok.
/// Every run's own value is in the JSON report (`lag_series`).
fn lag_chart(p: &Promise) -> String {
    let axis = Axis::of(p);
    let width = p.bucket_days.max(1);
    let mut per: Vec<Option<(i64, bool)>> = vec![None; p.series.len().max(1)];
    for l in &p.lag_series {
        let Some(day) = DateTime::parse_from_rfc3339(&l.ts)
            .ok()
            .map(|t| t.with_timezone(&Utc).date_naive())
        else {
            continue;
        };
        let i = (day - axis.start).num_days() / width;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| per.get_mut(i)) {
            let bad = l.at != "start" && l.at != "ok";
            *slot = Some(match slot {
                Some((v, b)) => ((*v).max(l.seconds), *b || bad),
                None => (l.seconds, bad),
            });
        }
    }
    let max = per.iter().flatten().map(|(v, _)| *v).max().unwrap_or(0);
    let (unit, div) = if max >= 3 * 86_400 {
        ("days", 86_400.0)
    } else if max >= 2 * 3600 {
        ("hours", 3600.0)
    } else {
        ("minutes", 60.0)
    };
    let per_what = if width == 1 {
        "day".to_string()
    } else {
        format!("{width} days")
    };
    let mut svg = svg_open(&format!("{}: compliance lag over time", p.rule));
    let ticks = ticks(max as f64 / div);
    let y = frame(
        &mut svg,
        &format!(
            "Compliance lag, most per {per_what} (max {})",
            if max == 0 {
                "0".to_string()
            } else {
                super::render::humanize(max)
            }
        ),
        &format!("lag ({unit})"),
        &ticks,
    );
    if per.iter().all(Option::is_none) {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#57606a\" text-anchor=\"middle\">no run with a cutoff in the period</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            TOP + (H - TOP - BOTTOM) / 2.0
        ));
    } else {
        let base = H - BOTTOM;
        let (mut area, mut line) = (String::new(), String::new());
        let mut open = false;
        for (i, v) in per.iter().enumerate() {
            let (x0, x1) = (
                axis.x((i as i64 * width) as f64),
                axis.x(((i as i64 + 1) * width) as f64),
            );
            match v {
                Some((v, _)) => {
                    let yv = y(*v as f64 / div);
                    if open {
                        area.push_str(&format!("V{yv:.1}H{x1:.1}"));
                        line.push_str(&format!("V{yv:.1}H{x1:.1}"));
                    } else {
                        area.push_str(&format!("M{x0:.1} {base:.1}V{yv:.1}H{x1:.1}"));
                        line.push_str(&format!("M{x0:.1} {yv:.1}H{x1:.1}"));
                        open = true;
                    }
                }
                None if open => {
                    area.push_str(&format!("V{base:.1}Z"));
                    open = false;
                }
                None => {}
            }
        }
        if open {
            area.push_str(&format!("V{base:.1}Z"));
        }
        svg.push_str(&format!(
            "<path d=\"{area}\" fill=\"#f5d37a\" fill-opacity=\"0.55\"/><path d=\"{line}\" fill=\"none\" stroke=\"#bf8700\" stroke-width=\"1.6\"/>"
        ));
        let mut any_bad = false;
        for (i, v) in per.iter().enumerate() {
            if let Some((v, true)) = v {
                any_bad = true;
                let x = axis.x((i as f64 + 0.5) * width as f64);
                svg.push_str(&format!(
                    "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#cf222e\"><title>{}: lag up to {}</title></circle>",
                    y(*v as f64 / div),
                    axis.start + chrono::Duration::days(i as i64 * width),
                    super::render::humanize(*v)
                ));
            }
        }
        if any_bad {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"22\" r=\"3\" fill=\"#cf222e\"/><text x=\"{:.1}\" y=\"25.5\" font-size=\"10\" fill=\"#57606a\" text-anchor=\"end\">a run did not end ok</text>",
                W - RIGHT - 3.0,
                W - RIGHT - 10.0
            ));
        }
    }
    axis.draw(&mut svg);
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_markup() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(0.0), [0.0, 1.0]);
        assert_eq!(ticks(3.0), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(ticks(98.0), [0.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(ticks(1200.0), [0.0, 500.0, 1000.0, 1500.0]);
    }
}
