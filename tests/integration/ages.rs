//! Ages as real schemas store them: epoch integers (`age_unit`), `date`
//! and `timestamp(n)` columns, `age_expr` over several columns or a
//! related table, and NULL ages counted (`null_age`). Each is exact at the
//! cutoff in `plan --at` and `run --at`, and named in the signed records.

use crate::util::*;
use serde_json::Value;

/// `keep = "30d"` at this instant: the cutoff is 2026-05-02T00:00:00Z.
const AT: &str = "2026-06-01T00:00:00Z";
/// 1 µs earlier: the cutoff is 1 µs before 2026-05-02T00:00:00Z.
const JUST_BEFORE: &str = "2026-05-31T23:59:59.999999Z";
/// 2026-05-02T00:00:00Z in seconds since the epoch.
const CUTOFF_S: i64 = 1_777_680_000;

fn rule(name: &str, table: &str, age: &str) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\n{age}\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 1.0\n\n"
    )
}

#[tokio::test]
async fn ages_epoch_integers_dates_and_timestamp_precision_expire_exactly_at_the_cutoff() {
    let env = Env::new().await;
    let c = CUTOFF_S;
    env.db
        .exec(&format!(
            "CREATE TABLE presence (id text primary key, last_seen bigint);
             INSERT INTO presence VALUES ('at', {ms}), ('before', {ms} - 1), ('after', {ms} + 1), ('never', NULL);
             CREATE TABLE rooms (id text primary key, creation_ts int);
             INSERT INTO rooms VALUES ('at', {c}), ('after', {c} + 1);
             CREATE TABLE traces (id text primary key, t_us bigint not null);
             INSERT INTO traces VALUES ('at', {us}), ('after', {us} + 1);
             CREATE TABLE daily (id text primary key, day date);
             INSERT INTO daily VALUES ('at', '2026-05-02'), ('before', '2026-05-01'), ('after', '2026-05-03');
             CREATE TABLE precise (id text primary key, at timestamp(3));
             INSERT INTO precise VALUES ('at', '2026-05-02 00:00:00.000'), ('after', '2026-05-02 00:00:00.001');",
            ms = c * 1000,
            us = c * 1_000_000,
        ))
        .await;
    let body = [
        rule(
            "presence-ms",
            "presence",
            "age = \"last_seen\"\nage_unit = \"ms\"",
        ),
        rule(
            "rooms-s",
            "rooms",
            "age = \"creation_ts\"\nage_unit = \"s\"",
        ),
        rule("traces-us", "traces", "age = \"t_us\"\nage_unit = \"us\""),
        rule("daily-date", "daily", "age = \"day\""),
        rule("precise-ts3", "precise", "age = \"at\""),
    ]
    .concat();
    let cfg = env.config(&body);
    check_online_ok(&cfg);

    // Exactly at the cutoff: `age <= cutoff` expires, NULL never does.
    let plan = json_cmd("plan", &cfg, &["--at", AT]);
    assert_eq!(plan.code, 0, "{plan}");
    let matched = |out: &Out, r: &str| out.rule(r)["matched"].as_i64().unwrap();
    assert_eq!(matched(&plan, "presence-ms"), 2, "at and before: {plan}");
    assert_eq!(plan.rule("presence-ms")["null_age"], 1, "{plan}");
    assert_eq!(matched(&plan, "rooms-s"), 1, "{plan}");
    assert_eq!(matched(&plan, "traces-us"), 1, "{plan}");
    assert_eq!(
        matched(&plan, "daily-date"),
        2,
        "a day is its UTC midnight: {plan}"
    );
    assert_eq!(matched(&plan, "precise-ts3"), 1, "{plan}");
    // 1 µs earlier, the rows exactly at the cutoff are not due yet.
    let before = json_cmd("plan", &cfg, &["--at", JUST_BEFORE]);
    assert_eq!(matched(&before, "presence-ms"), 1, "{before}");
    assert_eq!(matched(&before, "rooms-s"), 0, "{before}");
    assert_eq!(matched(&before, "traces-us"), 0, "{before}");
    assert_eq!(matched(&before, "daily-date"), 1, "{before}");
    assert_eq!(matched(&before, "precise-ts3"), 0, "{before}");

    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    for (table, left) in [
        ("presence", vec!["after", "never"]),
        ("rooms", vec!["after"]),
        ("traces", vec!["after"]),
        ("daily", vec!["after"]),
        ("precise", vec!["after"]),
    ] {
        let rows = env
            .db
            .strings(&format!("SELECT id FROM {table} ORDER BY id"))
            .await;
        assert_eq!(rows, left, "{table}: {run}");
    }
    let (log, _) = export(&env);
    let intent = record(&log, "run_intent", "presence-ms");
    assert!(intent.contains("\"age_unit\":\"ms\""), "{intent}");
    assert!(intent.contains("\"null_age\":1"), "{intent}");
    assert!(
        intent.contains("\"cutoff\":\"2026-05-02T00:00:00.000000Z\""),
        "{intent}"
    );
}

#[tokio::test]
async fn ages_age_expr_over_several_columns_or_a_related_table_and_in_guards() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE auth_sessions (id int primary key, created_at timestamptz not null, updated_at timestamptz, refreshed_at timestamptz);
             -- 1: refreshed recently (kept), 2: updated long ago (due), 3: only created long ago (due), 4: created recently (kept).
             INSERT INTO auth_sessions VALUES
               (1, '2026-01-01', '2026-01-02', '2026-05-20'),
               (2, '2026-01-01', '2026-04-01', NULL),
               (3, '2026-01-01', NULL, NULL),
               (4, '2026-05-10', NULL, NULL);
             CREATE TABLE chat_sessions (id int primary key);
             CREATE TABLE chat_tokens (id int primary key, session_id int REFERENCES chat_sessions(id) ON DELETE CASCADE, created_at timestamptz);
             -- A session ages by its newest token: 10 has a recent one, 11 only old ones, 12 none (NULL: never expires).
             INSERT INTO chat_sessions VALUES (10), (11), (12);
             INSERT INTO chat_tokens VALUES (1, 10, '2026-01-01'), (2, 10, '2026-05-25'), (3, 11, '2026-01-01'), (4, 11, '2026-03-01');
             CREATE TABLE accounts (id int primary key, closed_at timestamptz);
             CREATE TABLE invoices (id int primary key, account_id int REFERENCES accounts(id) ON DELETE CASCADE, issued_at timestamptz, paid_at timestamptz);
             INSERT INTO accounts VALUES (20, '2025-01-01'), (21, '2025-01-01');
             -- Both issued long ago; 20's was paid recently, so the guard's age (paid, else issued) keeps it.
             INSERT INTO invoices VALUES (1, 20, '2024-01-01', '2026-05-20'), (2, 21, '2024-01-01', '2024-02-01');",
        )
        .await;
    let body = [
        rule(
            "auth-sessions",
            "auth_sessions",
            "age_expr = \"coalesce(t.refreshed_at, t.updated_at, t.created_at)\"",
        ),
        rule(
            "chat-sessions",
            "chat_sessions",
            "age_expr = \"(SELECT max(r.created_at) FROM chat_tokens r WHERE r.session_id = t.id)\"",
        ),
        rule("closed-accounts", "accounts", "age = \"closed_at\""),
        "[[guards]]\nstore = \"app\"\ntable = \"invoices\"\nage_expr = \"coalesce(paid_at, issued_at)\"\nmin_keep = \"90d\"\nreason = \"tax: 90 days after payment\"\n".to_string(),
    ]
    .concat();
    let cfg = env.config(&body);
    check_online_ok(&cfg);
    let plan = json_cmd("plan", &cfg, &["--at", AT]);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!(plan.rule("auth-sessions")["matched"], 2, "{plan}");
    assert_eq!(plan.rule("chat-sessions")["matched"], 1, "{plan}");
    assert_eq!(
        plan.rule("chat-sessions")["null_age"],
        1,
        "a session without tokens has no age: {plan}"
    );
    assert_eq!(
        plan.rule("chat-sessions")["cascaded"]["public.chat_tokens"],
        2
    );
    let accounts = plan.rule("closed-accounts");
    assert_eq!(
        (accounts["matched"].as_i64(), accounts["protected"].as_i64()),
        (Some(1), Some(1)),
        "{plan}"
    );
    // The oldest due session's age is the expression's, not a column's.
    assert_eq!(
        plan.rule("auth-sessions")["oldest"],
        "2026-01-01T00:00:00.000000Z",
        "{plan}"
    );

    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    let left = |sql: &str| {
        let sql = sql.to_string();
        let env = &env;
        async move { env.db.strings(&sql).await }
    };
    assert_eq!(
        left("SELECT id::text FROM auth_sessions ORDER BY id").await,
        ["1", "4"]
    );
    assert_eq!(
        left("SELECT id::text FROM chat_sessions ORDER BY id").await,
        ["10", "12"]
    );
    assert_eq!(
        left("SELECT id::text FROM accounts ORDER BY id").await,
        ["20"]
    );
    let (log, _) = export(&env);
    let outcome = record(&log, "run_outcome", "chat-sessions");
    assert!(
        outcome.contains(
            "\"age_expr\":\"(SELECT max(r.created_at) FROM chat_tokens r WHERE r.session_id = t.id)\""
        ),
        "the promise as enforced, in the signed record: {outcome}"
    );
    assert!(outcome.contains("\"keep\":\"30d\""), "{outcome}");
}

#[tokio::test]
async fn ages_check_locates_a_wrong_unit_or_expression() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE a (id int primary key, at timestamptz, n bigint, label text);
             CREATE TABLE g (id int primary key, at timestamptz);",
        )
        .await;
    let body = [
        rule("unit-on-time", "a", "age = \"at\"\nage_unit = \"ms\""),
        rule("int-without-unit", "a", "age = \"n\""),
        rule("expr-text", "a", "age_expr = \"t.label\""),
        rule("expr-broken", "a", "age_expr = \"t.nope + 1\""),
        "[[guards]]\nstore = \"app\"\ntable = \"g\"\nage_expr = \"t.id\"\nmin_keep = \"1d\"\nreason = \"r\"\n\n".to_string(),
        rule("ok", "g", "age = \"at\""),
    ]
    .concat();
    let cfg = env.config(&body);
    let header_lines = env.header().lines().count();
    let out = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    let line_of = |needle: &str| {
        body.lines()
            .position(|l| l == needle)
            .map(|i| format!("retention.toml:{}:", header_lines + i + 1))
            .unwrap_or_else(|| panic!("{needle}"))
    };
    let age_unit_line = {
        let i = body.find("age_unit = \"ms\"").unwrap();
        format!(
            "retention.toml:{}:",
            header_lines + body[..i].lines().count() + 1
        )
    };
    for (at, text) in [
        (
            age_unit_line,
            "column a.at is timestamp with time zone, a time: `age_unit = \"ms\"` applies to integer ages only",
        ),
        (
            line_of("age = \"n\""),
            "column a.n is bigint: an integer age needs its unit",
        ),
        (
            line_of("age_expr = \"t.label\""),
            "`age_expr` yields text, not a timestamp",
        ),
        (
            line_of("age_expr = \"t.nope + 1\""),
            "`age_expr` does not compile on a: column t.nope does not exist",
        ),
    ] {
        assert!(
            out.stderr.lines().any(|l| l.contains(&at) && l.contains(text)),
            "missing {at}… {text}:\n{out}"
        );
    }
    assert!(
        out.stderr
            .contains("guard: `age_expr` yields integer: an integer age needs its unit"),
        "{out}"
    );

    // Offline: one of `age` and `age_expr`, a known unit, one expression.
    for (bad, text) in [
        (
            "age = \"at\"\nage_expr = \"t.at\"",
            "`age` and `age_expr` both given",
        ),
        ("age = \"n\"\nage_unit = \"min\"", "unknown age_unit `min`"),
        (
            "age_expr = \"t.at); DELETE FROM a; SELECT (1\"",
            "`age_expr` is not one SQL expression",
        ),
        ("", "needs `age` or `age_expr`"),
    ] {
        let cfg = env.config(&rule("r", "a", bad));
        let out = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
        assert_eq!(out.code, 2, "{bad}: {out}");
        assert!(out.stderr.contains(text), "{bad}: {out}");
        let run = json_cmd("run", &cfg, &[]);
        assert_eq!(run.code, 2, "run refuses it too: {run}");
    }
    assert_eq!(env.db.count("SELECT count(*) FROM a").await, 0);
}

#[tokio::test]
async fn ages_nullable_age_columns_are_hinted_and_null_ages_reported() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE files (id int primary key, created_at timestamptz not null, last_used timestamptz);
             INSERT INTO files SELECT i, '2026-01-01', CASE WHEN i <= 3 THEN NULL ELSE '2026-01-02'::timestamptz END FROM generate_series(1, 10) i;",
        )
        .await;
    let cfg = env.config(&rule("files", "files", "age = \"last_used\""));
    let check = check_online_ok(&cfg);
    assert!(
        check.stdout.contains("files.last_used is nullable")
            && check
                .stdout
                .contains("age_expr = \"coalesce(t.last_used, t.created_at)\""),
        "{check}"
    );
    let text = retentiond(&["plan", "-c", &cfg.display().to_string(), "--at", AT], &[]);
    assert!(
        text.stdout
            .contains("files: 3 row(s) have no age (NULL) and never expire"),
        "{text}"
    );
    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("files")["affected"], 7);
    assert_eq!(run.rule("files")["null_age"], 3);
    let (log, key) = export(&env);
    let file = env.write("audit.jsonl", &log);
    let report = retentiond(
        &[
            "report",
            "--file",
            &file.display().to_string(),
            "--public-key",
            &key,
            "--format",
            "json",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
        ],
        &[],
    );
    assert_eq!(report.code, 0, "{report}");
    let json: Value = report.json();
    let files = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["rule"] == "files")
        .expect("the promise");
    assert_eq!(files["null_age"], 3, "{json:#}");
}

/// The signed log as JSONL (`audit export`) and the public key's path.
fn export(env: &Env) -> (String, String) {
    let cfg = env.dir.path().join("retention.toml");
    let out = retentiond(&["audit", "export", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(out.code, 0, "{out}");
    (out.stdout, env.public_key.display().to_string())
}

/// `examples/real-schemas.toml` on its schema: every form checks online,
/// and a run at a fixed instant removes exactly the rows its comments say.
#[tokio::test]
async fn ages_the_real_schemas_example_checks_and_runs_exactly() {
    let env = Env::new().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let schema = std::fs::read_to_string(format!("{root}/examples/real-schemas.sql")).unwrap();
    env.db.exec(&schema).await;
    // At 2026-12-01: 7 days back is 2026-11-24 (1_795_478_400_000 ms).
    env.db
        .exec(
            "INSERT INTO presence_stream VALUES
               (1, '@a:x', 'online', 1795478400000),      -- exactly 7 days: due
               (2, '@b:x', 'online', 1795478400001),      -- 1 ms younger: kept
               (3, '@c:x', 'offline', 1700000000000);     -- 2023: due
             INSERT INTO room_stats_state VALUES ('!old', 'old', NULL), ('!new', 'new', 1795478400000), ('!2024', 'y', 1704067200000);
             INSERT INTO auth.sessions VALUES
               ('00000000-0000-0000-0000-000000000001', gen_random_uuid(), '2026-01-01', NULL, '2026-11-20 00:00:00', NULL),  -- refreshed: kept
               ('00000000-0000-0000-0000-000000000002', gen_random_uuid(), '2026-01-01', '2026-10-01', NULL, NULL),          -- idle: due
               ('00000000-0000-0000-0000-000000000003', gen_random_uuid(), '2026-11-29', NULL, NULL, NULL);                  -- new: kept
             INSERT INTO auth.refresh_tokens (token, session_id, revoked, created_at) VALUES
               ('a', '00000000-0000-0000-0000-000000000002', false, '2026-10-01'),
               ('b', '00000000-0000-0000-0000-000000000002', false, '2026-10-02'),
               ('c', '00000000-0000-0000-0000-000000000001', true, '2026-11-01'),
               ('d', '00000000-0000-0000-0000-000000000001', true, '2026-11-29');
             INSERT INTO usage_daily VALUES ('2025-10-27', gen_random_uuid(), 1), ('2025-10-28', gen_random_uuid(), 1), ('2026-11-30', gen_random_uuid(), 1);
             INSERT INTO plans VALUES ('free', '1 hour'), ('paid', '7 days');
             INSERT INTO accounts VALUES (1, 'free'), (2, 'paid'), (3, NULL);
             INSERT INTO uploads (account_id, uploaded_at) VALUES
               (1, '2026-11-30 22:00:00+00'),   -- free, 2 hours: due
               (1, '2026-11-30 23:30:00+00'),   -- free, 30 minutes: kept
               (2, '2026-11-28 00:00:00+00'),   -- paid, 3 days: kept
               (3, '2026-11-20 00:00:00+00');   -- no plan: 7 days, due
             INSERT INTO user_ips VALUES
               ('@a:x', 'tok', NULL, '198.51.100.7', NULL, 1790000000000),
               ('@a:x', 'tok', NULL, '198.51.100.9:4242', NULL, 1790000000001),   -- masks to the same: deleted
               ('@a:x', 'tok', NULL, '::ffff:203.0.113.5', NULL, 1790000000002);
             INSERT INTO audit_log_entries VALUES
               (gen_random_uuid(), '{\"actor_username\": \"alice\", \"traits\": {\"ip\": \"198.51.100.7\"}, \"action\": \"login\"}', '2026-01-01', '203.0.113.9, 198.51.100.4'),
               (gen_random_uuid(), '{\"action\": \"logout\"}', '2026-01-01', '');",
        )
        .await;
    let key = env.key.display().to_string();
    let vars = contract_vars(&key, &env.db.url);
    let cfg = format!("{root}/examples/real-schemas.toml");
    let check = retentiond(&["check", "--online", "-c", &cfg], &vars);
    assert_eq!(check.code, 0, "{check}");
    let cfg_path = std::path::Path::new(&cfg);
    let at = ["--at", "2026-12-01T00:00:00Z"];
    let plan = json_cmd_with("plan", cfg_path, &at, &vars);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!(plan.rule("room-stats-1y")["null_age"], 1, "{plan}");
    let run = json_cmd_with(
        "run",
        cfg_path,
        &[&at[..], &["--allow-large"]].concat(),
        &vars,
    );
    assert_eq!(run.code, 0, "{run}");
    let affected = |r: &str| run.rule(r)["affected"].as_i64().unwrap();
    assert_eq!(affected("presence-7d"), 2, "{run}");
    assert_eq!(affected("room-stats-1y"), 1, "{run}");
    assert_eq!(affected("idle-sessions-30d"), 1, "{run}");
    assert_eq!(
        run.rule("idle-sessions-30d")["cascaded"],
        serde_json::json!({"auth.refresh_tokens": 2}),
        "{run}"
    );
    assert_eq!(affected("revoked-refresh-tokens-14d"), 1, "token c: {run}");
    // 400 days before 2026-12-01 is 2025-10-27: that day's midnight is due.
    assert_eq!(affected("usage-daily-400d"), 1, "{run}");
    assert_eq!(affected("uploads-by-plan"), 2, "{run}");
    let ips = run.rule("user-ips-anonymized-30d");
    assert_eq!(
        (
            ips["affected"].as_i64(),
            ips["conflicts"].as_i64(),
            ips["conflicts_deleted"].as_i64()
        ),
        (Some(2), Some(1), Some(1)),
        "{run}"
    );
    assert_eq!(
        env.db.strings("SELECT ip FROM user_ips ORDER BY ip").await,
        ["198.51.100.0", "::ffff:203.0.113.0"]
    );
    assert_eq!(affected("audit-log-personal-data-90d"), 1, "{run}");
    assert_eq!(
        env.db
            .strings("SELECT concat_ws('|', payload->>'actor_username', payload->'traits'->>'ip', ip_address) FROM audit_log_entries ORDER BY ip_address DESC")
            .await,
        ["redacted|198.51.100.0|203.0.113.0, 198.51.100.0", ""]
    );
    assert_eq!(
        plan.rule("uploads-by-plan")["keep_distribution"],
        serde_json::json!([{"keep": "1h", "rows": 2}, {"keep": "7d", "rows": 2}]),
        "{plan}"
    );
    assert_eq!(
        env.db
            .strings("SELECT stream_id::text FROM presence_stream ORDER BY 1")
            .await,
        ["2"]
    );
    assert_eq!(
        env.db
            .strings("SELECT token FROM auth.refresh_tokens ORDER BY 1")
            .await,
        ["d"]
    );
}

/// "Temporary files: 1 hour for free users, up to 7 days for paid users":
/// each row's period from the data (`keep_expr`), clamped to
/// `keep_min`..`keep_max`, NULL read as `keep_max`; exact at the cutoff in
/// `plan --at` and `run --at`, and the promise's bounds in the records.
#[tokio::test]
async fn ages_keep_expr_reads_each_rows_period_from_the_data_within_its_bounds() {
    let env = Env::new().await;
    let at = "'2026-06-01 00:00:00+00'::timestamptz";
    env.db
        .exec(&format!(
            "CREATE TABLE plans (id text primary key, upload_ttl interval);
             INSERT INTO plans VALUES ('free', '1 hour'), ('paid', '7 days'), ('enterprise', '30 days'), ('tiny', '10 minutes');
             CREATE TABLE accounts (id int primary key, plan_id text REFERENCES plans(id));
             INSERT INTO accounts VALUES (1, 'free'), (2, 'paid'), (3, 'enterprise'), (4, 'tiny'), (5, NULL);
             CREATE TABLE uploaded_files (id text primary key, account_id int, uploaded_at timestamptz, uploaded_ms bigint);
             INSERT INTO uploaded_files (id, account_id, uploaded_at) VALUES
               ('free-1h', 1, {at} - interval '1 hour'),        -- exactly its hour: due
               ('free-59m', 1, {at} - interval '59 minutes'),   -- kept
               ('paid-2d', 2, {at} - interval '2 days'),        -- kept
               ('paid-7d', 2, {at} - interval '7 days'),        -- due
               ('ent-8d', 3, {at} - interval '8 days'),         -- 30d clamped to 7d: due
               ('ent-6d', 3, {at} - interval '6 days'),         -- kept
               ('tiny-30m', 4, {at} - interval '30 minutes'),   -- 10 min raised to 1h: kept
               ('tiny-61m', 4, {at} - interval '61 minutes'),   -- due
               ('none-3d', 5, {at} - interval '3 days');        -- no plan: 7d, kept
             UPDATE uploaded_files SET uploaded_ms = (extract(epoch FROM uploaded_at) * 1000)::int8;
             CREATE TABLE uploaded_files_ms AS SELECT id, account_id, uploaded_ms FROM uploaded_files;
             ALTER TABLE uploaded_files_ms ADD PRIMARY KEY (id);"
        ))
        .await;
    let ttl = "keep_expr = \"(SELECT p.upload_ttl FROM plans p JOIN accounts a ON a.plan_id = p.id WHERE a.id = t.account_id)\"\nkeep_min = \"1h\"\nkeep_max = \"7d\"";
    let rule = |name: &str, table: &str, age: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\n{age}\n{ttl}\naction = \"delete\"\nmax_fraction = 1.0\n\n"
        )
    };
    let body = [
        rule("temp-files", "uploaded_files", "age = \"uploaded_at\""),
        rule(
            "temp-files-ms",
            "uploaded_files_ms",
            "age = \"uploaded_ms\"\nage_unit = \"ms\"",
        ),
    ]
    .concat();
    let cfg = env.config(&body);
    let check = check_online_ok(&cfg);
    assert!(
        check.stdout.contains(
            "temp-files: delete uploaded_files after 1 hour to 7 days, per row (keep_expr)"
        ),
        "{check}"
    );
    let plan = json_cmd("plan", &cfg, &["--at", "2026-06-01T00:00:00Z"]);
    assert_eq!(plan.code, 0, "{plan}");
    for r in ["temp-files", "temp-files-ms"] {
        assert_eq!(plan.rule(r)["matched"], 4, "{r}: {plan}");
        assert_eq!(plan.rule(r)["keep"], "1h..7d", "{plan}");
        assert_eq!(
            plan.rule(r)["keep_distribution"],
            serde_json::json!([{"keep": "1h", "rows": 4}, {"keep": "7d", "rows": 5}]),
            "{r}: {plan}"
        );
    }
    let before = json_cmd("plan", &cfg, &["--at", "2026-05-31T23:59:59.999999Z"]);
    for r in ["temp-files", "temp-files-ms"] {
        assert_eq!(
            before.rule(r)["matched"],
            2,
            "1 µs earlier, the two rows exactly at their cutoff wait: {before}"
        );
    }
    let run = json_cmd("run", &cfg, &["--at", "2026-06-01T00:00:00Z"]);
    assert_eq!(run.code, 0, "{run}");
    for table in ["uploaded_files", "uploaded_files_ms"] {
        assert_eq!(
            env.db
                .strings(&format!("SELECT id FROM {table} ORDER BY id"))
                .await,
            ["ent-6d", "free-59m", "none-3d", "paid-2d", "tiny-30m"],
            "{table}: {run}"
        );
    }
    let (log, _) = export(&env);
    let intent = record(&log, "run_intent", "temp-files");
    for field in [
        "\"keep\":\"1h..7d\"",
        "\"keep_min\":\"1h\"",
        "\"keep_max\":\"7d\"",
        "\"keep_expr\":\"(SELECT p.upload_ttl FROM plans p JOIN accounts a ON a.plan_id = p.id WHERE a.id = t.account_id)\"",
    ] {
        assert!(intent.contains(field), "{field}: {intent}");
    }

    // check --online: an expression that is not an interval, at its line.
    let bad = env.config(&rule("temp-files", "uploaded_files", "age = \"uploaded_at\"").replace(
        "keep_expr = \"(SELECT p.upload_ttl FROM plans p JOIN accounts a ON a.plan_id = p.id WHERE a.id = t.account_id)\"",
        "keep_expr = \"t.account_id\"",
    ));
    let out = retentiond(
        &["check", "--online", "-c", &bad.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    let line = env.header().lines().count() + 6;
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&format!("retention.toml:{line}:"))
                && l.contains("`keep_expr` yields integer, not an interval")),
        "{out}"
    );
    // Offline: bounds required and ordered, no `keep` beside it, and
    // keep_min is what a guard is compared with.
    let guard = "[[guards]]\nstore = \"app\"\ntable = \"uploaded_files\"\nage = \"uploaded_at\"\nmin_keep = \"1d\"\nreason = \"abuse reports\"\n";
    let good = rule("temp-files", "uploaded_files", "age = \"uploaded_at\"");
    for (text, expected) in [
        (
            good.replace("keep_max = \"7d\"\n", ""),
            "`keep_expr` needs `keep_max`",
        ),
        (
            good.replace("keep_max = \"7d\"", "keep_max = \"30m\""),
            "keep_max 30m is shorter than keep_min 1h",
        ),
        (
            good.replace("keep_min = \"1h\"", "keep_min = \"1h\"\nkeep = \"1d\""),
            "`keep` and `keep_expr` both given",
        ),
        (
            format!("{good}{guard}"),
            "rule keeps uploaded_files for 1h (keep_min), less than the guard's min_keep 1d",
        ),
    ] {
        let cfg = env.config(&text);
        let out = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
        assert_eq!(out.code, 2, "{text}\n{out}");
        assert!(out.stderr.contains(expected), "{expected}: {out}");
    }
}

/// `check --online` on `cfg` passes; its output (for notes).
fn check_online_ok(cfg: &std::path::Path) -> Out {
    let out = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    out
}

/// The line of the first `kind` record of `rule` in an export.
fn record<'a>(log: &'a str, kind: &str, rule: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(&format!("\"{kind}\"")) && l.contains(&format!("\"{rule}\"")))
        .unwrap_or_else(|| panic!("no {kind} of {rule} in:\n{log}"))
}
