//! `retentiond report`: what auditors read, in every format; the HTML is
//! opened in a real headless Chromium.

use crate::util::*;
use serde_json::Value;

/// A log with an ok rule (guarded, held), a refused one and a mask.
async fn reported_env() -> (Env, std::path::PathBuf) {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE logs (id int primary key, at timestamptz);
         INSERT INTO logs SELECT i, now() - (i || ' days')::interval FROM generate_series(1, 40) i;
         CREATE TABLE sessions (id int primary key, at timestamptz, ip inet);
         INSERT INTO sessions SELECT i, now() - interval '40 days', ('203.0.113.' || i)::inet FROM generate_series(1, 5) i;
         INSERT INTO sessions SELECT i, now(), ('198.51.100.' || i)::inet FROM generate_series(6, 20) i;",
    )
    .await;
    let body = r#"[[rules]]
name = "logs-30d"
description = "Logs <kept> 30 days & then deleted"
policy_ref = "Privacy Policy §6"
store = "app"
table = "logs"
age = "at"
keep = "30d"
action = "delete"

[[rules]]
name = "logs-3d"
store = "app"
table = "logs"
age = "at"
keep = "3d"
action = "delete"

[[rules]]
name = "session-ips"
store = "app"
table = "sessions"
age = "at"
keep = "30d"
action = "mask"
columns = { ip = "ip_prefix" }

[[guards]]
store = "app"
table = "logs"
age = "at"
min_keep = "1d"
reason = "incident response"

[[holds]]
name = "case-7"
store = "app"
table = "logs"
where = "id = 35"
reason = "litigation"
"#;
    let cfg = env.config(body);
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 3, "logs-3d is refused (max_fraction): {run}");
    (env, cfg)
}

fn report(cfg: &std::path::Path, format: &str) -> Out {
    retentiond(
        &[
            "report",
            "-c",
            &cfg.display().to_string(),
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--format",
            format,
        ],
        &[],
    )
}

#[tokio::test]
async fn report_json_md_csv_say_what_happened() {
    let (_env, cfg) = reported_env().await;
    let out = report(&cfg, "json");
    assert_eq!(out.code, 0, "{out}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["verified"], true);
    // config_loaded, hold_added case-7, then intent + outcome for 3 rules.
    assert_eq!(json["seq_range"], serde_json::json!([1, 8]));
    let rule = |n: &str| {
        json["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == n)
            .unwrap()
            .clone()
    };
    let logs = rule("logs-30d");
    assert_eq!(
        logs["deleted"], 10,
        "days 31..40 minus the held row 35: {logs}"
    );
    assert_eq!(logs["runs"]["ok"], 1);
    assert_eq!(logs["kept"], true);
    assert_eq!(logs["compliance_lag_seconds"], 0);
    assert_eq!(logs["guards"][0], "logs.at kept 1d (incident response)");
    assert_eq!(logs["holds"][0], "case-7 (litigation)");
    let refused = rule("logs-3d");
    assert_eq!(refused["kept"], false);
    assert_eq!(refused["runs"]["refused"], 1);
    assert!(refused["failures"][0][2]
        .as_str()
        .unwrap()
        .contains("max_fraction"));
    // logs-30d ran first: the oldest due row left was ~30 days old, 27 past the 3-day cutoff.
    let lag = refused["compliance_lag_seconds"].as_i64().unwrap();
    assert!((86_400 * 26..86_400 * 28).contains(&lag), "{lag}");
    assert_eq!(
        logs["series"].as_array().unwrap().len(),
        1,
        "the chart spans the days with records"
    );
    assert_eq!(rule("session-ips")["masked"], 5);

    let md = report(&cfg, "md");
    assert_eq!(md.code, 0, "{md}");
    assert!(
        md.stdout.contains(
            "| kept | logs-30d | delete 30d (Privacy Policy §6) | app:logs | 1 ok | 10 | 0 |"
        ),
        "{md}"
    );
    assert!(md.stdout.contains("| not kept | logs-3d |"), "{md}");
    let csv = report(&cfg, "csv");
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[1]
            .starts_with("logs-30d,kept,delete,30d,Privacy Policy §6,app:logs,1,0,0,0,0,10,0,0,"),
        "{csv}"
    );
}

#[tokio::test]
async fn report_html_is_self_contained_and_renders_in_chromium() {
    let (env, cfg) = reported_env().await;
    let out_path = env.dir.path().join("report.html");
    let out = retentiond(
        &[
            "report",
            "-c",
            &cfg.display().to_string(),
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--out",
            &out_path.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    let html = std::fs::read_to_string(&out_path).unwrap();
    for forbidden in ["<script", "<link", " src=", "url(", "@import"] {
        assert!(
            !html.contains(forbidden),
            "the report must be self-contained, found {forbidden}"
        );
    }
    assert!(
        html.contains("Logs &lt;kept&gt; 30 days &amp; then deleted"),
        "text is escaped"
    );
    assert_eq!(html.matches("<svg").count(), 3, "one chart per rule");

    let chromium = std::env::var("RETENTIOND_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let rendered = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args([
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", out_path.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start {chromium} ({e}); scripts/test installs Debian's chromium")
        });
    let dom = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        dom.contains("<table id=\"rules\">"),
        "chromium rendered no rule table:\n{dom}\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    for rule in ["logs-30d", "logs-3d", "session-ips"] {
        assert!(
            dom.contains(&format!("<td>{rule}</td>")),
            "rule {rule} missing from the rendered table"
        );
    }
    assert!(
        dom.contains("class=\"kept\">kept</span>")
            && dom.contains("class=\"notkept\">not kept</span>")
    );
}
