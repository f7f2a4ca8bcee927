//! The report as one self-contained, printable HTML file: no scripts, no
//! external styles, fonts or images; a red/green status per promise and an
//! inline SVG chart per rule of items removed per day.

use super::render::{humanize, provenance, status};
use super::{Report, RuleSummary};

/// HTML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1b1f24}\
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:2rem 0 .4rem}\
.meta{color:#57606a;font-size:.85rem;word-break:break-all}\
table{border-collapse:collapse;width:100%;margin-top:1rem}th,td{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.kept{color:#fff;background:#1a7f37;border-radius:4px;padding:0 .4rem;white-space:nowrap}.notkept{color:#fff;background:#cf222e;border-radius:4px;padding:0 .4rem;white-space:nowrap}\
.rule{page-break-inside:avoid;border-top:1px solid #d0d7de;margin-top:1.2rem;padding-top:.6rem}\
.bad{color:#cf222e}ul{margin:.3rem 0}svg{max-width:100%}\
@media print{body{margin:1cm}.kept,.notkept{-webkit-print-color-adjust:exact;print-color-adjust:exact}}";

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(&format!(
        "<title>Retention report {} – {}</title><style>{STYLE}</style></head><body>\n",
        esc(&report.from),
        esc(&report.to)
    ));
    out.push_str(&format!("<h1>Retention report</h1><p>Period <b>{}</b> to <b>{}</b> (end excluded), generated {}.</p>\n", esc(&report.from), esc(&report.to), esc(&report.generated)));
    let class = if report.verified { "" } else { " bad" };
    out.push_str(&format!(
        "<p class=\"meta{class}\">{}</p>\n",
        esc(&provenance(report))
    ));
    out.push_str("<table id=\"rules\"><thead><tr><th>Status</th><th>Rule</th><th>Promise</th><th>Target</th><th>Runs</th>\
                  <th>Deleted</th><th>Masked</th><th>Latest cutoff</th><th>Compliance lag</th></tr></thead><tbody>\n");
    for r in &report.rules {
        let badge = if r.kept { "kept" } else { "notkept" };
        let runs = if r.runs.is_empty() {
            "none".to_string()
        } else {
            r.runs
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let lag = match r.compliance_lag_seconds {
            Some(0) => "0".to_string(),
            Some(s) => humanize(s),
            None => "unknown".into(),
        };
        out.push_str(&format!(
            "<tr><td><span class=\"{badge}\">{}</span></td><td>{}</td><td>{} {}{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>\n",
            status(r),
            esc(&r.rule),
            esc(&r.action),
            esc(&r.keep),
            r.policy_ref.as_ref().map(|p| format!("<br><small>{}</small>", esc(p))).unwrap_or_default(),
            esc(&r.target),
            esc(&runs),
            r.deleted,
            r.masked,
            esc(r.latest_cutoff.as_deref().unwrap_or("-")),
            esc(&lag)
        ));
    }
    out.push_str("</tbody></table>\n");
    for r in &report.rules {
        out.push_str(&rule_section(r));
    }
    out.push_str("</body></html>\n");
    out
}

fn rule_section(r: &RuleSummary) -> String {
    let mut out = format!("<div class=\"rule\"><h2>{}</h2>", esc(&r.rule));
    if let Some(d) = &r.description {
        out.push_str(&format!("<p>{}</p>", esc(d)));
    }
    out.push_str(&chart(r));
    let items: Vec<String> = r
        .guards
        .iter()
        .map(|g| format!("<li>guard: {}</li>", esc(g)))
        .chain(
            r.holds
                .iter()
                .map(|h| format!("<li>legal hold: {}</li>", esc(h))),
        )
        .chain(r.failures.iter().map(|(t, o, why)| {
            format!("<li class=\"bad\">{} {}: {}</li>", esc(t), esc(o), esc(why))
        }))
        .collect();
    if !items.is_empty() {
        out.push_str(&format!("<ul>{}</ul>", items.concat()));
    }
    out.push_str("</div>\n");
    out
}

/// Bars of items removed per day.
fn chart(r: &RuleSummary) -> String {
    let (w, h, pad) = (720.0_f64, 120.0_f64, 24.0_f64);
    let n = r.series.len().max(1) as f64;
    let max = r.series.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    // A few buckets get narrow bars, not one block across the chart.
    let bar = ((w - 2.0 * pad) / n).min(48.0);
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"{} items removed over time\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(&r.rule),
        h + 30.0,
        h + 30.0
    );
    svg.push_str(&format!(
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#8c959f\"/>",
        w - pad
    ));
    for (i, (day, v)) in r.series.iter().enumerate() {
        let bh = (*v as f64 / max) * (h - 22.0);
        let x = pad + i as f64 * bar;
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#0969da\"><title>{} {v}</title></rect>",
            h - bh,
            (bar - 2.0).max(1.0),
            esc(day)
        ));
    }
    if let Some((first, _)) = r.series.first() {
        svg.push_str(&format!(
            "<text x=\"{pad}\" y=\"{}\" font-size=\"11\" fill=\"#57606a\">{}</text>",
            h + 16.0,
            esc(first)
        ));
    }
    if let Some((last, _)) = r.series.last().filter(|_| r.series.len() > 1) {
        let x = (pad + n * bar).max(pad + 140.0);
        svg.push_str(&format!("<text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" fill=\"#57606a\" text-anchor=\"end\">{}</text>", h + 16.0, esc(last)));
    }
    let per = if r.bucket_days == 1 {
        "day".to_string()
    } else {
        format!("{} days", r.bucket_days)
    };
    svg.push_str(&format!("<text x=\"{pad}\" y=\"12\" font-size=\"11\" fill=\"#57606a\">items removed, max {} per {per}</text></svg>", max as i64));
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_markup() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
