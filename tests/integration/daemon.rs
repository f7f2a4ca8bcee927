//! `retentiond serve` as an operator sees it: schedules, endpoints, two
//! replicas, kill -9, SIGTERM, SIGHUP.

use crate::chain;
use crate::util::*;
use retentiond::audit::key::load_public;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(cfg: &std::path::Path, log_name: &str, grace: &str) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = cfg.with_file_name(log_name);
        let child = Command::new(BIN)
            .args([
                "serve",
                "-c",
                &cfg.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--grace-period",
                grace,
            ])
            .args(["--log-format", "json"])
            .env("RETENTIOND_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start serve");
        Daemon { child, port, log }
    }

    /// GET `path` with a raw HTTP/1.1 request: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            status,
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while self.get("/readyz").map(|r| r.0) != Some(200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never ready:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM, then wait: (exit code, how long it took).
    fn terminate(mut self) -> (Option<i32>, Duration, String) {
        let start = Instant::now();
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        (status.code(), start.elapsed(), self.logs())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rule(name: &str, table: &str, schedule: &str, extra: &str) -> String {
    format!("[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"at\"\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 1.0\nschedule = \"{schedule}\"\n{extra}\n")
}

async fn wait_for(env: &Env, sql: &str, what: &str) {
    let start = Instant::now();
    while env.db.count(sql).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BIG: &str = "CREATE TABLE big (id bigserial primary key, at timestamptz not null, pad text);
     INSERT INTO big (at, pad) SELECT now() - interval '40 days', repeat('x', 50) FROM generate_series(1, 200000);
     INSERT INTO big (at, pad) SELECT now(), 'young' FROM generate_series(1, 1000);";

/// (run_id, started, finished) of every finished run of `rule`, in order.
fn runs(records: &[Value], rule: &str) -> Vec<(String, String, String)> {
    let intents = chain::of(records, "run_intent", rule);
    chain::of(records, "run_outcome", rule)
        .into_iter()
        .filter_map(|o| {
            let i = intents.iter().find(|i| i["run_id"] == o["run_id"])?;
            Some((
                o["run_id"].as_str()?.to_string(),
                i["started"].as_str()?.to_string(),
                o["finished"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn daemon_runs_on_schedule_and_serves_health_ready_metrics() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t SELECT i, now() - (i * 2 || ' days')::interval FROM generate_series(1, 30) i;").await;
    let cfg = env.config(&rule("t-30d", "t", "* * * * * *", ""));
    let d = Daemon::start(&cfg, "serve.log", "5s");
    let start = Instant::now();
    while d.get("/healthz").map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/healthz never answered:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.wait_ready();
    wait_for(
        &env,
        "SELECT count(*) FROM retentiond.audit_log WHERE kind = 'run_outcome'",
        "a scheduled run",
    )
    .await;
    // The outcome record is written before the run's metrics are updated:
    // wait for the metrics to catch up.
    let start = Instant::now();
    let metrics = loop {
        let (status, metrics) = d.get("/metrics").unwrap();
        assert_eq!(status, 200);
        if metrics.contains("retentiond_rows_deleted_total{rule=\"t-30d\"} 16")
            || start.elapsed() > Duration::from_secs(10)
        {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in [
        "retentiond_rows_deleted_total{rule=\"t-30d\"} 16",
        "retentiond_runs_total{outcome=\"ok\",rule=\"t-30d\"}",
        "retentiond_run_duration_seconds_bucket{rule=\"t-30d\",le=\"+Inf\"}",
        "retentiond_last_success_timestamp_seconds{rule=\"t-30d\"}",
        "retentiond_overdue_items{rule=\"t-30d\"} 0",
        "retentiond_compliance_lag_seconds{rule=\"t-30d\"} 0",
        "retentiond_ready 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    let (code, took, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        logs.contains("\"message\":\"Rule run finished.\""),
        "one JSON event per rule run:\n{logs}"
    );
    assert!(!logs.contains("203.0.113"), "logs carry no row contents");
}

#[tokio::test]
async fn daemon_two_replicas_never_run_a_rule_at_once_and_kill9_is_taken_over() {
    let env = Env::new().await;
    env.db.exec(BIG).await;
    let cfg = env.config(&rule("big", "big", "* * * * * *", "batch_size = 20"));
    // A starts alone and claims the rule; B comes up while A is purging.
    let a = Daemon::start(&cfg, "a.log", "10s");
    a.wait_ready();
    // Wait until one of them is deleting, then kill -9 whichever holds the rule.
    wait_for(
        &env,
        "SELECT (count(*) < 195000)::int::int8 FROM big",
        "the purge to start",
    )
    .await;
    // B ticks every second but cannot claim the rule while A holds it.
    let b = Daemon::start(&cfg, "b.log", "10s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a = a;
    assert!(
        env.db.count("SELECT count(*) FROM big").await > 20_000,
        "A is still purging when it is killed"
    );
    a.child.kill().unwrap();
    let _ = a.child.wait();
    wait_for(
        &env,
        "SELECT (count(*) = 1000)::int::int8 FROM big",
        "the surviving replica to finish the purge",
    )
    .await;
    // Let B run a few more (empty) scheduled runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _, logs) = b.terminate();
    assert_eq!(code, Some(0), "{logs}");

    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let mut spans = runs(&records, "big");
    let abandoned: Vec<&Value> = chain::of(&records, "run_outcome", "big")
        .into_iter()
        .filter(|o| o["outcome"] == "abandoned")
        .collect();
    spans.sort_by(|x, y| x.1.cmp(&y.1));
    assert!(spans.len() >= 3, "several runs: {spans:?}");
    for pair in spans.windows(2) {
        // An abandoned run's "finished" is when the survivor noticed it.
        let first_abandoned = abandoned.iter().any(|o| o["run_id"] == pair[0].0.as_str());
        if !first_abandoned {
            assert!(
                pair[0].2 <= pair[1].1,
                "runs overlap: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    let deleted: i64 = chain::of(&records, "run_outcome", "big")
        .iter()
        .filter_map(|o| o["counts"]["affected"].as_i64())
        .sum();
    // The killed replica's batches are counted by its `abandoned` outcome,
    // which the survivor read from the run's progress row.
    assert_eq!(
        deleted, 200_000,
        "every removed row is counted once, the killed run's included"
    );
    // If A was mid-run when killed, its run is closed as abandoned by B.
    let unfinished: Vec<&Value> = chain::of(&records, "run_intent", "big")
        .into_iter()
        .filter(|i| {
            !chain::of(&records, "run_outcome", "big")
                .iter()
                .any(|o| o["run_id"] == i["run_id"])
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "every intent has an outcome (abandoned ones included): {unfinished:?}"
    );
    assert_eq!(abandoned.len(), 1, "B recorded A's killed run as abandoned");
    assert!(abandoned[0]["reason"]
        .as_str()
        .unwrap()
        .contains("stopped before writing an outcome"));
}

#[tokio::test]
async fn daemon_sigterm_during_a_long_purge_exits_within_grace_and_records_interrupted() {
    let env = Env::new().await;
    env.db.exec(BIG).await;
    let cfg = env.config(&rule("big", "big", "* * * * * *", "batch_size = 20"));
    let d = Daemon::start(&cfg, "serve.log", "5s");
    d.wait_ready();
    wait_for(
        &env,
        "SELECT (count(*) < 195000)::int::int8 FROM big",
        "the purge to start",
    )
    .await;
    let (code, took, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcomes = chain::of(&records, "run_outcome", "big");
    let last = outcomes.last().expect("an outcome");
    assert_eq!(last["outcome"], "interrupted", "{last}");
    let affected: i64 = outcomes
        .iter()
        .filter_map(|o| o["counts"]["affected"].as_i64())
        .sum();
    assert_eq!(
        env.db.count("SELECT count(*) FROM big").await,
        201_000 - affected,
        "no half-committed batch"
    );
}

#[tokio::test]
async fn daemon_reloads_on_sighup_and_keeps_the_old_config_when_the_new_is_bad() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE a (id int primary key, at timestamptz); INSERT INTO a SELECT i, now() - interval '40 days' FROM generate_series(1, 5) i;
         CREATE TABLE b (id int primary key, at timestamptz); INSERT INTO b SELECT i, now() - interval '40 days' FROM generate_series(1, 5) i;",
    )
    .await;
    let cfg = env.config(&rule("a", "a", "* * * * * *", ""));
    let d = Daemon::start(&cfg, "serve.log", "5s");
    d.wait_ready();
    wait_for(&env, "SELECT (count(*) = 0)::int::int8 FROM a", "rule a").await;
    std::fs::write(
        &cfg,
        format!(
            "{}{}{}",
            env.header(),
            rule("a", "a", "* * * * * *", ""),
            rule("b", "b", "* * * * * *", "")
        ),
    )
    .unwrap();
    d.signal("-HUP");
    wait_for(
        &env,
        "SELECT (count(*) = 0)::int::int8 FROM b",
        "rule b after the reload",
    )
    .await;
    std::fs::write(
        &cfg,
        format!(
            "{}[[rules]]\nname = \"broken\"\nkeep = \"soon\"\n",
            env.header()
        ),
    )
    .unwrap();
    d.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        d.get("/readyz").map(|r| r.0),
        Some(200),
        "still serving the old config"
    );
    let (code, _, logs) = d.terminate();
    assert_eq!(code, Some(0));
    assert!(logs.contains("Reload refused"), "{logs}");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "config_loaded")
            .count(),
        2,
        "start and the good reload"
    );
}

#[tokio::test]
async fn daemon_survives_a_database_restart_mid_run() {
    let pc = crate::pg::PrivateCluster::start();
    let url = pc.url("postgres");
    let connect = || {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
    };
    let admin = connect().await.unwrap();
    sqlx::raw_sql(BIG).execute(&admin).await.unwrap();
    retentiond::audit::log::migrate(&admin).await.unwrap();
    admin.close().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public, _) = retentiond::audit::key::generate(&dir.path().join("keys")).unwrap();
    let cfg = dir.path().join("retention.toml");
    let header = format!("[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"{url}\"\n", key.display());
    std::fs::write(
        &cfg,
        format!(
            "{header}{}",
            rule("big", "big", "* * * * * *", "batch_size = 20")
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg, "serve.log", "5s");
    d.wait_ready();
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM big")
        .fetch_one(&connect().await.unwrap())
        .await
        .unwrap()
        > 195_000
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the purge never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pc.down();
    let start = Instant::now();
    while d.get("/readyz").map(|r| r.0) != Some(503) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never reported not ready:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon must not exit on an outage:\n{}",
        d.logs()
    );
    pc.up();
    d.wait_ready();
    let pool = connect().await.unwrap();
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM big")
        .fetch_one(&pool)
        .await
        .unwrap()
        != 1000
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the purge never finished after the restart:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    let records = chain::assert_valid(&pool, &load_public(&public).unwrap()).await;
    let outcomes = chain::of(&records, "run_outcome", "big");
    let intents = chain::of(&records, "run_intent", "big");
    assert!(
        intents
            .iter()
            .all(|i| outcomes.iter().any(|o| o["run_id"] == i["run_id"])),
        "the run cut by the restart was closed (abandoned or failed)"
    );
    let cut: Vec<&&Value> = outcomes.iter().filter(|o| o["outcome"] != "ok").collect();
    assert!(
        !cut.is_empty(),
        "the run the restart cut short is recorded as such: {outcomes:?}"
    );
    assert!(
        cut.iter().any(|o| o["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("lost the rule's claim")
            || o["outcome"] == "abandoned"
            || o["outcome"] == "failed"),
        "{cut:?}"
    );
    assert!(
        outcomes.iter().any(|o| o["outcome"] == "ok"),
        "a later run completed"
    );
}

/// Once a year (January 1st): never due while a test runs.
const YEARLY: &str = "0 0 0 1 1 *";

/// The value of `series` (name and labels, as printed) in a scrape.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the daemon's log contains `needle`.
async fn wait_log(d: &Daemon, needle: &str) {
    let start = Instant::now();
    while !d.logs().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never logged {needle}:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn daemon_runs_overdue_rules_at_startup_but_not_recently_run_ones() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE y (id int primary key, at timestamptz);
             INSERT INTO y SELECT i, now() - interval '40 days' FROM generate_series(1, 5) i;
             INSERT INTO y VALUES (100, now());
             CREATE TABLE r (id int primary key, at timestamptz);
             INSERT INTO r SELECT i, now() - interval '40 days' FROM generate_series(1, 3) i;",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule("never-ran", "y", YEARLY, ""),
        rule("recent", "r", YEARLY, "")
    ));
    // `recent` succeeded a moment ago; more of its rows fall due after.
    let out = json_cmd("run", &cfg, &["--rule", "recent"]);
    assert_eq!(out.code, 0, "{out}");
    env.db
        .exec("INSERT INTO r SELECT i, now() - interval '40 days' FROM generate_series(11, 14) i;")
        .await;
    let d = Daemon::start(&cfg, "serve.log", "5s");
    wait_for(
        &env,
        "SELECT (count(*) = 1)::int::int8 FROM y",
        "the start-up run of the rule that never ran",
    )
    .await;
    wait_for(
        &env,
        "SELECT count(*) FROM retentiond.audit_log WHERE kind = 'run_outcome' AND rule = 'never-ran'",
        "its outcome record",
    )
    .await;
    d.wait_ready();
    wait_log(&d, "\"message\":\"Start-up plan done.\"").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (code, _, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("Overdue at start-up: running it now."),
        "{logs}"
    );

    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcomes = chain::of(&records, "run_outcome", "never-ran");
    assert_eq!(outcomes.len(), 1, "run once: {outcomes:?}");
    assert_eq!(outcomes[0]["outcome"], "ok", "{}", outcomes[0]);
    assert_eq!(outcomes[0]["counts"]["affected"], 5, "{}", outcomes[0]);
    assert_eq!(
        chain::of(&records, "run_intent", "recent").len(),
        1,
        "the recently run rule was not run at start-up (only the CLI's run)"
    );
    assert_eq!(
        env.db.count("SELECT count(*) FROM r").await,
        4,
        "its due rows wait for its schedule"
    );
}

#[tokio::test]
async fn daemon_first_ready_scrape_shows_every_rules_plan_numbers() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE p (id int primary key, at timestamptz);
             INSERT INTO p SELECT i, now() FROM generate_series(1, 2) i;
             CREATE TABLE q (id int primary key, at timestamptz);
             INSERT INTO q SELECT i, now() FROM generate_series(1, 2) i;",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule("p-30d", "p", YEARLY, ""),
        rule("q-30d", "q", YEARLY, "")
    ));
    // Both ran ok just now (so neither runs at start-up); then 7 of p's
    // rows fall due, the oldest 10 days past its cutoff.
    let out = json_cmd("run", &cfg, &[]);
    assert_eq!(out.code, 0, "{out}");
    env.db
        .exec(
            "INSERT INTO p SELECT i, now() - interval '40 days' + (i || ' minutes')::interval FROM generate_series(10, 16) i;",
        )
        .await;
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    let ts = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    let p = plan.rule("p-30d");
    assert_eq!(p["matched"], 7, "{p}");
    let plan_lag = ts(&p["cutoff"]) - ts(&p["oldest"]);
    assert_eq!(plan.rule("q-30d")["matched"], 0);

    let d = Daemon::start(&cfg, "serve.log", "5s");
    d.wait_ready();
    let (status, metrics) = d.get("/metrics").unwrap();
    assert_eq!(status, 200);
    let get = |series: &str| {
        metric(&metrics, series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    assert_eq!(get("retentiond_overdue_items{rule=\"p-30d\"}"), 7.0);
    assert_eq!(get("retentiond_overdue_items{rule=\"q-30d\"}"), 0.0);
    let lag = get("retentiond_compliance_lag_seconds{rule=\"p-30d\"}") as i64;
    assert!(
        (lag - plan_lag).abs() <= 30 && (lag - 10 * 86_400 + 600).abs() <= 60,
        "lag {lag}s, the plan's {plan_lag}s"
    );
    assert_eq!(
        get("retentiond_compliance_lag_seconds{rule=\"q-30d\"}"),
        0.0
    );
    for rule in ["p-30d", "q-30d"] {
        assert_eq!(
            get(&format!("retentiond_rule_plan_failed{{rule=\"{rule}\"}}")),
            0.0
        );
        // A yearly schedule: 365 or 366 days between slots.
        let interval = get(&format!(
            "retentiond_rule_interval_seconds{{rule=\"{rule}\"}}"
        ));
        assert!(
            (365.0 * 86_400.0..=366.0 * 86_400.0).contains(&interval),
            "{interval}"
        );
        assert_eq!(
            get(&format!("retentiond_rows_deleted_total{{rule=\"{rule}\"}}")),
            0.0
        );
        let last = get(&format!(
            "retentiond_last_success_timestamp_seconds{{rule=\"{rule}\"}}"
        ));
        assert!(
            (chrono::Utc::now().timestamp() as f64 - last).abs() < 120.0,
            "the CLI's run is the last success: {last}"
        );
        assert!(
            get(&format!(
                "retentiond_last_cutoff_timestamp_seconds{{rule=\"{rule}\"}}"
            )) > 0.0
        );
    }
    let (code, _, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert_eq!(
        env.db.count("SELECT count(*) FROM p").await,
        9,
        "planned, not run"
    );
}

#[tokio::test]
async fn daemon_two_replicas_starting_together_run_an_overdue_rule_once() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE o (id int primary key, at timestamptz);
             INSERT INTO o SELECT i, now() - interval '40 days' FROM generate_series(1, 20000) i;
             INSERT INTO o VALUES (0, now());",
        )
        .await;
    let cfg = env.config(&rule("o", "o", YEARLY, "batch_size = 500"));
    let a = Daemon::start(&cfg, "a.log", "5s");
    let b = Daemon::start(&cfg, "b.log", "5s");
    wait_for(
        &env,
        "SELECT (count(*) = 1)::int::int8 FROM o",
        "the start-up run",
    )
    .await;
    for d in [&a, &b] {
        d.wait_ready();
        wait_log(d, "\"message\":\"Start-up plan done.\"").await;
    }
    // Whichever replica did not run it has had time to decide.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code_a, _, logs_a) = a.terminate();
    let (code_b, _, logs_b) = b.terminate();
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{logs_a}\n{logs_b}");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let intents = chain::of(&records, "run_intent", "o");
    assert_eq!(intents.len(), 1, "one run: {intents:?}\n{logs_a}\n{logs_b}");
    let outcomes = chain::of(&records, "run_outcome", "o");
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0]["outcome"], "ok");
    assert_eq!(outcomes[0]["counts"]["affected"], 20000);
}

#[tokio::test]
async fn daemon_startup_plan_of_a_store_that_is_down_shows_the_failure() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t VALUES (1, now());",
        )
        .await;
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = env.config(&format!(
        "[stores.gone]\ntype = \"postgres\"\nurl = \"postgres://nobody:x@127.0.0.1:{port}/nothing\"\n\n{}{}",
        rule("t-30d", "t", YEARLY, ""),
        rule("gone-30d", "t", YEARLY, "").replace("store = \"app\"", "store = \"gone\"")
    ));
    let d = Daemon::start(&cfg, "serve.log", "1s");
    let start = Instant::now();
    let metrics = loop {
        if let Some((200, m)) = d.get("/metrics") {
            // Both plans done: the down store's failed, the other's set
            // (under load either may finish first).
            if m.contains("retentiond_rule_plan_failed{rule=\"gone-30d\"} 1")
                && m.contains("retentiond_overdue_items{rule=\"t-30d\"}")
            {
                break m;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the down store's rule never showed its failed plan:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("retentiond_overdue_items{rule=\"t-30d\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("retentiond_overdue_items{rule=\"gone-30d\"}"),
        "no made-up 0 for the rule that could not be planned:\n{metrics}"
    );
    assert_eq!(
        d.get("/readyz").map(|r| r.0),
        Some(503),
        "not ready while a store is down"
    );
    let (code, _, logs) = d.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("Start-up plan failed."), "{logs}");
}
