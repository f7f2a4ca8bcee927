//! Scale: expired partitions are dropped whole, everything else (a
//! partition holding a protected row, the one straddling the cutoff, the
//! default partition, a partition PostgreSQL will not drop) is purged in
//! batches; `parallelism` splits a rule's heap between workers, exactly
//! counted even when killed; statistics are refreshed after a large purge.

use crate::util::*;
use serde_json::Value;

fn rule(name: &str, table: &str, extra: &str) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"at\"\nkeep = \"1d\"\n\
         action = \"delete\"\nmax_fraction = 1.0\nbatch_size = 2\n{extra}\n"
    )
}

/// Seven daily partitions and a default one: three rows a day at 06:00,
/// 12:00 and 18:00 (ids `d1`..`d3`), one old and one young row in the
/// default partition.
const DAYS: &str = "
    CREATE TABLE ev (id int NOT NULL, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at);
    DO $$ BEGIN FOR d IN 1..7 LOOP
      EXECUTE format('CREATE TABLE ev_d%s PARTITION OF ev FOR VALUES FROM (%L) TO (%L)', d,
                     timestamptz '2026-01-01 00:00+00' + (d - 1) * interval '1 day',
                     timestamptz '2026-01-01 00:00+00' + d * interval '1 day');
      EXECUTE format('INSERT INTO ev SELECT %s * 10 + h, %L::timestamptz + h * interval ''6 hours'', ''x'' FROM generate_series(1, 3) h',
                     d, timestamptz '2026-01-01 00:00+00' + (d - 1) * interval '1 day');
    END LOOP; END $$;
    CREATE TABLE ev_def PARTITION OF ev DEFAULT;
    INSERT INTO ev VALUES (901, '2025-06-01+00', 'old'), (902, '2026-02-01+00', 'young');
    CREATE VIEW ev_d5_view AS SELECT * FROM ev_d5;";

const AT: &str = "2026-01-08T12:00:00Z";

#[tokio::test]
async fn scale_partition_expired_partitions_are_dropped_the_rest_purged_in_batches() {
    let env = Env::new().await;
    env.db.exec(DAYS).await;
    let cfg = env.config(&format!(
        "{}[[holds]]\nname = \"case-32\"\nstore = \"app\"\ntable = \"ev\"\nwhere = \"id = 32\"\nreason = \"litigation\"\n",
        rule("events-1d", "ev", "")
    ));
    // Cutoff 2026-01-07 12:00: days 1-6 lie wholly before it; day 3 holds
    // a held row; day 7 straddles; the default partition may hold anything.
    let plan = json_cmd("plan", &cfg, &["--at", AT]);
    assert_eq!(plan.code, 0, "{plan}");
    let p = plan.rule("events-1d");
    assert_eq!(p["matched"], 20, "{plan}");
    assert_eq!(p["protected"], 1, "{plan}");
    // The plan cannot know PostgreSQL will refuse to drop day 5 (a view).
    assert_eq!(
        dropped(&p),
        [
            "public.ev_d1:3",
            "public.ev_d2:3",
            "public.ev_d4:3",
            "public.ev_d5:3",
            "public.ev_d6:3"
        ],
        "{plan}"
    );

    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    let r = run.rule("events-1d");
    assert_eq!(r["affected"], 20, "{run}");
    assert_eq!(
        dropped(&r),
        [
            "public.ev_d1:3",
            "public.ev_d2:3",
            "public.ev_d4:3",
            "public.ev_d6:3"
        ],
        "{run}"
    );
    assert_eq!(
        env.db.strings("SELECT id::text FROM ev ORDER BY id").await,
        ["32", "73", "902"],
        "the held row, the young row of day 7 and the young default row stay"
    );
    assert_eq!(
        env.db
            .strings(
                "SELECT relname::text FROM pg_class WHERE relname LIKE 'ev\\_d%' AND relkind = 'r' ORDER BY 1"
            )
            .await,
        ["ev_d3", "ev_d5", "ev_d7", "ev_def"],
        "only wholly expired partitions without a held row or a dependent view are gone"
    );

    // The signed records name each dropped partition with its rows.
    let out = retentiond(&["audit", "export", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(out.code, 0, "{out}");
    let records: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let of = |kind: &str| {
        records
            .iter()
            .rev()
            .find(|r| r["kind"] == kind && r["rule"] == "events-1d")
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} record"))
    };
    let intent = of("run_intent");
    assert_eq!(intent["planned"]["partitions_dropped"]["public.ev_d5"], 3);
    let outcome = of("run_outcome");
    assert_eq!(outcome["counts"]["affected"], 20, "{outcome:#}");
    assert_eq!(
        outcome["counts"]["partitions_dropped"],
        serde_json::json!({"public.ev_d1": 3, "public.ev_d2": 3, "public.ev_d4": 3, "public.ev_d6": 3}),
        "{outcome:#}"
    );

    // A second run finds nothing left to do, and drops nothing.
    let again = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("events-1d")["affected"], 0, "{again}");
    assert!(dropped(&again.rule("events-1d")).is_empty(), "{again}");
}

#[tokio::test]
async fn scale_partition_by_another_key_or_with_where_is_purged_in_batches() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE byid (id int NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (id);
             CREATE TABLE byid_1 PARTITION OF byid FOR VALUES FROM (0) TO (100);
             CREATE TABLE byid_2 PARTITION OF byid FOR VALUES FROM (100) TO (200);
             INSERT INTO byid SELECT i, '2025-01-01+00' FROM generate_series(1, 150) i;
             CREATE TABLE filtered (id int NOT NULL, at timestamptz NOT NULL, kind text) PARTITION BY RANGE (at);
             CREATE TABLE filtered_old PARTITION OF filtered FOR VALUES FROM ('2025-01-01+00') TO ('2025-02-01+00');
             INSERT INTO filtered VALUES (1, '2025-01-05+00', 'debug'), (2, '2025-01-06+00', 'audit');",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule("by-id", "byid", ""),
        rule("debug-only", "filtered", "where = \"kind = 'debug'\"")
    ));
    let plan = json_cmd("plan", &cfg, &["--at", AT]);
    assert_eq!(plan.code, 0, "{plan}");
    for name in ["by-id", "debug-only"] {
        assert!(dropped(&plan.rule(name)).is_empty(), "{name}: {plan}");
    }
    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("by-id")["affected"], 150, "{run}");
    assert_eq!(run.rule("debug-only")["affected"], 1, "{run}");
    assert_eq!(env.db.strings("SELECT id::text FROM filtered").await, ["2"]);
    assert_eq!(
        env.db
            .strings("SELECT count(*)::text FROM pg_class WHERE relname IN ('byid_1', 'byid_2', 'filtered_old')")
            .await,
        ["3"],
        "no partition was dropped"
    );
}

#[tokio::test]
async fn scale_statistics_are_refreshed_after_a_purge_of_more_than_a_tenth() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE big_change (id int PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO big_change SELECT i, CASE WHEN i <= 50 THEN '2025-01-01+00'::timestamptz ELSE '2026-01-08+00' END
               FROM generate_series(1, 100) i;
             CREATE TABLE small_change (id int PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO small_change SELECT i, CASE WHEN i <= 5 THEN '2025-01-01+00'::timestamptz ELSE '2026-01-08+00' END
               FROM generate_series(1, 100) i;",
        )
        .await;
    let cfg = env.config(&format!(
        "{}{}",
        rule("big", "big_change", ""),
        rule("small", "small_change", "")
    ));
    let run = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("big")["affected"], 50, "{run}");
    assert_eq!(run.rule("small")["affected"], 5, "{run}");
    // ANALYZE sets reltuples to what it found: the 50 rows left.
    let analyzed = |t: &'static str| {
        let db = &env.db;
        async move {
            db.strings(&format!(
                "SELECT (s.last_analyze IS NOT NULL)::text || ' ' || c.reltuples::text \
                 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname = '{t}'"
            ))
            .await
        }
    };
    assert_eq!(analyzed("big_change").await, ["true 50"]);
    assert_eq!(
        analyzed("small_change").await[0].split(' ').next(),
        Some("false")
    );
}

#[tokio::test]
async fn scale_parallel_workers_delete_and_mask_exactly_what_one_would() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE par (id int PRIMARY KEY, at timestamptz NOT NULL, ip inet);
             INSERT INTO par SELECT g, CASE WHEN g % 10 < 7 THEN '2025-01-01+00'::timestamptz ELSE '2026-01-08+00' END,
                                    ('10.0.' || (g % 250) || '.' || (g % 199 + 1))::inet
               FROM generate_series(1, 20000) g;
             CREATE TABLE par_mask AS SELECT * FROM par;",
        )
        .await;
    let cfg = env.config(&format!(
        "{}[[rules]]\nname = \"mask\"\nstore = \"app\"\ntable = \"par_mask\"\nage = \"at\"\nkeep = \"1d\"\n\
         action = \"mask\"\ncolumns = {{ ip = \"ip_prefix\" }}\nmax_fraction = 1.0\nbatch_size = 500\nparallelism = 2\n",
        rule("del", "par", "parallelism = 2")
    ));
    let run = json_cmd_with(
        "run",
        &cfg,
        &["--at", AT, "--log-format", "json"],
        &[("RETENTIOND_LOG", "retentiond=debug")],
    );
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("del")["affected"], 14000, "{run}");
    assert_eq!(run.rule("mask")["affected"], 14000, "{run}");
    // Both workers did part of the work, each batch within batch_size.
    for part in [0, 1] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("Batch committed.") && l.contains(&format!("\"part\":{part}"))),
            "worker {part} committed no batch: {run}"
        );
    }
    assert_eq!(
        env.db.count("SELECT count(*) FROM par").await,
        6000,
        "the young rows stay"
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM par_mask WHERE at < '2026-01-01' AND ip <> set_masklen(network(set_masklen(ip, 24)), 32)")
            .await,
        0,
        "every due address is masked"
    );
    let again = json_cmd("run", &cfg, &["--at", AT]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.rule("del")["affected"], 0, "{again}");
    assert_eq!(again.rule("mask")["affected"], 0, "{again}");
}

#[tokio::test]
async fn scale_a_killed_parallel_run_is_counted_exactly_by_the_next_one() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE parents (id int PRIMARY KEY, at timestamptz);
             CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE);
             INSERT INTO parents SELECT g, '2025-01-01+00' FROM generate_series(1, 40000) g;
             INSERT INTO kids SELECT g, g FROM generate_series(1, 40000) g;
             CREATE INDEX ON kids (parent_id);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER DELETE ON parents FOR EACH STATEMENT EXECUTE FUNCTION slow();",
        )
        .await;
    let cfg = env.config(&rule("parents", "parents", "parallelism = 2"));
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_size = 2", "batch_size = 500");
    let cfg = env.write("retention.toml", &cfg_text);
    let mut child = spawn_run(&cfg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Both workers have committed batches.
    while env
        .db
        .count(
            "SELECT count(DISTINCT part) FILTER (WHERE affected > 0) FROM retentiond.run_progress",
        )
        .await
        < 2
        || env
            .db
            .count("SELECT coalesce(sum(affected), 0)::int8 FROM retentiond.run_progress")
            .await
            < 3000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the run made no progress"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before both workers had committed batches");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // A COMMIT sent just before the kill still completes on the server.
    while env
        .db
        .count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retentiond' AND datname = '{}'",
            env.db.name
        ))
        .await
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "the killed run's sessions stay");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gone_parents = 40000 - env.db.count("SELECT count(*) FROM parents").await;
    let gone_kids = 40000 - env.db.count("SELECT count(*) FROM kids").await;
    assert!(gone_parents > 0 && gone_parents < 40000, "{gone_parents}");
    let rerun = json_cmd("run", &cfg, &[]);
    assert_eq!(rerun.code, 0, "{rerun}");
    assert_eq!(env.db.count("SELECT count(*) FROM parents").await, 0);
    let key = retentiond::audit::key::load_public(&env.public_key).expect("public key");
    let records = crate::chain::assert_valid(&env.db.pool, &key).await;
    let outcomes = crate::chain::of(&records, "run_outcome", "parents");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0]["outcome"], "abandoned");
    assert_eq!(outcomes[0]["counts"]["affected"], gone_parents);
    assert_eq!(outcomes[0]["counts"]["cascaded"]["public.kids"], gone_kids);
    let total: i64 = outcomes
        .iter()
        .map(|o| o["counts"]["affected"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 40000, "every removed row is counted once");
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM retentiond.run_progress")
            .await,
        0,
        "progress rows are dropped once recorded"
    );
}

/// A rule report's `partitions_dropped` as `name:rows`, in order.
fn dropped(rule: &Value) -> Vec<String> {
    rule["partitions_dropped"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}:{v}")).collect())
        .unwrap_or_default()
}
