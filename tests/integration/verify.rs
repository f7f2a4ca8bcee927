//! `retentiond audit verify`: an untouched log verifies; every tampering is
//! caught with the right seq and reason; exports and key rotation.

use crate::util::*;
use retentiond::audit::key::Signer;
use retentiond::audit::record::{canonical, sha256_hex};
use serde_json::Value;

/// A database with a few runs' worth of records (seq 1..=10).
async fn logged_env() -> (Env, std::path::PathBuf) {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t SELECT i, now() - (i || ' days')::interval FROM generate_series(1, 30) i;").await;
    let body = "[[rules]]\nname = \"a\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"20d\"\naction = \"delete\"\n\n\
                [[rules]]\nname = \"b\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"10d\"\naction = \"delete\"\nmax_fraction = 0.8\n";
    let cfg = env.config(body);
    for _ in 0..2 {
        assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM retentiond.audit_log")
            .await,
        10
    );
    (env, cfg)
}

fn verify(env: &Env, extra: &[&str]) -> Out {
    let key = env.public_key.display().to_string();
    let mut args = vec![
        "audit",
        "verify",
        "--public-key",
        key.as_str(),
        "--db",
        env.db.url.as_str(),
    ];
    args.extend_from_slice(extra);
    retentiond(&args, &[])
}

async fn tamper(env: &Env, sql: &str) {
    env.db.exec(&format!("ALTER TABLE retentiond.audit_log DISABLE TRIGGER USER; {sql}; ALTER TABLE retentiond.audit_log ENABLE TRIGGER USER;")).await;
}

/// Re-signs record `seq` after `edit`, with `signer`, keeping its stored
/// hash column consistent (what a careful forger would do).
async fn resign(env: &Env, seq: i64, signer: &Signer, key_id: &str, edit: impl Fn(&mut Value)) {
    let line: String = sqlx::query_scalar("SELECT record FROM retentiond.audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let mut v: Value = serde_json::from_str(&line).unwrap();
    edit(&mut v);
    let o = v.as_object_mut().unwrap();
    o.remove("sig");
    o.insert("key_id".into(), key_id.into());
    let sig = signer.sign(canonical(&v).unwrap().as_bytes());
    v["sig"] = sig.into();
    let line = canonical(&v).unwrap();
    let hash = sha256_hex(line.as_bytes());
    env.db
        .exec("ALTER TABLE retentiond.audit_log DISABLE TRIGGER USER")
        .await;
    sqlx::query(
        "UPDATE retentiond.audit_log SET record = $1, hash = $2, key_id = $3 WHERE seq = $4",
    )
    .bind(&line)
    .bind(&hash)
    .bind(key_id)
    .bind(seq)
    .execute(&env.db.pool)
    .await
    .unwrap();
    env.db
        .exec("ALTER TABLE retentiond.audit_log ENABLE TRIGGER USER")
        .await;
}

fn assert_invalid(out: &Out, seq: i64, reason: &str) {
    assert_eq!(out.code, 4, "{out}");
    let expected = format!("invalid: seq {seq}: {reason}:");
    assert!(
        out.stdout.starts_with(&expected),
        "expected `{expected}`:\n{out}"
    );
}

#[tokio::test]
async fn verify_untouched_log_from_db_config_and_export() {
    let (env, cfg) = logged_env().await;
    let out = verify(&env, &[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .starts_with("ok: verified seq 1..10 (10 records), prev of first: 0000000000000000"),
        "{out}"
    );
    let key = env.public_key.display().to_string();
    let cfg_s = cfg.display().to_string();
    let out = retentiond(
        &["audit", "verify", "--public-key", &key, "-c", &cfg_s],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    let export = retentiond(&["audit", "export", "-c", &cfg_s], &[]);
    assert_eq!(export.code, 0, "{export}");
    assert_eq!(export.stdout.lines().count(), 10);
    let file = env.write("audit.jsonl", &export.stdout);
    let out = retentiond(
        &[
            "audit",
            "verify",
            "--public-key",
            &key,
            "--file",
            &file.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    // A sub-range verifies on its own and names the prev it starts from.
    let tail: String = export
        .stdout
        .lines()
        .skip(4)
        .map(|l| format!("{l}\n"))
        .collect();
    let prev = sha256_hex(export.stdout.lines().nth(3).unwrap().as_bytes());
    let file = env.write("tail.jsonl", &tail);
    let out = retentiond(
        &[
            "audit",
            "verify",
            "--public-key",
            &key,
            "--file",
            &file.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "verified seq 5..10 (6 records), prev of first: {prev}"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn verify_catches_each_tampering_with_seq_and_reason() {
    let (env, _) = logged_env().await;
    // An edited field, stored columns left alone.
    tamper(&env, "UPDATE retentiond.audit_log SET record = replace(record, '\"outcome\":\"ok\"', '\"outcome\":\"refused\"') WHERE seq = 5").await;
    assert_invalid(&verify(&env, &[]), 5, "edited");
}

#[tokio::test]
async fn verify_catches_edit_with_recomputed_hash() {
    let (env, _) = logged_env().await;
    tamper(
        &env,
        "UPDATE retentiond.audit_log SET record = replace(record, '\"outcome\":\"ok\"', '\"outcome\":\"refused\"') WHERE seq = 5;
         UPDATE retentiond.audit_log SET hash = encode(sha256(convert_to(record, 'UTF8')), 'hex') WHERE seq = 5",
    )
    .await;
    assert_invalid(&verify(&env, &[]), 5, "edited");
}

#[tokio::test]
async fn verify_catches_removed_and_reordered_records() {
    let (env, _) = logged_env().await;
    tamper(&env, "DELETE FROM retentiond.audit_log WHERE seq = 6").await;
    assert_invalid(&verify(&env, &[]), 6, "removed");
    let (env, _) = logged_env().await;
    tamper(
        &env,
        "CREATE TEMP TABLE swap AS SELECT * FROM retentiond.audit_log WHERE seq IN (3, 4);
         DELETE FROM retentiond.audit_log WHERE seq IN (3, 4);
         INSERT INTO retentiond.audit_log SELECT 7 - seq, ts, kind, rule, run_id, prev, key_id, hash, record FROM swap",
    )
    .await;
    assert_invalid(&verify(&env, &[]), 3, "reordered");
}

#[tokio::test]
async fn verify_catches_truncation_with_a_checkpoint() {
    let (env, cfg) = logged_env().await;
    let head = retentiond(&["audit", "head", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(head.code, 0, "{head}");
    let cp = env.write("checkpoints.jsonl", &head.stdout);
    let cp_s = cp.display().to_string();
    assert_eq!(verify(&env, &["--checkpoint", &cp_s]).code, 0);
    assert!(verify(&env, &["--checkpoint", &cp_s])
        .stdout
        .contains("checkpoint seq 10 matches"));
    tamper(&env, "DELETE FROM retentiond.audit_log WHERE seq >= 9").await;
    assert_eq!(
        verify(&env, &[]).code,
        0,
        "a hash chain alone cannot see a cut tail"
    );
    assert_invalid(&verify(&env, &["--checkpoint", &cp_s]), 10, "truncated");
}

#[tokio::test]
async fn verify_catches_other_keys_and_forged_key_ids() {
    let (env, _) = logged_env().await;
    let dir = tempfile::tempdir().unwrap();
    let (other_private, _, other_id) = retentiond::audit::key::generate(dir.path()).unwrap();
    let other = Signer::load(&other_private).unwrap();
    // Re-signed with another key, honestly labelled.
    resign(&env, 5, &other, &other_id, |v| {
        v["counts"]["affected"] = 0.into()
    })
    .await;
    assert_invalid(&verify(&env, &[]), 5, "unknown key");

    let (env, _) = logged_env().await;
    let legit = retentiond::audit::key::key_id(
        &retentiond::audit::key::load_public(&env.public_key).unwrap(),
    );
    // Signed with another key but claiming the real key's id: in the
    // middle the chain shows the change (edited), at the end only the
    // signature can (bad signature).
    resign(&env, 5, &other, &legit, |v| {
        v["counts"]["affected"] = 0.into()
    })
    .await;
    assert_invalid(&verify(&env, &[]), 5, "edited");
    let (env, _) = logged_env().await;
    let legit = retentiond::audit::key::key_id(
        &retentiond::audit::key::load_public(&env.public_key).unwrap(),
    );
    resign(&env, 10, &other, &legit, |_| {}).await;
    assert_invalid(&verify(&env, &[]), 10, "bad signature");
}

#[tokio::test]
async fn verify_key_rotation_needs_both_keys() {
    let (env, cfg) = logged_env().await;
    let dir = tempfile::tempdir().unwrap();
    let (new_private, new_public, _) = retentiond::audit::key::generate(dir.path()).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &env.key.display().to_string(),
        &new_private.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    let both = verify(&env, &["--public-key", &new_public.display().to_string()]);
    assert_eq!(both.code, 0, "{both}");
    assert!(both.stdout.contains("(15 records)"), "{both}");
    assert_invalid(&verify(&env, &[]), 11, "unknown key");
}

/// Both verifiers' verdict: exit code and the `invalid: seq N: reason` part.
fn verdicts(
    env: &Env,
    file: &std::path::Path,
    checkpoint: Option<&std::path::Path>,
) -> ((i32, String), (i32, String)) {
    let key = env.public_key.display().to_string();
    let file = file.display().to_string();
    let mut ours = vec![
        "audit",
        "verify",
        "--public-key",
        key.as_str(),
        "--file",
        file.as_str(),
    ];
    let cp = checkpoint.map(|c| c.display().to_string());
    let mut theirs = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/verify_audit.py").to_string(),
        "--public-key".into(),
        key.clone(),
    ];
    if let Some(cp) = &cp {
        ours.extend(["--checkpoint", cp.as_str()]);
        theirs.extend(["--checkpoint".to_string(), cp.clone()]);
    }
    theirs.push(file.clone());
    let ours = retentiond(&ours, &[]);
    let py = std::process::Command::new("python3")
        .args(&theirs)
        .output()
        .expect("python3 (scripts/test installs it)");
    let py_out = String::from_utf8_lossy(&py.stdout).into_owned();
    assert!(
        !String::from_utf8_lossy(&py.stderr).contains("No module named"),
        "the Python verifier needs the `cryptography` package (scripts/test installs it): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let verdict = |s: &str| {
        s.lines()
            .next()
            .unwrap_or_default()
            .splitn(4, ':')
            .take(3)
            .collect::<Vec<_>>()
            .join(":")
    };
    (
        (ours.code, verdict(&ours.stdout)),
        (py.status.code().unwrap_or(-1), verdict(&py_out)),
    )
}

#[tokio::test]
async fn verify_python_verifier_agrees_on_good_and_tampered_exports() {
    let (env, cfg) = logged_env().await;
    let cfg_s = cfg.display().to_string();
    let export = retentiond(&["audit", "export", "-c", &cfg_s], &[]).stdout;
    let head = retentiond(&["audit", "head", "-c", &cfg_s], &[]).stdout;
    let checkpoint = env.write("cp.jsonl", &head);
    let lines: Vec<String> = export.lines().map(String::from).collect();
    let dir = tempfile::tempdir().unwrap();
    let (other, _, other_id) = retentiond::audit::key::generate(dir.path()).unwrap();
    let other = Signer::load(&other).unwrap();
    let resigned = |i: usize, key_id: &str| {
        let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("sig");
        o.insert("key_id".into(), key_id.into());
        v["sig"] = other.sign(canonical(&v).unwrap().as_bytes()).into();
        canonical(&v).unwrap()
    };
    let legit: String = serde_json::from_str::<Value>(&lines[0]).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let variant = |f: &dyn Fn(&mut Vec<String>)| {
        let mut l = lines.clone();
        f(&mut l);
        l.iter().map(|x| format!("{x}\n")).collect::<String>()
    };
    let cases: Vec<(&str, String, bool, &str)> = vec![
        ("untouched", export.clone(), true, "ok"),
        (
            "edited",
            variant(&|l| l[4] = l[4].replace("\"outcome\":\"ok\"", "\"outcome\":\"refused\"")),
            false,
            "invalid: seq 5: edited",
        ),
        (
            "removed",
            variant(&|l| drop(l.remove(5))),
            false,
            "invalid: seq 6: removed",
        ),
        (
            "swapped",
            variant(&|l| l.swap(4, 5)),
            false,
            "invalid: seq 6: reordered",
        ),
        (
            "truncated",
            variant(&|l| l.truncate(8)),
            true,
            "invalid: seq 10: truncated",
        ),
        (
            "other key",
            variant(&|l| l[6] = resigned(6, &other_id)),
            false,
            "invalid: seq 7: unknown key",
        ),
        (
            "forged key id",
            variant(&|l| l[6] = resigned(6, &legit)),
            false,
            "invalid: seq 7: edited",
        ),
        (
            "forged last",
            variant(&|l| l[9] = resigned(9, &legit)),
            false,
            "invalid: seq 10: bad signature",
        ),
    ];
    for (name, text, with_checkpoint, expected) in cases {
        let file = env.write(&format!("{}.jsonl", name.replace(' ', "-")), &text);
        let (ours, theirs) = verdicts(&env, &file, with_checkpoint.then_some(checkpoint.as_path()));
        assert!(
            ours.1.starts_with(expected),
            "{name}: retentiond said {ours:?}"
        );
        assert_eq!(
            ours, theirs,
            "{name}: retentiond and docs/verify_audit.py disagree"
        );
    }
}

#[tokio::test]
async fn verify_jsonl_mirror_and_per_run_checkpoints() {
    let env = Env::new().await;
    env.db.exec("CREATE TABLE t (id int primary key, at timestamptz); INSERT INTO t SELECT i, now() - (i || ' days')::interval FROM generate_series(1, 10) i;").await;
    let mirror = env.dir.path().join("audit.jsonl");
    let checkpoints = env.dir.path().join("checkpoints.jsonl");
    let header = env.header().replace(
        "[stores.app]",
        &format!(
            "jsonl = \"{}\"\ncheckpoints = \"{}\"\n\n[stores.app]",
            mirror.display(),
            checkpoints.display()
        ),
    );
    let cfg = env.write(
        "retention.toml",
        &format!("{header}[[rules]]\nname = \"r\"\nstore = \"app\"\ntable = \"t\"\nage = \"at\"\nkeep = \"5d\"\naction = \"delete\"\nmax_fraction = 1.0\n"),
    );
    for _ in 0..2 {
        assert_eq!(json_cmd("run", &cfg, &[]).code, 0);
    }
    let export = retentiond(&["audit", "export", "-c", &cfg.display().to_string()], &[]).stdout;
    assert_eq!(
        std::fs::read_to_string(&mirror).unwrap(),
        export,
        "the mirror holds exactly the stored records"
    );
    let cps: Vec<Value> = std::fs::read_to_string(&checkpoints)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cps.len(), 2, "one checkpoint per run");
    assert_eq!(cps[1]["seq"], 6);
    let key = env.public_key.display().to_string();
    let out = retentiond(
        &[
            "audit",
            "verify",
            "--public-key",
            &key,
            "--file",
            &mirror.display().to_string(),
            "--checkpoint",
            &checkpoints.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.ends_with("checkpoint seq 6 matches\n"), "{out}");
}
