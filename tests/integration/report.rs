//! `retentiond report`: what auditors read, in every format, from the
//! config's audit store, a read-only database role or an export with only
//! the public key; a log that does not verify gets no report; a report's
//! signature verifies until the report is edited. The HTML is opened in a
//! real headless Chromium, which also takes the README's screenshot.

use crate::util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A log with an ok rule (guarded, held), a refused one and a mask.
async fn reported_env() -> (Env, PathBuf) {
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

[report]
organisation = "Example GmbH"
system = "app (production)"
"#;
    let cfg = env.config(body);
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 3, "logs-3d is refused (max_fraction): {run}");
    (env, cfg)
}

const WHOLE: [&str; 4] = ["--from", "2000-01-01", "--to", "2100-01-01"];

fn report(cfg: &Path, format: &str) -> Out {
    let cfg = cfg.display().to_string();
    let mut args = vec!["report", "-c", cfg.as_str(), "--format", format];
    args.extend_from_slice(&WHOLE);
    retentiond(&args, &[])
}

/// `report` with these arguments.
fn report_with(args: &[&str]) -> Out {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    retentiond(&all, &[])
}

/// The log as an export file, and a checkpoint of its head.
fn export(env: &Env, cfg: &Path) -> (String, PathBuf) {
    let cfg = cfg.display().to_string();
    let export = retentiond(&["audit", "export", "-c", &cfg], &[]);
    assert_eq!(export.code, 0, "{export}");
    let head = retentiond(&["audit", "head", "-c", &cfg], &[]);
    assert_eq!(head.code, 0, "{head}");
    (export.stdout, env.write("checkpoints.jsonl", &head.stdout))
}

fn promise<'a>(json: &'a Value, rule: &str) -> &'a Value {
    json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no promise of {rule} in {json:#}"))
}

#[tokio::test]
async fn report_json_md_csv_say_what_happened() {
    let (_env, cfg) = reported_env().await;
    let out = report(&cfg, "json");
    assert_eq!(out.code, 0, "{out}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["organisation"], "Example GmbH");
    assert_eq!(json["system"], "app (production)");
    // config_loaded, hold_added case-7, then intent + outcome for 3 rules.
    assert_eq!(json["seq_range"], serde_json::json!([1, 8]));
    assert_eq!(json["verification"]["range"], serde_json::json!([1, 8]));
    assert_eq!(json["verification"]["head"].as_str().unwrap().len(), 64);
    let logs = promise(&json, "logs-30d");
    assert_eq!(
        logs["deleted"], 10,
        "days 31..40 minus the held row 35: {logs}"
    );
    assert_eq!(logs["runs"]["ok"], 1);
    assert_eq!(logs["promise_met"], true);
    assert_eq!(logs["status"], "promise met");
    assert_eq!(logs["compliance_lag_seconds"], 0);
    assert_eq!(logs["protected"], 1, "the held row");
    assert_eq!(
        logs["protected_by"],
        serde_json::json!({"hold case-7": 1}),
        "the guard kept nothing back"
    );
    assert_eq!(logs["guards"][0], "logs.at kept 1d (incident response)");
    assert_eq!(logs["holds"][0], "case-7 (litigation)");
    assert_eq!(
        logs["description"], "Logs <kept> 30 days & then deleted",
        "from the records"
    );
    let refused = promise(&json, "logs-3d");
    assert_eq!(refused["promise_met"], false);
    assert_eq!(refused["status"], "promise not met");
    assert_eq!(refused["runs"]["refused"], 1);
    assert!(refused["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("max_fraction"));
    // logs-30d ran first: the oldest due row left was ~30 days old, 27 past the 3-day cutoff.
    let lag = refused["compliance_lag_seconds"].as_i64().unwrap();
    assert!((86_400 * 26..86_400 * 28).contains(&lag), "{lag}");
    assert_eq!(refused["max_compliance_lag_seconds"], lag);
    assert_eq!(
        logs["series"].as_array().unwrap().len(),
        1,
        "the chart spans the days with records"
    );
    assert_eq!(promise(&json, "session-ips")["masked"], 5);
    // The hold and the config come from the records.
    assert_eq!(json["holds"][0]["name"], "case-7");
    assert_eq!(json["holds"][0]["where"], "id = 35");
    assert_eq!(
        json["holds"][0]["rules"],
        serde_json::json!(["logs-30d", "logs-3d"])
    );
    assert_eq!(json["configs"].as_array().unwrap().len(), 1);
    assert_eq!(json["configs"][0]["runs"], 3);
    assert_eq!(json["configs"][0]["loads"], 1);
    assert_eq!(
        json["guards"][0]["rules"],
        serde_json::json!(["logs-30d", "logs-3d"])
    );
    assert!(json["signature"].is_null(), "stdout is not signed");

    let md = report(&cfg, "md");
    assert_eq!(md.code, 0, "{md}");
    assert!(
        md.stdout
            .starts_with("# Retention report: Example GmbH, app (production)\n"),
        "{md}"
    );
    assert!(
        md.stdout
            .contains("| promise met | logs-30d | delete 30d (Privacy Policy §6) | app:logs |"),
        "{md}"
    );
    assert!(
        md.stdout.contains("| 1 ok | 10 | 0 | 0 | 1 |"),
        "runs, deleted, masked, cascaded, protected: {md}"
    );
    assert!(md.stdout.contains("| promise not met | logs-3d |"), "{md}");
    assert_eq!(
        md.stdout
            .matches(json["verification"]["head"].as_str().unwrap())
            .count(),
        1,
        "the head hash once: {md}"
    );
    // Times to the second, UTC.
    let cutoff = logs["latest_cutoff"].as_str().unwrap();
    assert!(md.stdout.contains(&cutoff[..10]), "{md}");
    assert!(!md.stdout.contains(cutoff), "no microseconds: {md}");
    let csv = report(&cfg, "csv");
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[1].starts_with("logs-30d,promise met,delete,30d,Privacy Policy §6,app:logs,"),
        "{csv}"
    );
    assert!(
        lines[1].contains(",1,0,0,0,0,0,10,0,,1,hold case-7=1,0,,,"),
        "{csv}"
    );
}

#[tokio::test]
async fn report_from_an_export_or_a_read_only_role_with_only_the_public_key() {
    let (env, cfg) = reported_env().await;
    let (log, checkpoint) = export(&env, &cfg);
    let file = env.write("audit.jsonl", &log);
    let (key, file_s, cp) = (
        env.public_key.display().to_string(),
        file.display().to_string(),
        checkpoint.display().to_string(),
    );
    let by_config = report_with(&[
        "-c",
        &cfg.display().to_string(),
        "--checkpoint",
        &cp,
        "--format",
        "json",
    ]);
    assert_eq!(by_config.code, 0, "{by_config}");
    let by_file = report_with(&[
        "--file",
        &file_s,
        "--public-key",
        &key,
        "--checkpoint",
        &cp,
        "--format",
        "json",
    ]);
    assert_eq!(by_file.code, 0, "{by_file}");
    // A role that can only read the log.
    let role = format!("auditor_{}", env.db.name);
    env.db
        .exec(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA retentiond TO {role}; \
             GRANT SELECT ON retentiond.audit_log TO {role};"
        ))
        .await;
    let url = env.db.url.replacen("postgres@", &format!("{role}@"), 1);
    let by_db = report_with(&[
        "--db",
        &url,
        "--public-key",
        &key,
        "--checkpoint",
        &cp,
        "--format",
        "json",
    ]);
    assert_eq!(by_db.code, 0, "{by_db}");

    let strip = |out: &Out| {
        let mut json = out.json();
        for r in json["rules"].as_array_mut().unwrap() {
            // Guards are not in the log: only a config names them.
            r.as_object_mut().unwrap().remove("guards");
        }
        let o = json.as_object_mut().unwrap();
        for k in ["generated", "source", "guards", "organisation", "system"] {
            o.remove(k);
        }
        json
    };
    let expected = strip(&by_config);
    assert_eq!(strip(&by_file), expected, "{by_file}");
    assert_eq!(strip(&by_db), expected, "{by_db}");
    assert_eq!(expected["verification"]["checkpoint"]["seq"], 8);
    assert_eq!(
        expected["verification"]["checkpoint"]["head"],
        expected["verification"]["head"]
    );
    let file_json = by_file.json();
    assert!(file_json["guards"].is_null(), "no config, no guards");
    assert_eq!(promise(&file_json, "logs-30d")["deleted"], 10);
    assert!(
        !by_db.stdout.contains(&role),
        "the report does not print the role or its URL's user"
    );

    // Names from flags; no private key anywhere, so nothing is signed.
    let out_path = env.dir.path().join("r.md");
    let out = report_with(&[
        "--file",
        &file_s,
        "--public-key",
        &key,
        "--organisation",
        "Example GmbH",
        "--system",
        "app",
        "--format",
        "md",
        "--out",
        &out_path.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let md = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        md.starts_with("# Retention report: Example GmbH, app\n"),
        "{md}"
    );
    assert!(md.contains("- This report: not signed"), "{md}");
    assert!(!env.dir.path().join("r.md.sig").exists());
    assert!(
        md.contains("The audit log records a guard only where it kept rows back"),
        "{md}"
    );

    // Without a public key or a source: usage errors.
    let out = report_with(&["--file", &file_s]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("--public-key"), "{out}");
    let out = report_with(&["--public-key", &key]);
    assert_eq!(out.code, 2, "{out}");
}

#[tokio::test]
async fn report_refuses_a_log_that_does_not_verify() {
    let (env, cfg) = reported_env().await;
    let (log, checkpoint) = export(&env, &cfg);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 8);
    let key = env.public_key.display().to_string();
    let out_path = env.dir.path().join("report.html");
    let joined = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    // The first outcome (the rules ran concurrently: its place varies).
    let outcome = lines
        .iter()
        .position(|l| l.contains("\"batches\":"))
        .expect("an outcome");
    let edited = lines[outcome].replacen("\"batches\":", "\"batches\":9", 1);
    assert_ne!(edited, lines[outcome]);
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    let cases = [
        ("edited", {
            let mut l = lines.clone();
            l[outcome] = &edited;
            joined(&l)
        }),
        ("removed", {
            let mut l = lines.clone();
            l.remove(3);
            joined(&l)
        }),
        ("reordered", joined(&swapped)),
        ("truncated", joined(&lines[..6])),
    ];
    for (reason, text) in cases {
        let file = env.write(&format!("{reason}.jsonl"), &text);
        let out = report_with(&[
            "--file",
            &file.display().to_string(),
            "--public-key",
            &key,
            "--checkpoint",
            &checkpoint.display().to_string(),
            "--out",
            &out_path.display().to_string(),
        ]);
        assert_eq!(out.code, 4, "{reason}: {out}");
        assert!(out.stdout.is_empty(), "{reason}: {out}");
        assert!(
            out.stderr
                .contains("the audit log does not verify, so no report was made: seq ")
                && out.stderr.contains(&format!(": {reason}: ")),
            "{reason}: {out}"
        );
        assert!(!out_path.exists(), "{reason}: no report was written");
    }
    // The truncated log verifies on its own: only the checkpoint shows the cut.
    let file = env.write("cut.jsonl", &joined(&lines[..6]));
    let out = report_with(&[
        "--file",
        &file.display().to_string(),
        "--public-key",
        &key,
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.json()["verification"]["range"],
        serde_json::json!([1, 6])
    );

    // With -c, `[audit] checkpoints` is checked too.
    let body = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[audit]\n",
        &format!("[audit]\ncheckpoints = \"{}\"\n", checkpoint.display()),
        1,
    );
    let with_checkpoints = env.write("with-checkpoints.toml", &body);
    let out = report(&with_checkpoints, "json");
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["verification"]["checkpoint"]["seq"], 8, "{out}");

    // The database, through the config: a record changed behind the triggers
    // (logs-30d's outcome; the rules ran concurrently, so its seq varies).
    let seq = env
        .db
        .count(
            "SELECT seq FROM retentiond.audit_log \
             WHERE kind = 'run_outcome' AND rule = 'logs-30d' AND record LIKE '%\"affected\":10,%'",
        )
        .await;
    env.db
        .exec(&format!(
            "ALTER TABLE retentiond.audit_log DISABLE TRIGGER USER; \
             UPDATE retentiond.audit_log SET record = replace(record, '\"affected\":10,', '\"affected\":1,') WHERE seq = {seq}; \
             ALTER TABLE retentiond.audit_log ENABLE TRIGGER USER;"
        ))
        .await;
    let out = report(&cfg, "json");
    assert_eq!(out.code, 4, "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(
        out.stderr.contains(&format!("seq {seq}: edited: ")),
        "{out}"
    );
}

#[tokio::test]
async fn report_carries_cascades_skips_and_both_promises_of_a_changed_keep() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE parents (id int primary key, at timestamptz);
             CREATE TABLE kids (id int primary key, parent_id int REFERENCES parents(id) ON DELETE CASCADE);
             CREATE TABLE pins (id int primary key, parent_id int CONSTRAINT pins_parent_fk REFERENCES parents(id));
             INSERT INTO parents SELECT i, now() - (i * 5 + 2 || ' days')::interval FROM generate_series(1, 10) i;
             INSERT INTO kids SELECT i, i FROM generate_series(1, 10) i;
             INSERT INTO kids SELECT 10 + i, i FROM generate_series(1, 10) i;
             INSERT INTO pins VALUES (1, 9);",
        )
        .await;
    let rule = |keep: &str| {
        format!(
            "[[rules]]\nname = \"parents\"\npolicy_ref = \"§4\"\nstore = \"app\"\ntable = \"parents\"\nage = \"at\"\nkeep = \"{keep}\"\naction = \"delete\"\nmax_fraction = 1.0\n"
        )
    };
    // keep 40d: parents 8, 9 (pinned: skipped) and 10 are due.
    let cfg = env.config(&rule("40d"));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("parents")["affected"], 2, "{run}");
    // keep changes to 20d: parents 4..7 go too.
    let cfg = env.config(&rule("20d"));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("parents")["affected"], 4, "{run}");

    let (log, _) = export(&env, &cfg);
    let file = env.write("audit.jsonl", &log);
    let out = report_with(&[
        "--file",
        &file.display().to_string(),
        "--public-key",
        &env.public_key.display().to_string(),
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    let promises: Vec<&Value> = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["rule"] == "parents")
        .collect();
    assert_eq!(promises.len(), 2, "one per keep: {json:#}");
    let (old, new) = (promises[0], promises[1]);
    assert_eq!(old["keep"], "40d");
    assert_eq!(old["superseded_by"], "delete 20d");
    assert_eq!(old["deleted"], 2);
    assert_eq!(old["cascaded"], serde_json::json!({"public.kids": 4}));
    assert_eq!(old["skipped"], serde_json::json!({"foreign_key": 1}));
    assert_eq!(new["keep"], "20d");
    assert!(new["superseded_by"].is_null());
    assert_eq!(new["deleted"], 4);
    assert_eq!(new["cascaded"], serde_json::json!({"public.kids": 8}));
    assert_eq!(new["skipped"], serde_json::json!({"foreign_key": 1}));
    assert_eq!(new["status"], "promise met");
    assert_ne!(old["config_sha256"], new["config_sha256"]);
    assert_eq!(
        json["configs"].as_array().unwrap().len(),
        2,
        "both configs were in force: {json:#}"
    );
    assert!(new.get("partitions_dropped").unwrap().is_null());

    // With today's config: still both promises, from the records.
    let md = report(&cfg, "md");
    assert_eq!(md.code, 0, "{md}");
    assert!(md.stdout.contains("| parents | delete 40d (§4) |"), "{md}");
    assert!(md.stdout.contains(", then delete 20d |"), "{md}");
    assert!(md.stdout.contains("| parents | delete 20d (§4) |"), "{md}");
    assert!(
        md.stdout
            .contains("- removed by cascade from public.kids: 8\n"),
        "{md}"
    );
    assert!(
        md.stdout
            .contains("- skipped (foreign_key) at the latest run: 1\n"),
        "{md}"
    );
    let csv = report(&cfg, "csv");
    assert!(
        csv.stdout.contains(",public.kids=8,0,,0,foreign_key=1,"),
        "{csv}"
    );
}

/// What each guard and hold kept back, per promise: a hold on a child
/// table is counted for the parent's promise it protects through a
/// cascade, and one row kept by two floors counts for both. From plan to
/// the signed records to a report made with the public key alone.
#[tokio::test]
async fn report_says_what_each_guard_and_hold_kept_back_through_cascades_too() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE accounts (id int primary key, closed_at timestamptz, vip bool);
             CREATE TABLE invoices (id int primary key, account_id int REFERENCES accounts(id) ON DELETE CASCADE, issued_at timestamptz);
             CREATE TABLE disputes (invoice_id int primary key);
             -- 20 accounts closed 100 days ago, 5 of them VIP (held).
             INSERT INTO accounts SELECT i, now() - interval '100 days', i <= 5 FROM generate_series(1, 20) i;
             -- An invoice per account: 3 recent ones (guarded, 1 of them a VIP's),
             -- and invoices 18..20 in dispute (held through the child's own `t`).
             INSERT INTO invoices SELECT i, i, now() - CASE WHEN i IN (1, 8, 9) THEN interval '10 days' ELSE interval '400 days' END FROM generate_series(1, 20) i;
             INSERT INTO disputes VALUES (18), (19), (20);",
        )
        .await;
    let body = r#"[[rules]]
name = "closed-accounts"
store = "app"
table = "accounts"
age = "closed_at"
keep = "30d"
action = "delete"
max_fraction = 1.0

[[guards]]
store = "app"
table = "invoices"
age = "issued_at"
min_keep = "90d"
reason = "tax law"

[[holds]]
name = "vip-review"
store = "app"
table = "accounts"
where = "vip"
reason = "audit of VIP closures"

[[holds]]
name = "disputes"
store = "app"
table = "invoices"
where = "EXISTS (SELECT 1 FROM disputes d WHERE d.invoice_id = t.id)"
reason = "open disputes"
"#;
    let cfg = env.config(body);
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    let planned = plan.rule("closed-accounts");
    // Kept: 1..5 (VIP), 8 and 9 (recent invoice), 18..20 (disputes): 10.
    assert_eq!(planned["protected"], 10, "{plan}");
    assert_eq!(planned["matched"], 10, "{plan}");
    let by = serde_json::json!({
        "hold vip-review": 5,
        "guard invoices.issued_at min_keep 90d": 3,
        "hold disputes": 3,
    });
    assert_eq!(
        planned["protected_by"], by,
        "account 1 is VIP with a recent invoice: counted for both"
    );
    let text = retentiond(&["plan", "-c", &cfg.display().to_string()], &[]);
    assert!(
        text.stdout
            .contains("kept back by guard invoices.issued_at min_keep 90d: 3, hold disputes: 3, hold vip-review: 5"),
        "{text}"
    );
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("closed-accounts")["affected"], 10, "{run}");
    assert_eq!(run.rule("closed-accounts")["protected_by"], by, "{run}");

    let (log, _) = export(&env, &cfg);
    let intent = log
        .lines()
        .find(|l| l.contains("\"run_intent\""))
        .expect("an intent");
    assert!(
        intent.contains("\"protected_by\":{\"guard invoices.issued_at min_keep 90d\":3,\"hold disputes\":3,\"hold vip-review\":5}"),
        "signed with the run: {intent}"
    );
    let file = env.write("audit.jsonl", &log);
    let public_only = |format: &str| {
        report_with(&[
            "--file",
            &file.display().to_string(),
            "--public-key",
            &env.public_key.display().to_string(),
            "--format",
            format,
        ])
    };
    let out = public_only("json");
    assert_eq!(out.code, 0, "{out}");
    let json = out.json();
    assert_eq!(promise(&json, "closed-accounts")["protected_by"], by);
    let disputes = json["holds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "disputes")
        .expect("the hold on invoices");
    assert_eq!(
        disputes["protected"],
        serde_json::json!({"closed-accounts": 3}),
        "a hold on the child protects the parent's promise: {json:#}"
    );
    assert_eq!(disputes["rules"], serde_json::json!(["closed-accounts"]));
    let md = public_only("md");
    assert!(
        md.stdout
            .contains("- kept back by hold disputes at the latest run: 3\n"),
        "{md}"
    );
    // With the config, guards are listed with what each kept back.
    let with_config = report(&cfg, "json").json();
    assert_eq!(
        with_config["guards"][0]["protected"],
        serde_json::json!({"closed-accounts": 3}),
        "{with_config:#}"
    );
    let html = public_only("html");
    assert!(html.stdout.contains("Kept back by"), "{html}");
}

#[tokio::test]
async fn report_signature_verifies_and_fails_after_the_report_is_edited() {
    let (env, cfg) = reported_env().await;
    let key = env.public_key.display().to_string();
    let out_path = env.dir.path().join("report.json");
    let out = report_with(&[
        "-c",
        &cfg.display().to_string(),
        "--format",
        "json",
        "--out",
        &out_path.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let sig = env.dir.path().join("report.json.sig");
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64, "raw Ed25519");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    let key_id = retentiond::audit::key::key_id(
        &retentiond::audit::key::load_public(&env.public_key).unwrap(),
    );
    assert_eq!(json["signature"]["key_id"], key_id.as_str());
    assert_eq!(json["signature"]["file"], "report.json.sig");

    let verify = |report: &Path| {
        retentiond(
            &[
                "report",
                "verify",
                "--public-key",
                &key,
                &report.display().to_string(),
            ],
            &[],
        )
    };
    let ok = verify(&out_path);
    assert_eq!(ok.code, 0, "{ok}");
    assert!(ok.stdout.starts_with("ok: "), "{ok}");
    assert!(ok.stdout.contains(&key_id), "{ok}");
    // Plain Ed25519 over the file's bytes: any library checks it.
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom cryptography.hazmat.primitives.serialization import load_pem_public_key\n\
             k = load_pem_public_key(open(sys.argv[1], 'rb').read())\n\
             k.verify(open(sys.argv[2], 'rb').read(), open(sys.argv[3], 'rb').read())\nprint('ok')",
        ])
        .arg(&env.public_key)
        .arg(&sig)
        .arg(&out_path)
        .output()
        .expect("python3 (scripts/test installs it with cryptography)");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );

    let text = std::fs::read_to_string(&out_path).unwrap();
    std::fs::write(
        &out_path,
        text.replacen("\"deleted\": 10", "\"deleted\": 1", 1),
    )
    .unwrap();
    let bad = verify(&out_path);
    assert_eq!(bad.code, 4, "{bad}");
    assert!(bad.stdout.starts_with("invalid: "), "{bad}");
    // Another key does not verify it either.
    let other = retentiond::audit::key::generate(&env.dir.path().join("other")).unwrap();
    std::fs::write(&out_path, &text).unwrap();
    let out = retentiond(
        &[
            "report",
            "verify",
            "--public-key",
            &other.1.display().to_string(),
            &out_path.display().to_string(),
            &sig.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 4, "{out}");

    // An export signed with an explicit key (the auditor's own, say).
    let (log, _) = export(&env, &cfg);
    let file = env.write("audit.jsonl", &log);
    let html = env.dir.path().join("r.html");
    let out = report_with(&[
        "--file",
        &file.display().to_string(),
        "--public-key",
        &key,
        "--sign-with",
        &other.0.display().to_string(),
        "--out",
        &html.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let out = retentiond(
        &[
            "report",
            "verify",
            "--public-key",
            &other.1.display().to_string(),
            &html.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .contains(&format!("signed by key id {}", other.2)));
    let out = report_with(&[
        "--file",
        &file.display().to_string(),
        "--public-key",
        &key,
        "--sign-with",
        &other.0.display().to_string(),
    ]);
    assert_eq!(out.code, 2, "--sign-with needs --out: {out}");
}

#[test]
fn report_help_has_examples_and_exit_codes() {
    for cmd in [&["report", "--help"][..], &["report", "verify", "--help"]] {
        let out = retentiond(cmd, &[]);
        assert_eq!(out.code, 0, "{cmd:?}: {out}");
        assert!(
            out.stdout.contains("Examples:\n  retentiond report"),
            "{out}"
        );
        assert!(out.stdout.contains("Exit codes:\n  0  ok"), "{out}");
    }
}

/// Runs headless Chromium on a file with extra flags; returns its output.
fn chromium(page: &Path, flags: &[&str]) -> std::process::Output {
    let chromium = std::env::var("RETENTIOND_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(flags)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start {chromium} ({e}); scripts/test installs Debian's chromium")
        })
}

fn assert_self_contained(html: &str) {
    for forbidden in [
        "<script", "<link", " src=", "url(", "@import", "http://", "https://",
    ] {
        let allowed = forbidden == "http://"
            && html.matches(forbidden).count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
        assert!(
            allowed || !html.contains(forbidden),
            "the report must be self-contained, found {forbidden}"
        );
    }
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
    assert_self_contained(&html);
    assert!(
        html.contains("Logs &lt;kept&gt; 30 days &amp; then deleted"),
        "text is escaped"
    );
    assert_eq!(
        html.matches("<svg").count(),
        6,
        "two charts per promise: removed per day, compliance lag"
    );
    for label in [
        "date (UTC)",
        "rows deleted per day",
        "lag (",
        "Compliance lag, most per day",
    ] {
        assert!(html.contains(label), "charts have labelled axes: {label}");
    }

    let head = html
        .split("<dd class=\"hash\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the head in the evidence");
    assert_eq!(head.len(), 64);
    assert_eq!(html.matches(head).count(), 1, "the head hash once");
    assert!(
        env.dir.path().join("report.html.sig").exists(),
        "-c signs with the config's key"
    );

    let rendered = chromium(&out_path, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        dom.contains("<table id=\"rules\">"),
        "chromium rendered no rule table:\n{dom}\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    for rule in ["logs-30d", "logs-3d", "session-ips"] {
        assert!(
            dom.contains(&format!("<td class=\"rule\">{rule}<br>")),
            "rule {rule} missing from the rendered table"
        );
    }
    assert!(
        dom.contains("class=\"badge met\">promise met</span>")
            && dom.contains("class=\"badge notmet\">promise not met</span>")
    );
    // It prints: Chromium's own PDF of it has pages.
    let pdf = env.dir.path().join("report.pdf");
    let printed = chromium(
        &out_path,
        &[
            &format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer",
        ],
    );
    let bytes = std::fs::read(&pdf)
        .unwrap_or_else(|e| panic!("no PDF ({e}): {}", String::from_utf8_lossy(&printed.stderr)));
    assert!(bytes.starts_with(b"%PDF"), "a PDF");
}

/// A month of a realistic deployment, as signed records: four promises run
/// every six hours, one of them failing for three days (its lag grows), one
/// whose keep changes mid-month, a legal hold, cascades and blob deletes.
fn month_of_records(signer: &retentiond::audit::Signer) -> String {
    use chrono::{Duration, TimeZone, Utc};
    use retentiond::audit::events::{Counts, Planned, RuleRun, RunIntent, RunOutcome};
    use retentiond::audit::record::{format_ts, seal, Event, GENESIS};
    use std::collections::BTreeMap;

    let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let mut lines = String::new();
    let mut prev = GENESIS.to_string();
    let mut seq = 0;
    let mut append = |event: Event, ts: chrono::DateTime<Utc>| {
        seq += 1;
        let sealed = seal(&event, seq, ts, &prev, signer).unwrap();
        prev = sealed.hash.clone();
        lines.push_str(&sealed.line);
        lines.push('\n');
    };
    let fields = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let (sha_a, sha_b) = (
        "5f1d2c9a7be04e1c3a8d6f0b2e4c6a8d0f1e3c5a7b9d1f3e5c7a9b1d3f5e7c9a",
        "a94b6e2d0c8f1a3e5d7b9c1e3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1b",
    );
    let loaded = |sha: &str| Event {
        kind: "config_loaded",
        fields: fields(serde_json::json!({
            "config_sha256": sha, "config_path": "/etc/retentiond/retention.toml",
            "host": "retentiond-7d9f8-x2k4q", "command": "serve",
            "audit_rights": {"update": false, "delete": false, "truncate": false, "disable_triggers": false}})),
    };
    append(loaded(sha_a), start + Duration::seconds(5));
    append(
        Event {
            kind: "hold_added",
            fields: fields(serde_json::json!({
                "hold": "dispute-2291", "store": "app", "target": "accounts",
                "where": "id IN (SELECT account_id FROM legal_holds)",
                "reason": "Litigation hold, dispute 2291", "config_sha256": sha_a})),
        },
        start + Duration::seconds(6),
    );
    let policy = "PersonaPlex Privacy Policy";
    let mut run_no = 0u64;
    for slot in 0..(30 * 4) {
        let at = start + Duration::hours(6 * slot + 2);
        let day = slot / 4;
        let sha = if day < 15 { sha_a } else { sha_b };
        if slot == 15 * 4 {
            append(loaded(sha_b), at - Duration::minutes(30));
        }
        let accounts = if day < 15 {
            (
                "closed-accounts",
                "app",
                "accounts",
                "delete",
                "2y",
                Duration::days(730),
            )
        } else {
            (
                "closed-accounts",
                "app",
                "accounts",
                "delete",
                "3y",
                Duration::days(1095),
            )
        };
        let rules = [
            (
                "no-audio-at-rest",
                "media",
                "audio/",
                "delete",
                "1h",
                Duration::hours(1),
            ),
            (
                "session-logs-30d",
                "app",
                "session_logs",
                "delete",
                "30d",
                Duration::days(30),
            ),
            (
                "anonymize-session-ips-30d",
                "app",
                "sessions",
                "mask",
                "30d",
                Duration::days(30),
            ),
            accounts,
            (
                "closed-accounts-erase-email-2y",
                "app",
                "accounts",
                "mask",
                "2y",
                Duration::days(730),
            ),
        ];
        for (i, (rule, store, target, action, keep, keep_for)) in rules.into_iter().enumerate() {
            let daily = rule.starts_with("closed-accounts");
            if daily && slot % 4 != 0 {
                continue;
            }
            run_no += 1;
            let t0 = at + Duration::seconds(20 * i as i64);
            let cutoff = t0 - keep_for;
            let outage = rule == "no-audio-at-rest" && (36..48).contains(&slot);
            let after_outage = rule == "no-audio-at-rest" && slot == 48;
            // The last two days a safety check refuses the email mask.
            let refused = rule == "closed-accounts-erase-email-2y" && day >= 28;
            // Items became due since the last run; in the outage, since it began.
            let overdue = if outage || after_outage {
                Duration::hours(6 * (slot - 35))
            } else if refused {
                Duration::days(day - 26)
            } else if daily {
                Duration::days(1)
            } else {
                Duration::hours(6)
            };
            let wave = (slot * 37 + i as i64 * 11) % 23;
            let affected: i64 = match rule {
                "session-logs-30d" => 180 + wave * 9 + if day % 7 == 5 { 240 } else { 0 },
                "anonymize-session-ips-30d" => 60 + wave * 4,
                "closed-accounts" => (wave % 5) + 1,
                _ if refused => 0,
                "closed-accounts-erase-email-2y" => (wave % 3) + 1,
                _ if outage => 0,
                _ if slot == 48 => 212,
                _ => wave % 4,
            };
            let run = RuleRun {
                run_id: format!("00000000-0000-4000-8000-{run_no:012}"),
                rule: rule.into(),
                store: store.into(),
                target: target.into(),
                action: action.into(),
                keep: keep.into(),
                cutoff: Some(format_ts(cutoff)),
                description: None,
                policy_ref: Some(format!(
                    "{policy} {}",
                    match (rule, keep) {
                        ("no-audio-at-rest", _) =>
                            "2.1: audio is processed in real time, never stored",
                        ("session-logs-30d", _) => "6: session logs are kept 30 days",
                        ("anonymize-session-ips-30d", _) =>
                            "2.2: IP addresses are anonymized after 30 days",
                        ("closed-accounts", "2y") =>
                            "6: account data is kept 2 years after closure",
                        ("closed-accounts", _) =>
                            "6 (amended 2026-11-15): account data is kept 3 years after closure",
                        _ => "6: a closed account's email is erased after 2 years",
                    }
                )),
                started: Some(format_ts(t0)),
                ..RuleRun::default()
            };
            let cascaded: BTreeMap<String, i64> = match rule {
                "session-logs-30d" => {
                    BTreeMap::from([("public.session_events".into(), affected * 3)])
                }
                "closed-accounts" => BTreeMap::from([
                    ("public.billing_addresses".into(), affected),
                    ("public.sessions".into(), affected * 14),
                ]),
                _ => BTreeMap::new(),
            };
            let protected = if rule == "closed-accounts" { 3 } else { 0 };
            let protected_by: BTreeMap<String, i64> = if protected > 0 {
                BTreeMap::from([("hold dispute-2291".into(), protected)])
            } else {
                BTreeMap::new()
            };
            append(
                RunIntent {
                    run: run.clone(),
                    planned: Planned {
                        matched: match (outage, refused) {
                            (true, _) => 40,
                            (_, true) => 31_200,
                            _ => affected,
                        },
                        protected,
                        protected_by: protected_by.clone(),
                        total: 50_000,
                        batches: 1,
                        cascaded: cascaded.clone(),
                        skipped: BTreeMap::new(),
                        oldest: Some(format_ts(cutoff - overdue)),
                        ..Planned::default()
                    },
                    config_sha256: sha.into(),
                    host: "retentiond-7d9f8-x2k4q".into(),
                }
                .event(),
                t0,
            );
            let blob = rule == "no-audio-at-rest";
            append(
                RunOutcome {
                    run,
                    outcome: match (outage, refused) {
                        (true, _) => "failed",
                        (_, true) => "refused",
                        _ => "ok",
                    }
                    .into(),
                    reason: match (outage, refused) {
                        (true, _) => Some("media: DeleteObjects: service unavailable (503 SlowDown), retries exhausted".into()),
                        (_, true) => Some("would mask 31200 of 50000 rows (62%), more than max_fraction 0.5; rerun with --allow-large if intended".into()),
                        _ => None,
                    },
                    counts: Counts {
                        matched: Some(affected),
                        affected,
                        protected: Some(protected),
                        protected_by,
                        batches: 1,
                        cascaded,
                        skipped: if blob && slot > 60 {
                            BTreeMap::from([("modified".into(), 1)])
                        } else {
                            BTreeMap::new()
                        },
                        objects: blob.then_some(affected),
                        bytes: blob.then_some(affected as u64 * 3_400_000),
                        ..Counts::default()
                    },
                    finished: format_ts(t0 + Duration::seconds(4)),
                }
                .event(),
                t0 + Duration::seconds(4),
            );
        }
    }
    lines
}

#[test]
fn report_html_of_a_month_renders_and_is_the_readme_screenshot() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _, _) = retentiond::audit::key::generate(&dir.path().join("keys")).unwrap();
    let signer = retentiond::audit::Signer::load(&private).unwrap();
    let log = dir.path().join("audit.jsonl");
    std::fs::write(&log, month_of_records(&signer)).unwrap();
    let html = dir.path().join("report.html");
    // Run in the directory, so the report names the files as an auditor would.
    let run = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "report",
            "--file",
            "audit.jsonl",
            "--public-key",
            "keys/signing.pub.pem",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--organisation",
            "PersonaPlex SAS",
            "--system",
            "personaplex-prod (eu-west-3)",
            "--sign-with",
            "keys/signing.pem",
            "--out",
            "report.html",
        ])
        .env_remove("RETENTIOND_CONFIG")
        .output()
        .expect("run retentiond");
    let out = Out {
        code: run.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
    };
    assert_eq!(out.code, 0, "{out}");
    let text = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&text);
    assert_eq!(
        text.matches("<svg").count(),
        12,
        "two charts for each of 6 promises"
    );
    assert!(text.contains("2026-11-15"), "dates on the axis");
    assert!(text.contains("lag (days)"), "the outage's lag is in days");

    let png = dir.path().join("report.png");
    let shot = chromium(
        &html,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,2000",
            "--force-device-scale-factor=1",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    assert!(bytes.len() > 50_000, "a page with content, not a blank one");
    // `RETENTIOND_UPDATE_SCREENSHOT=1` refreshes the README's image.
    if std::env::var_os("RETENTIOND_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report-screenshot.png");
        std::fs::write(docs, &bytes).unwrap();
    }
}
