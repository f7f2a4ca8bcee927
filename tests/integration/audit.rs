//! The audit log: append-only, one gapless valid chain under concurrent
//! writers, records that say what happened.

use crate::chain;
use crate::pg::TestDb;
use crate::util::*;
use retentiond::audit::key::{load_public, Signer};
use retentiond::audit::{AuditLog, Event};
use serde_json::Map;

#[tokio::test]
async fn audit_concurrent_writers_leave_one_gapless_valid_chain() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = retentiond::audit::key::generate(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let url = db.url.clone();
        let private = private.clone();
        tasks.push(tokio::spawn(async move {
            // Each writer has its own pool, as separate processes would.
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .unwrap();
            let log = AuditLog::open(pool, Signer::load(&private).unwrap(), None)
                .await
                .unwrap();
            for i in 0..25 {
                let mut fields = Map::new();
                fields.insert("writer".into(), writer.into());
                fields.insert("i".into(), i.into());
                log.append(&Event {
                    kind: "test",
                    fields,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = chain::assert_valid(&db.pool, &load_public(&public).unwrap()).await;
    assert_eq!(records.len(), 100);
}

#[tokio::test]
async fn audit_log_refuses_update_delete_truncate() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t VALUES (1, now() - interval '9 days');").await;
    let cfg = env.config("[[rules]]\nname = \"r\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"1d\"\naction = \"delete\"\nmax_fraction = 1.0\n");
    assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    for sql in [
        "UPDATE retentiond.audit_log SET kind = 'x'",
        "DELETE FROM retentiond.audit_log WHERE seq = 2",
        "TRUNCATE retentiond.audit_log",
    ] {
        let err = sqlx::query(sql).execute(&env.db.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    assert_eq!(records.len(), 3);
    let intent = chain::of(&records, "run_intent", "r")[0];
    for field in [
        "run_id",
        "store",
        "target",
        "action",
        "cutoff",
        "planned",
        "config_sha256",
        "started",
        "host",
        "keep",
    ] {
        assert!(intent.get(field).is_some(), "intent has {field}: {intent}");
    }
    let outcome = chain::of(&records, "run_outcome", "r")[0];
    for field in [
        "run_id", "counts", "started", "finished", "outcome", "cutoff",
    ] {
        assert!(
            outcome.get(field).is_some(),
            "outcome has {field}: {outcome}"
        );
    }
    assert_eq!(intent["run_id"], outcome["run_id"]);
}

#[tokio::test]
async fn audit_migrate_is_idempotent_and_runtime_role_needs_no_ddl() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t SELECT i, now() - interval '9 days' FROM generate_series(1, 3) i;").await;
    let cfg = env.config("");
    for _ in 0..2 {
        let out = retentiond(&["migrate", "-c", &cfg.display().to_string()], &[]);
        assert_eq!(out.code, 0, "{out}");
    }
    // A runtime role with only the documented grants (given by
    // `migrate --grant-to`) can run rules.
    env.db
        .exec(&format!(
            "CREATE ROLE runtime LOGIN;
         GRANT SELECT, DELETE ON t TO runtime;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         REVOKE CREATE ON DATABASE {} FROM PUBLIC;",
            env.db.name
        ))
        .await;
    let out = retentiond(
        &[
            "migrate",
            "-c",
            &cfg.display().to_string(),
            "--grant-to",
            "runtime",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("granted role `runtime`"), "{out}");
    let url = env.db.url.replace("postgres@", "runtime@");
    let text = format!(
        "[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"{url}\"\n[[rules]]\nname = \"r\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"1d\"\naction = \"delete\"\nmax_fraction = 1.0\n",
        env.key.display()
    );
    let cfg = env.write("runtime.toml", &text);
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("r")["affected"], 3);
    // check --online says so, and so does the signed config_loaded record.
    let check = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert!(
        check
            .stdout
            .contains("cannot update, delete, truncate it or disable its triggers"),
        "{check}"
    );
    let admin_cfg = env.config("");
    let check = retentiond(
        &["check", "--online", "-c", &admin_cfg.display().to_string()],
        &[],
    );
    assert!(
        check
            .stdout
            .contains("WARNING this role could update, delete, truncate, disable"),
        "{check}"
    );
    let rights: Vec<String> = env
        .db
        .strings("SELECT (record::jsonb -> 'audit_rights')::text FROM retentiond.audit_log WHERE kind = 'config_loaded'")
        .await;
    assert_eq!(
        rights,
        [r#"{"delete": false, "update": false, "truncate": false, "disable_triggers": false}"#]
    );
    // And it cannot rewrite the log: no UPDATE, DELETE, TRUNCATE, nor the
    // ownership that would let it disable the triggers.
    let runtime = sqlx::PgPool::connect(&url)
        .await
        .expect("connect as runtime");
    for attack in [
        "UPDATE retentiond.audit_log SET kind = 'x'",
        "DELETE FROM retentiond.audit_log",
        "TRUNCATE retentiond.audit_log",
        "ALTER TABLE retentiond.audit_log DISABLE TRIGGER USER",
        "DROP TABLE retentiond.audit_log",
    ] {
        let e = sqlx::query(attack).execute(&runtime).await;
        assert!(e.is_err(), "the runtime role could: {attack}");
    }
    runtime.close().await;
}

/// The GRANT statements of docs/runtime-grants.sql, the one list.
fn runtime_grants() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/docs/runtime-grants.sql")).expect("read");
    text.lines()
        .filter(|l| l.starts_with("GRANT"))
        .map(str::to_string)
        .collect()
}

#[test]
fn audit_every_place_that_lists_the_runtime_grants_agrees() {
    let root = env!("CARGO_MANIFEST_DIR");
    let grants = runtime_grants();
    assert_eq!(grants.len(), 4);
    // compose and the Kubernetes migrate Job apply the list itself.
    for file in ["docker/compose.yaml", "docker/k8s/migrate-job.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read");
        assert!(
            text.contains(r#""--grant-to", "retentiond_runtime""#),
            "{file} runs migrate --grant-to"
        );
    }
    for file in [
        "README.md",
        "docs/audit-format.md",
        "migrations/0002_run_progress.sql",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read");
        let listed: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches([' ', '-']).trim())
            .filter(|l| {
                l.starts_with("GRANT")
                    && (l.contains(" retentiond.") || l.contains("SCHEMA retentiond "))
            })
            .map(|l| l.split(';').next().unwrap_or(l))
            .collect();
        let wanted: Vec<&str> = grants
            .iter()
            .map(|g| g.split(';').next().unwrap_or(g))
            .collect();
        assert_eq!(
            listed, wanted,
            "{file} lists other grants on schema retentiond"
        );
    }
}

#[test]
fn audit_keygen_writes_a_pair_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys").display().to_string();
    let out = retentiond(&["keygen", "--out", &out_dir], &[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("key id "), "{out}");
    let again = retentiond(&["keygen", "--out", &out_dir], &[]);
    assert_eq!(again.code, 1, "{again}");
    assert!(again.stderr.contains("refusing to overwrite"), "{again}");
}

#[tokio::test]
async fn audit_records_holds_added_changed_and_released() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t SELECT i, now() - interval '9 days' FROM generate_series(1, 4) i;").await;
    let rule = "[[rules]]\nname = \"r\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"1d\"\naction = \"delete\"\nmax_fraction = 1.0\n";
    let hold = |name: &str, filter: &str| {
        format!("[[holds]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"t\"\nwhere = \"{filter}\"\nreason = \"case\"\n")
    };
    let kinds = |records: &[serde_json::Value]| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["kind"].as_str().unwrap().starts_with("hold_"))
            .map(|r| {
                format!(
                    "{} {}",
                    r["kind"].as_str().unwrap(),
                    r["hold"].as_str().unwrap()
                )
            })
            .collect()
    };
    let cfg = env.config(&format!("{rule}{}", hold("a", "id = 1")));
    assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    assert_eq!(
        json_cmd("run", &cfg, &[]).code,
        0,
        "unchanged holds are not recorded again"
    );
    let cfg = env.config(&format!("{rule}{}", hold("b", "id = 2")));
    assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    let cfg = env.config(&format!("{rule}{}", hold("b", "id IN (2, 3)")));
    assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    assert_eq!(
        kinds(&records),
        [
            "hold_added a",
            "hold_released a",
            "hold_added b",
            "hold_released b",
            "hold_added b"
        ]
    );
    let last = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "hold_added")
        .unwrap();
    assert_eq!(last["where"], "id IN (2, 3)");
}

/// Appends of one process that arrive together are written together (group
/// commit): the chain stays one gapless valid chain, every record is stored
/// exactly once, each writer's records keep its order, the JSONL mirror is
/// the log, and an event that cannot be sealed fails only its own append.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_group_commit_concurrent_appends_of_one_process() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = retentiond::audit::key::generate(dir.path()).unwrap();
    let mirror = dir.path().join("audit.jsonl");
    let log = std::sync::Arc::new(
        AuditLog::open(
            db.pool.clone(),
            Signer::load(&private).unwrap(),
            Some(mirror.clone()),
        )
        .await
        .unwrap(),
    );
    let (writers, each) = (8i64, 25i64);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..each {
                let mut fields = Map::new();
                fields.insert("writer".into(), writer.into());
                fields.insert("i".into(), i.into());
                let sealed = log
                    .append(&Event {
                        kind: "test",
                        fields,
                    })
                    .await
                    .unwrap();
                seqs.push(sealed.seq);
                if i == 10 && writer == 3 {
                    // Its own fault: fails alone, the others' records go on.
                    let mut bad = Map::new();
                    bad.insert("seq".into(), 1.into());
                    let err = log
                        .append(&Event {
                            kind: "test",
                            fields: bad,
                        })
                        .await
                        .expect_err("a reserved key cannot be sealed");
                    assert!(err.to_string().contains("collides"), "{err}");
                }
            }
            seqs
        }));
    }
    let mut returned = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's records keep its order: {seqs:?}"
        );
        returned.extend(seqs);
    }
    let records = chain::assert_valid(&db.pool, &load_public(&public).unwrap()).await;
    assert_eq!(records.len() as i64, writers * each);
    returned.sort();
    assert_eq!(
        returned,
        (1..=writers * each).collect::<Vec<_>>(),
        "each append got its own seq"
    );
    let mut seen = std::collections::BTreeSet::new();
    for (r, seq) in records.iter().zip(1..) {
        let key = (r["writer"].as_i64().unwrap(), r["i"].as_i64().unwrap());
        assert!(seen.insert(key), "record {key:?} stored twice");
        assert_eq!(r["seq"], seq);
    }
    assert_eq!(seen.len() as i64, writers * each, "every record once");
    // Written in fewer transactions than records: appends were grouped.
    let transactions = db
        .count("SELECT count(DISTINCT xmin::text) FROM retentiond.audit_log")
        .await;
    assert!(
        transactions < writers * each,
        "{transactions} transactions for {} records",
        writers * each
    );
    assert_mirror_is_the_log(&db, &mirror, &public).await;
    let verify = retentiond(
        &[
            "audit",
            "verify",
            "--public-key",
            public.to_str().unwrap(),
            "--db",
            &db.url,
        ],
        &[],
    );
    assert_eq!(verify.code, 0, "{verify}");
}

/// The JSONL mirror holds the log's lines, in seq order, and `audit verify
/// --file` accepts it.
async fn assert_mirror_is_the_log(db: &TestDb, mirror: &std::path::Path, public: &std::path::Path) {
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT record FROM retentiond.audit_log ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let text = std::fs::read_to_string(mirror).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        stored,
        "the mirror is the log"
    );
    let verify = retentiond(
        &[
            "audit",
            "verify",
            "--public-key",
            public.to_str().unwrap(),
            "--file",
            mirror.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(verify.code, 0, "{verify}");
}

/// `run` runs rules on different tables at once, and rules on the same
/// table one after another in the config's order; the report keeps the
/// config's order and the chain stays valid.
#[tokio::test]
async fn audit_concurrent_rules_keep_one_table_sequential() {
    let env = Env::new().await;
    let tables = 40;
    let mut sql = String::new();
    let mut body = String::new();
    let mut names = Vec::new();
    for i in 1..=tables {
        sql.push_str(&format!(
            "CREATE TABLE t{i} (id int primary key, at timestamptz not null); \
             INSERT INTO t{i} SELECT g, now() - (CASE WHEN g <= 6 THEN interval '10 days' ELSE interval '1 day' END) FROM generate_series(1, 10) g; "
        ));
        body.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nstore = \"app\"\ntable = \"t{i}\"\nage = \"at\"\nkeep = \"5d\"\naction = \"delete\"\nmax_fraction = 1.0\n\n"
        ));
        names.push(format!("r{i}"));
        if i % 10 == 0 {
            // Rules on one table, spread through the config: keep 20d, 8d,
            // then 5d, each finding what the one before it left.
            for keep in ["20d", "8d", "5d"] {
                let name = format!("same-{keep}-{i}");
                body.push_str(&format!(
                    "[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"public.shared\"\nage = \"at\"\nkeep = \"{keep}\"\naction = \"delete\"\nmax_fraction = 1.0\n\n"
                ));
                names.push(name);
            }
        }
    }
    sql.push_str(
        "CREATE TABLE shared (id int primary key, at timestamptz not null); \
         INSERT INTO shared SELECT g, now() - g * interval '1 day' - interval '12 hours' FROM generate_series(1, 40) g;",
    );
    env.db.exec(&sql).await;
    let cfg = env.config(&body);
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    let reported: Vec<String> = run.json()["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, names, "reports in the config's order");
    for i in 1..=tables {
        assert_eq!(run.rule(&format!("r{i}"))["affected"], 6, "{run}");
    }
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    // One config_loaded, an intent and an outcome per rule.
    assert_eq!(records.len(), 1 + 2 * names.len());
    let seq_of = |kind: &str, rule: &str| {
        let found = chain::of(&records, kind, rule);
        assert_eq!(found.len(), 1, "one {kind} of {rule}");
        found[0]["seq"].as_i64().unwrap()
    };
    // The rules on `shared` never overlap, and run in the config's order.
    let shared: Vec<&String> = names.iter().filter(|n| n.starts_with("same-")).collect();
    let mut last_outcome = 0;
    for name in &shared {
        let (intent, outcome) = (seq_of("run_intent", name), seq_of("run_outcome", name));
        assert!(
            last_outcome < intent && intent < outcome,
            "{name}: intent {intent}, outcome {outcome}, previous outcome {last_outcome}"
        );
        last_outcome = outcome;
    }
    // What each found shows it ran after the one before: the first (20d)
    // removed the 21 rows 20.5 to 40.5 days old, the next (8d) the 12 from
    // 8.5 to 19.5 days, the next (5d) 3, and the later ones nothing.
    let affected: Vec<i64> = shared
        .iter()
        .map(|n| run.rule(n)["affected"].as_i64().unwrap())
        .collect();
    assert_eq!(affected.iter().sum::<i64>(), 40 - 4, "{affected:?}");
    assert_eq!(&affected[..3], &[21, 12, 3], "{affected:?}");
    assert_eq!(env.db.count("SELECT count(*) FROM shared").await, 4);
    // Rules on different tables did run at once: some rule's intent comes
    // before the outcome of the rule ahead of it.
    let overlapped = (2..=tables).any(|i| {
        seq_of("run_intent", &format!("r{i}")) < seq_of("run_outcome", &format!("r{}", i - 1))
    });
    assert!(
        overlapped,
        "rules on different tables ran one after another"
    );
}

/// A process killed after committing records and before mirroring them
/// (or in the middle of the mirror write) leaves the JSONL mirror short;
/// the next append copies the missing records from the log first, so the
/// mirror never has a gap that `audit verify --file` would call removed.
#[tokio::test]
async fn audit_mirror_is_filled_in_after_a_kill_between_commit_and_mirror() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = retentiond::audit::key::generate(dir.path()).unwrap();
    let mirror = dir.path().join("audit.jsonl");
    let event = |i: i64| {
        let mut fields = Map::new();
        fields.insert("i".into(), i.into());
        Event {
            kind: "test",
            fields,
        }
    };
    let open = || async {
        AuditLog::open(
            db.pool.clone(),
            Signer::load(&private).unwrap(),
            Some(mirror.clone()),
        )
        .await
        .unwrap()
    };
    let log = open().await;
    for i in 0..4 {
        log.append(&event(i)).await.unwrap();
    }
    drop(log);
    // The last two records never reached the mirror, and the write of the
    // first of them was cut short.
    let text = std::fs::read_to_string(&mirror).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let torn = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]);
    std::fs::write(&mirror, torn).unwrap();
    let log = open().await;
    for i in 4..6 {
        log.append(&event(i)).await.unwrap();
    }
    assert_eq!(
        db.count("SELECT count(*) FROM retentiond.audit_log").await,
        6
    );
    assert_mirror_is_the_log(&db, &mirror, &public).await;
    // A new, empty mirror starts at the next record, as before.
    std::fs::write(&mirror, "").unwrap();
    log.append(&event(6)).await.unwrap();
    let text = std::fs::read_to_string(&mirror).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
}
