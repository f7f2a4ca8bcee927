//! Faults an adversarial operator causes: `kill -9` at random points of a
//! run, then a rerun. Every trial must end in the state an uninterrupted run
//! leaves, with a valid audit chain whose outcome records add up to exactly
//! the rows removed (cascades included), and nothing protected gone.
//!
//! CI runs a few trials; `scripts/fault` runs many
//! (`RETENTIOND_FAULT_TRIALS`, `RETENTIOND_FAULT_SEED`).

use crate::chain;
use crate::util::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const PARENTS: i64 = 6000;

const SCHEMA: &str = "
    CREATE TABLE parents (id int PRIMARY KEY, at timestamptz);
    CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE, held bool);
    CREATE INDEX ON kids (parent_id);
    INSERT INTO parents SELECT g, now() - CASE WHEN g % 10 = 0 THEN interval '1 day' ELSE interval '60 days' END
        FROM generate_series(1, 6000) g;
    INSERT INTO kids SELECT g, g, g % 97 = 0 FROM generate_series(1, 6000) g;
    INSERT INTO kids SELECT 10000 + g, g, false FROM generate_series(1, 6000) g;
    CREATE TABLE uploads (id int PRIMARY KEY, at timestamptz, blob_key text);
    INSERT INTO uploads SELECT g, now() - interval '60 days', 'u/' || g || '.bin' FROM generate_series(1, 300) g;
    -- Each batch waits a little, so a kill lands inside the run.
    CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN NULL; END $$;
    CREATE TRIGGER slow AFTER DELETE ON parents FOR EACH STATEMENT EXECUTE FUNCTION slow();
    CREATE TRIGGER slow AFTER DELETE ON uploads FOR EACH STATEMENT EXECUTE FUNCTION slow();";

fn config(env: &Env, root: &Path) -> std::path::PathBuf {
    env.config(&format!(
        "[stores.files]\ntype = \"filesystem\"\nroot = \"{}\"\n\n\
         [[holds]]\nname = \"case-7\"\nstore = \"app\"\ntable = \"kids\"\nwhere = \"t.held\"\nreason = \"litigation\"\n\n\
         [[rules]]\nname = \"parents\"\nstore = \"app\"\ntable = \"parents\"\nage = \"at\"\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 100\n\n\
         [[rules]]\nname = \"uploads\"\nstore = \"app\"\ntable = \"uploads\"\nage = \"at\"\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 20\n\
         blobs = {{ store = \"files\", key_column = \"blob_key\" }}\n",
        root.display()
    ))
}

async fn setup() -> (Env, std::path::PathBuf) {
    let env = Env::new().await;
    env.db.exec(SCHEMA).await;
    let root = env.dir.path().join("files");
    std::fs::create_dir_all(root.join("u")).unwrap();
    for g in 1..=300 {
        std::fs::write(root.join(format!("u/{g}.bin")), b"data").unwrap();
    }
    let cfg = config(&env, &root);
    (env, cfg)
}

/// The state a run leaves: surviving ids and files.
async fn state(env: &Env) -> (Vec<String>, Vec<String>, Vec<String>, usize) {
    let root = env.dir.path().join("files/u");
    let files = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
    (
        env.db
            .strings("SELECT id::text FROM parents ORDER BY id")
            .await,
        env.db
            .strings("SELECT id::text FROM kids ORDER BY id")
            .await,
        env.db
            .strings("SELECT id::text FROM uploads ORDER BY id")
            .await,
        files,
    )
}

fn sum(outcomes: &[&Value], f: impl Fn(&Value) -> Option<i64>) -> i64 {
    outcomes.iter().filter_map(|o| f(o)).sum()
}

/// xorshift64*: deterministic trials from a seed, no dependency.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[tokio::test]
async fn fault_kill9_at_random_points_then_rerun_ends_as_an_uninterrupted_run() {
    // The reference: one uninterrupted run on a copy of the data.
    let (reference, cfg) = setup().await;
    let started = Instant::now();
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    let full = started.elapsed();
    let expected = state(&reference).await;
    assert_eq!(
        expected.0.len() as i64,
        PARENTS / 10 + 61 - 6,
        "due parents gone, held kept"
    );
    drop(reference);

    let trials: u64 = std::env::var("RETENTIOND_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut seed: u64 = std::env::var("RETENTIOND_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    for trial in 0..trials {
        let (env, cfg) = setup().await;
        // Anywhere from before the first batch to past the end.
        let delay =
            Duration::from_micros(next(&mut seed) % (full.as_micros() as u64 * 11 / 10 + 1));
        let mut child = spawn_run(&cfg);
        tokio::time::sleep(delay).await;
        let _ = child.kill();
        let _ = child.wait();
        let rerun = json_cmd("run", &cfg, &[]);
        assert_eq!(
            rerun.code, 0,
            "trial {trial} (kill after {delay:?}): {rerun}"
        );
        let got = state(&env).await;
        assert_eq!(
            got, expected,
            "trial {trial} (kill after {delay:?}): final state differs"
        );
        let key = retentiond::audit::key::load_public(&env.public_key).expect("public key");
        let records = chain::assert_valid(&env.db.pool, &key).await;
        let parents = chain::of(&records, "run_outcome", "parents");
        let intents = chain::of(&records, "run_intent", "parents");
        assert_eq!(
            parents.len(),
            intents.len(),
            "trial {trial}: every intent has an outcome"
        );
        let removed = PARENTS - expected.0.len() as i64;
        assert_eq!(
            sum(&parents, |o| o["counts"]["affected"].as_i64()),
            removed,
            "trial {trial} (kill after {delay:?}): parents counted"
        );
        assert_eq!(
            sum(&parents, |o| o["counts"]["cascaded"]["public.kids"]
                .as_i64()),
            12000 - expected.1.len() as i64,
            "trial {trial} (kill after {delay:?}): cascaded kids counted"
        );
        let uploads = chain::of(&records, "run_outcome", "uploads");
        assert_eq!(
            sum(&uploads, |o| o["counts"]["affected"].as_i64()),
            300,
            "trial {trial} (kill after {delay:?}): upload rows counted"
        );
        eprintln!("fault trial {trial}: kill after {delay:?} of {full:?}: ok");
    }
}

/// The run's connections terminated mid-run (what a failover or an
/// operator's `pg_terminate_backend` does): the run stops (or reconnects,
/// when only idle connections were hit), the rerun finishes, and the
/// outcomes still add up to the rows removed. A trial in which the run
/// had already finished when the connections were terminated injected no
/// fault (a loaded CI machine is slow to poll): it is tried again.
#[tokio::test]
async fn fault_connections_terminated_mid_run_are_survived_and_counted() {
    for attempt in 1..=5 {
        let (env, cfg) = setup().await;
        let mut child = spawn_run(&cfg);
        let deadline = Instant::now() + Duration::from_secs(30);
        while env
            .db
            .count("SELECT coalesce(max(affected), 0) FROM retentiond.run_progress")
            .await
            < 500
        {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let terminated = env
            .db
            .count(&format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'retentiond' AND datname = '{}'",
                env.db.name
            ))
            .await;
        let status = child.wait().expect("wait");
        if terminated == 0 {
            assert!(status.success(), "the run was not touched");
            eprintln!("attempt {attempt}: the run had finished before its connections were terminated; again");
            continue;
        }
        let rerun = json_cmd("run", &cfg, &[]);
        assert_eq!(rerun.code, 0, "{rerun}");
        let key = retentiond::audit::key::load_public(&env.public_key).expect("public key");
        let records = chain::assert_valid(&env.db.pool, &key).await;
        let parents = chain::of(&records, "run_outcome", "parents");
        if status.success() {
            assert!(
                parents.iter().all(|o| o["outcome"] == "ok"),
                "a run that exits 0 had no failed rule: {parents:?}"
            );
        } else {
            assert!(
                parents.iter().any(|o| o["outcome"] != "ok"),
                "a run that exits non-zero says which rule failed: {parents:?}"
            );
        }
        let left = env.db.count("SELECT count(*) FROM parents").await;
        assert_eq!(left, PARENTS / 10 + 61 - 6);
        assert_eq!(
            sum(&parents, |o| o["counts"]["affected"].as_i64()),
            PARENTS - left,
            "{parents:?}"
        );
        eprintln!("attempt {attempt}: {terminated} connection(s) terminated mid-run, exit {status}: counted exactly");
        return;
    }
    panic!("in 5 attempts the run always finished before its connections could be terminated");
}

/// A table locked by someone else: the run waits at most `lock_timeout`,
/// changes nothing and says why.
#[tokio::test]
async fn fault_a_locked_table_fails_fast_and_changes_nothing() {
    let (env, cfg) = setup().await;
    let cfg_text = std::fs::read_to_string(&cfg).unwrap().replace(
        "batch_size = 100\n",
        "batch_size = 100\nlock_timeout = \"1s\"\n",
    );
    let cfg = env.write("locked.toml", &cfg_text);
    let mut locker = sqlx::PgConnection::connect(&env.db.url).await.unwrap();
    use sqlx::Connection;
    sqlx::raw_sql("BEGIN; LOCK TABLE parents IN ACCESS EXCLUSIVE MODE;")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = Instant::now();
    let run = json_cmd("run", &cfg, &["--rule", "parents"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited {:?}",
        started.elapsed()
    );
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stdout.contains("lock"), "{run}");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    assert_eq!(env.db.count("SELECT count(*) FROM parents").await, PARENTS);
}

/// The audit store unreachable: nothing may run, so nothing is deleted.
#[tokio::test]
async fn fault_an_unreachable_audit_store_runs_nothing() {
    let (env, cfg) = setup().await;
    let text = std::fs::read_to_string(&cfg).unwrap();
    // A second store for the audit log, on a port nothing listens on.
    let text = text.replacen(
        "[audit]\nstore = \"app\"",
        "[stores.auditdb]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/x\"\n\n[audit]\nstore = \"auditdb\"",
        1,
    );
    let cfg = env.write("unreachable.toml", &text);
    let run = json_cmd("run", &cfg, &[]);
    assert_ne!(run.code, 0, "{run}");
    assert_eq!(env.db.count("SELECT count(*) FROM parents").await, PARENTS);
    assert_eq!(env.db.count("SELECT count(*) FROM uploads").await, 300);
}
