//! Delete rules against a real PostgreSQL: boundaries, filters, guards and
//! cascades, caps, idempotence, interruption.

use crate::chain;
use crate::util::*;
use retentiond::audit::key::load_public;

fn rule(name: &str, table: &str, age: &str, keep: &str, extra: &str) -> String {
    format!("[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"{age}\"\nkeep = \"{keep}\"\naction = \"delete\"\n{extra}\n")
}

#[tokio::test]
async fn delete_boundary_exactly_at_cutoff_expires_null_never_does() {
    let env = Env::new().await;
    // retentiond must read `timestamp without time zone` as UTC whatever the
    // database's default time zone says.
    env.db
        .exec(&format!(
            "ALTER DATABASE {} SET timezone TO 'America/New_York'",
            env.db.name
        ))
        .await;
    env.db
        .exec(
            "CREATE TABLE ev (id int primary key, at timestamptz, naive timestamp);
         INSERT INTO ev VALUES
           (1, '2026-02-28 12:00:00+00', '2026-02-28 12:00:00'),
           (2, '2026-02-28 12:00:00.000001+00', '2026-02-28 12:00:00.000001'),
           (3, NULL, NULL),
           (4, '2026-01-01 00:00:00+00', '2026-01-01 00:00:00'),
           (5, '2026-03-30 00:00:00+00', '2026-03-30 00:00:00');
         CREATE TABLE ev_naive AS SELECT * FROM ev;",
        )
        .await;
    // 2026-03-31 12:00 - 1 month = 2026-02-28 12:00 (month end clamped).
    let cfg = env.config(&format!(
        "{}{}",
        rule("tz", "ev", "at", "1mo", "max_fraction = 1.0"),
        rule("naive", "ev_naive", "naive", "1mo", "max_fraction = 1.0")
    ));
    let plan = json_cmd("plan", &cfg, &["--at", "2026-03-31T12:00:00Z"]);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!(plan.rule("tz")["cutoff"], "2026-02-28T12:00:00.000000Z");
    assert_eq!(plan.rule("tz")["matched"], 2);
    assert_eq!(plan.rule("naive")["matched"], 2);
    let run = json_cmd("run", &cfg, &["--at", "2026-03-31T12:00:00Z"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        env.db.strings("SELECT id::text FROM ev ORDER BY id").await,
        ["2", "3", "5"]
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM ev_naive ORDER BY id")
            .await,
        ["2", "3", "5"]
    );
}

#[tokio::test]
async fn delete_leap_day_plus_one_year() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE t (id int primary key, at timestamptz);
         INSERT INTO t VALUES (1, '2024-02-29 12:00:00+00'), (2, '2024-03-01 00:00:00+00'), (3, '2024-03-01 00:00:01+00'),
                              (4, '2025-06-01+00'), (5, '2025-07-01+00'), (6, '2025-08-01+00'), (7, '2025-09-01+00');",
    )
    .await;
    let cfg = env.config(&rule("y", "t", "at", "1y", ""));
    // At 2025-02-28 the cutoff is 2024-02-28: the leap day row is not due yet.
    let plan = json_cmd("plan", &cfg, &["--at", "2025-02-28T00:00:00Z"]);
    assert_eq!(
        plan.rule("y")["cutoff"],
        "2024-02-28T00:00:00.000000Z",
        "{plan}"
    );
    assert_eq!(plan.rule("y")["matched"], 0);
    // At 2025-03-01 the cutoff is 2024-03-01 00:00:00: rows 1 and 2 go.
    let run = json_cmd("run", &cfg, &["--at", "2025-03-01T00:00:00Z"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("y")["affected"], 2);
    assert_eq!(
        env.db.strings("SELECT id::text FROM t ORDER BY id").await,
        ["3", "4", "5", "6", "7"]
    );
}

#[tokio::test]
async fn delete_cutoff_matches_postgres_interval_arithmetic() {
    let env = Env::new().await;
    let instants = [
        "2026-03-31T12:00:00Z",
        "2024-02-29T23:59:59Z",
        "2025-01-31T00:00:00Z",
        "2026-11-23T05:00:00.123456Z",
        "2024-12-31T00:00:00Z",
    ];
    let keeps = [
        "1mo",
        "1y",
        "2y",
        "10y",
        "1y6mo",
        "1mo1d",
        "30d",
        "2w3d4h5m6s",
        "0s",
        "13mo",
    ];
    for at in instants {
        let at_ts = retentiond::cli::parse_time(at).unwrap();
        for keep in keeps {
            let k = retentiond::config::Keep::parse(keep).unwrap();
            let ours = k.cutoff(at_ts).unwrap();
            let theirs: chrono::DateTime<chrono::Utc> =
                sqlx::query_scalar("SELECT $1::timestamptz - $2::interval")
                    .bind(at_ts)
                    .bind(k.as_interval())
                    .fetch_one(&env.db.pool)
                    .await
                    .unwrap();
            assert_eq!(ours, theirs, "{at} - {keep}");
        }
    }
}

#[tokio::test]
async fn delete_plan_writes_nothing_and_run_matches_plan_then_is_idempotent() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE logs (id bigserial primary key, created_at timestamptz not null, msg text);
         INSERT INTO logs (created_at, msg) SELECT now() - (i || ' hours')::interval, 'm' FROM generate_series(1, 2000) i;
         CREATE TABLE tokens (id bigserial primary key, issued_at timestamptz, user_id int);
         INSERT INTO tokens (issued_at, user_id) SELECT now() - (i || ' days')::interval, i FROM generate_series(1, 40) i;",
    )
    .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule(
            "logs-30d",
            "logs",
            "created_at",
            "30d",
            "batch_size = 97\nmax_fraction = 0.7"
        ),
        rule(
            "tokens-14d",
            "tokens",
            "issued_at",
            "14d",
            "max_fraction = 0.9"
        )
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    // 2000 hourly rows: those older than 720 h expire (1281 rows); 27 tokens.
    assert_eq!(plan.rule("logs-30d")["matched"], 1281);
    assert_eq!(plan.rule("logs-30d")["batches"], 14);
    assert_eq!(plan.rule("tokens-14d")["matched"], 27);
    assert_eq!(
        env.db.count("SELECT count(*) FROM logs").await,
        2000,
        "plan changed nothing"
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM retentiond.audit_log")
            .await,
        0,
        "plan wrote no audit record"
    );
    let dry = json_cmd("run", &cfg, &["--dry-run"]);
    assert_eq!(dry.rule("logs-30d")["outcome"], "planned");
    assert_eq!(
        env.db.count("SELECT count(*) FROM logs").await,
        2000,
        "dry-run changed nothing"
    );

    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    for name in ["logs-30d", "tokens-14d"] {
        assert_eq!(
            run.rule(name)["affected"],
            plan.rule(name)["matched"],
            "{name}: run matches plan"
        );
        assert_eq!(run.rule(name)["outcome"], "ok");
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM logs WHERE created_at <= now() - interval '30 days'")
            .await,
        0
    );
    assert_eq!(env.db.count("SELECT count(*) FROM logs").await, 719);

    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("logs-30d")["affected"], 0);
    assert_eq!(again.rule("logs-30d")["matched"], 0);

    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    assert_eq!(chain::of(&records, "run_intent", "logs-30d").len(), 2);
    let outcomes = chain::of(&records, "run_outcome", "logs-30d");
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0]["counts"]["affected"], 1281);
    assert_eq!(
        outcomes[1]["counts"]["affected"], 0,
        "checked, nothing due, is recorded too"
    );
    assert_eq!(outcomes[1]["outcome"], "ok");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "config_loaded")
            .count(),
        2
    );
}

#[tokio::test]
async fn delete_where_filter_selects_tier() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE users (id int primary key, tier text);
         INSERT INTO users VALUES (1, 'free'), (2, 'paid');
         CREATE TABLE uploaded_files (id int primary key, owner_id int references users(id), uploaded_at timestamptz);
         INSERT INTO uploaded_files VALUES
           (1, 1, now() - interval '2 hours'), (2, 1, now() - interval '30 minutes'),
           (3, 2, now() - interval '2 hours'), (4, 2, now() - interval '8 days'), (5, 2, now() - interval '6 days');",
    )
    .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule(
            "free-1h",
            "uploaded_files",
            "uploaded_at",
            "1h",
            "where = \"owner_id IN (SELECT id FROM users WHERE tier = 'free')\""
        ),
        rule(
            "paid-7d",
            "uploaded_files",
            "uploaded_at",
            "7d",
            "where = \"owner_id IN (SELECT id FROM users WHERE tier = 'paid')\""
        )
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("free-1h")["affected"], 1);
    assert_eq!(run.rule("paid-7d")["affected"], 1);
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM uploaded_files ORDER BY id")
            .await,
        ["2", "3", "5"]
    );
}

const ACCOUNTS: &str = "
    CREATE TABLE accounts (id int primary key, closed_at timestamptz);
    CREATE TABLE billing_records (id int primary key, account_id int not null references accounts(id) ON DELETE CASCADE,
                                  issued_at timestamptz not null);
    CREATE INDEX ON billing_records (account_id);
    INSERT INTO accounts VALUES
      (1, now() - interval '3 years'),   -- billing 3y old: guarded, account protected
      (2, now() - interval '3 years'),   -- billing 11y old only: account and billing go
      (3, now() - interval '1 year'),    -- not due
      (4, NULL),                         -- open: never due
      (5, now() - interval '3 years'),   -- no billing: goes
      (6, now() - interval '3 years');   -- billing 11y old but on legal hold
    INSERT INTO billing_records VALUES
      (10, 1, now() - interval '3 years'), (11, 1, now() - interval '12 years'),
      (20, 2, now() - interval '11 years'),
      (30, 3, now() - interval '1 year'),
      (60, 6, now() - interval '11 years');";

#[tokio::test]
async fn delete_guard_holds_through_cascade() {
    let env = Env::new().await;
    env.db.exec(ACCOUNTS).await;
    let cfg = env.config(&format!(
        "{}{}[[guards]]\nstore = \"app\"\ntable = \"billing_records\"\nage = \"issued_at\"\nmin_keep = \"10y\"\nreason = \"French tax law\"\n\n\
         [[holds]]\nname = \"case-42\"\nstore = \"app\"\ntable = \"billing_records\"\nwhere = \"account_id = 6\"\nreason = \"litigation\"\n",
        rule("closed-accounts-2y", "accounts", "closed_at", "2y", "max_fraction = 1.0"),
        rule("billing-10y", "billing_records", "issued_at", "10y", "max_fraction = 1.0"),
    ));
    let plan = json_cmd("plan", &cfg, &["--rule", "closed-accounts-2y"]);
    let p = plan.rule("closed-accounts-2y");
    assert_eq!(
        (p["matched"].as_i64(), p["protected"].as_i64()),
        (Some(2), Some(2)),
        "{plan}"
    );
    assert!(
        p["notes"]
            .to_string()
            .contains("billing_records via ON DELETE CASCADE"),
        "{plan}"
    );
    let run = json_cmd("run", &cfg, &["--rule", "closed-accounts-2y"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("closed-accounts-2y")["affected"], 2);
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM accounts ORDER BY id")
            .await,
        ["1", "3", "4", "6"]
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM billing_records ORDER BY id")
            .await,
        ["10", "11", "30", "60"]
    );
    // The 10-year rule takes the old billing rows except the held one.
    let run = json_cmd("run", &cfg, &["--rule", "billing-10y"]);
    assert_eq!(run.rule("billing-10y")["affected"], 1, "{run}");
    assert_eq!(run.rule("billing-10y")["protected"], 1, "{run}");
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM billing_records ORDER BY id")
            .await,
        ["10", "30", "60"]
    );
}

#[tokio::test]
async fn delete_blocked_by_foreign_key_keeps_that_row_names_the_constraint_and_goes_on() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE parent (id int primary key, at timestamptz);
         CREATE TABLE child (id int primary key, parent_id int CONSTRAINT child_parent_fk REFERENCES parent(id));
         INSERT INTO parent VALUES (1, now() - interval '40 days'), (2, now() - interval '40 days'), (3, now());
         INSERT INTO child VALUES (1, 2);",
    )
    .await;
    let cfg = env.config(&rule("p", "parent", "at", "30d", "max_fraction = 1.0"));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    let r = run.rule("p");
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["affected"], 1);
    assert_eq!(r["skipped"]["foreign_key"], 1);
    assert!(
        r["reason"].as_str().unwrap().contains("child_parent_fk"),
        "{run}"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM parent ORDER BY id")
            .await,
        ["2", "3"],
        "only the row the foreign key refuses stays"
    );
}

#[tokio::test]
async fn delete_max_fraction_refuses_whole_run_unless_allowed() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE t (id int primary key, at timestamptz);
         INSERT INTO t SELECT i, now() - (i || ' days')::interval FROM generate_series(1, 10) i;",
        )
        .await;
    // 7 of 10 rows are at least 4 days old: above the default 0.5.
    let cfg = env.config(&format!(
        "{}{}",
        rule("cap", "t", "at", "4d", ""),
        rule("other", "t", "at", "9d", "")
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "plan reports, it does not refuse: {plan}");
    assert_eq!(plan.rule("cap")["outcome"], "would_refuse");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 3, "{run}");
    assert_eq!(run.rule("cap")["outcome"], "refused");
    assert!(
        run.rule("cap")["reason"]
            .as_str()
            .unwrap()
            .contains("max_fraction 0.5"),
        "{run}"
    );
    assert_eq!(
        run.rule("other")["outcome"],
        "ok",
        "a refused rule does not stop the others"
    );
    assert_eq!(run.rule("other")["affected"], 2);
    assert_eq!(env.db.count("SELECT count(*) FROM t").await, 8);
    let run = json_cmd("run", &cfg, &["--rule", "cap", "--allow-large"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(env.db.count("SELECT count(*) FROM t").await, 3);
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let outcomes = chain::of(&records, "run_outcome", "cap");
    assert_eq!(outcomes[0]["outcome"], "refused");
    assert_eq!(outcomes[1]["outcome"], "ok");
}

#[tokio::test]
async fn delete_refuses_on_doubt() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE victims (id int primary key, at timestamptz, label text);
         INSERT INTO victims SELECT i, now() - interval '90 days', 'x' FROM generate_series(1, 5) i;
         CREATE VIEW victims_view AS SELECT * FROM victims;",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}{}{}{}",
        rule(
            "missing-col",
            "victims",
            "created",
            "30d",
            "max_fraction = 1.0"
        ),
        rule("text-age", "victims", "label", "30d", "max_fraction = 1.0"),
        rule("view", "victims_view", "at", "30d", "max_fraction = 1.0"),
        rule(
            "inject",
            "victims\\\"; DROP TABLE victims; --",
            "at",
            "30d",
            "max_fraction = 1.0"
        ),
        rule(
            "skew",
            "victims",
            "at",
            "30d",
            "max_fraction = 1.0\nmax_clock_skew = \"0s\""
        ),
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 3, "{run}");
    let reason = |n: &str| {
        run.rule(n)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        reason("missing-col").contains("column victims.created does not exist"),
        "{run}"
    );
    assert!(reason("text-age").contains("not a timestamp"), "{run}");
    assert!(reason("view").contains("is a view"), "{run}");
    assert!(reason("inject").contains("does not exist"), "{run}");
    assert!(reason("skew").contains("clock"), "{run}");
    for n in ["missing-col", "text-age", "view", "inject", "skew"] {
        assert_eq!(run.rule(n)["outcome"], "refused", "{n}: {run}");
    }
    assert_eq!(
        env.db.count("SELECT count(*) FROM victims").await,
        5,
        "nothing changed"
    );
}

#[tokio::test]
async fn delete_partitioned_table_walks_each_partition() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE events (id bigint, at timestamptz not null) PARTITION BY RANGE (at);
         CREATE TABLE events_old PARTITION OF events FOR VALUES FROM ('2000-01-01') TO ('2026-01-01');
         CREATE TABLE events_new PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2100-01-01');
         INSERT INTO events SELECT i, timestamptz '2025-12-01' + (i || ' hours')::interval FROM generate_series(1, 2000) i;",
    )
    .await;
    // Cutoff 2026-01-15: 743 rows in events_old and 337 in events_new go.
    let cfg = env.config(&rule(
        "p",
        "events",
        "at",
        "1mo",
        "batch_size = 100\nmax_fraction = 0.6",
    ));
    let run = json_cmd("run", &cfg, &["--at", "2026-02-15T00:00:00Z"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("p")["affected"], 1080);
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM events WHERE at <= '2026-01-15'")
            .await,
        0
    );
    assert_eq!(env.db.count("SELECT count(*) FROM events").await, 920);
}

async fn wait_until_fewer(env: &Env, table: &str, below: i64) {
    let start = std::time::Instant::now();
    while env.db.count(&format!("SELECT count(*) FROM {table}")).await >= below {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the run made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

const BIG: &str = "CREATE TABLE big (id bigserial primary key, at timestamptz not null, pad text);
     INSERT INTO big (at, pad) SELECT now() - interval '40 days', repeat('x', 50) FROM generate_series(1, 300000);
     INSERT INTO big (at, pad) SELECT now(), 'young' FROM generate_series(1, 1000);";

#[tokio::test]
async fn delete_killed_midway_then_rerun_finishes_with_honest_trail() {
    let env = Env::new().await;
    env.db.exec(BIG).await;
    let cfg = env.config(&rule(
        "big",
        "big",
        "at",
        "30d",
        "batch_size = 50\nmax_fraction = 1.0",
    ));
    let mut child = spawn_run(&cfg);
    wait_until_fewer(&env, "big", 301_000 - 5_000).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    // A COMMIT the client sent just before it died still completes on the
    // server: count only once its backends are gone.
    let start = std::time::Instant::now();
    while env
        .db
        .count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retentiond' AND datname = '{}'",
            env.db.name
        ))
        .await
        > 0
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "backends linger");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let left = env
        .db
        .count("SELECT count(*) FROM big WHERE pad <> 'young'")
        .await;
    assert!(
        left > 0 && left < 300_000,
        "killed mid-way ({left} expired rows left)"
    );

    let rerun = json_cmd("run", &cfg, &[]);
    assert_eq!(rerun.code, 0, "{rerun}");
    assert_eq!(rerun.rule("big")["affected"], left);
    assert_eq!(
        env.db.count("SELECT count(*) FROM big").await,
        1000,
        "same end state as an uninterrupted run"
    );

    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let intents = chain::of(&records, "run_intent", "big");
    let outcomes = chain::of(&records, "run_outcome", "big");
    assert_eq!(intents.len(), 2, "both runs announced themselves");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    // The rerun, holding the rule's claim, closed the killed run honestly
    // before starting its own.
    assert_eq!(outcomes[0]["run_id"], intents[0]["run_id"]);
    assert_eq!(outcomes[0]["outcome"], "abandoned");
    assert_eq!(outcomes[1]["run_id"], intents[1]["run_id"]);
    assert_eq!(outcomes[1]["outcome"], "ok");
}

#[tokio::test]
async fn delete_sigint_stops_between_batches_and_records_interrupted() {
    let env = Env::new().await;
    env.db.exec(BIG).await;
    let cfg = env.config(&rule(
        "big",
        "big",
        "at",
        "30d",
        "batch_size = 50\nmax_fraction = 1.0",
    ));
    let child = spawn_run(&cfg);
    wait_until_fewer(&env, "big", 301_000 - 5_000).await;
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an interrupted run is not a success"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rules"][0]["outcome"], "interrupted");
    let affected = json["rules"][0]["affected"].as_i64().unwrap();
    assert!(
        affected > 0 && affected < 300_000,
        "stopped mid-way: {affected}"
    );
    // What the run reports is exactly what is gone: no half-committed batch.
    assert_eq!(
        env.db.count("SELECT count(*) FROM big").await,
        301_000 - affected
    );
    let key = load_public(&env.public_key).unwrap();
    let records = chain::assert_valid(&env.db.pool, &key).await;
    let outcomes = chain::of(&records, "run_outcome", "big");
    assert_eq!(outcomes[0]["outcome"], "interrupted");
    assert_eq!(outcomes[0]["counts"]["affected"], affected);
}

/// Records every committed batch's size from the cumulative counts.
#[derive(Default)]
struct BatchSizes(std::sync::Mutex<Vec<i64>>);

impl retentiond::engine::Progress for BatchSizes {
    fn batch_done(&self, _rule: &str, done: i64, _expected: i64) {
        let mut v = self.0.lock().unwrap();
        let before: i64 = v.iter().sum();
        v.push(done - before);
    }
}

#[tokio::test]
async fn delete_batches_never_exceed_batch_size_when_density_jumps() {
    let env = Env::new().await;
    // 30,000 rows where one in 50 is expired, then 10,000 expired rows:
    // sparse windows grow, then meet a dense region.
    env.db.exec(
        "CREATE TABLE t (id bigserial primary key, at timestamptz not null);
         INSERT INTO t (at) SELECT CASE WHEN i % 50 = 0 THEN now() - interval '40 days' ELSE now() END FROM generate_series(1, 30000) i;
         INSERT INTO t (at) SELECT now() - interval '40 days' FROM generate_series(1, 10000);",
    )
    .await;
    let cfg = env.config(&rule(
        "t",
        "t",
        "at",
        "30d",
        "batch_size = 200\nmax_fraction = 1.0",
    ));
    let config = retentiond::config::Config::load(&cfg).unwrap();
    let stores = retentiond::store::Stores::open(&config).unwrap();
    let rule = &config.rules[0];
    let prepared = retentiond::plan::prepare(&config, &stores, rule, Default::default()).await;
    assert_eq!(prepared.report.matched, 10_600);
    let sizes = BatchSizes::default();
    let done = retentiond::engine::execute_rule_batches(
        stores.postgres("app").unwrap(),
        rule,
        prepared.resolved.as_ref().unwrap(),
        None,
        &retentiond::engine::Cancel::default(),
        None,
        None,
        &sizes,
        (prepared.report.matched, None),
        None,
    )
    .await;
    assert_eq!(done.affected, 10_600, "{done:?}");
    let sizes = sizes.0.into_inner().unwrap();
    assert!(
        sizes.iter().all(|s| *s <= 200),
        "a batch exceeded batch_size: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<i64>(), 10_600);
    assert_eq!(env.db.count("SELECT count(*) FROM t").await, 29_400);
}

/// A trigger that silently vetoes some deletes leaves due rows behind in a
/// run that otherwise ends ok: the report says how many and why that is
/// worth a look (the same note would show a walk that missed pages).
#[tokio::test]
async fn delete_rows_counted_but_not_changed_are_noted() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE ev (id int primary key, at timestamptz);
             INSERT INTO ev SELECT g, '2020-01-01+00' FROM generate_series(1, 40) g;
             CREATE FUNCTION keep_even() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF OLD.id % 2 = 0 THEN RETURN NULL; END IF; RETURN OLD; END $$;
             CREATE TRIGGER keep_even BEFORE DELETE ON ev FOR EACH ROW EXECUTE FUNCTION keep_even();",
        )
        .await;
    let cfg = env.config(&rule("ev", "ev", "at", "30d", "max_fraction = 1.0"));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    let r = run.rule("ev");
    assert_eq!(
        (r["matched"].as_i64(), r["affected"].as_i64()),
        (Some(40), Some(20)),
        "{run}"
    );
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("20 of the 40 row(s) counted due were not changed"),
        "{run}"
    );
    // A run that changes what it counted has no such note.
    env.db.exec("DROP TRIGGER keep_even ON ev").await;
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.rule("ev")["affected"].as_i64(), Some(20), "{run}");
    assert!(
        !run.rule("ev")["notes"].to_string().contains("not changed"),
        "{run}"
    );
}
