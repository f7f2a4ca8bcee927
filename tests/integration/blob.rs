//! Blob rules on the filesystem store: prefixes, ages, idle groups, links,
//! holds, caps, dry runs and audit records.

use crate::chain;
use crate::util::*;
use retentiond::audit::key::load_public;
use std::path::Path;

/// Creates `root/key` with `content` and mtime `when` (anything `touch -d` reads).
fn file(root: &Path, key: &str, content: &str, when: &str) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    let ok = std::process::Command::new("touch")
        .args(["-h", "-d", when])
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn fs_config(env: &Env, root: &Path, rules: &str) -> std::path::PathBuf {
    env.config(&format!(
        "[stores.scratch]\ntype = \"filesystem\"\nroot = \"{}\"\n\n{rules}",
        root.display()
    ))
}

#[tokio::test]
async fn blob_idle_workspaces_go_whole_and_links_are_never_followed() {
    let env = Env::new().await;
    let root = env.dir.path().join("scratch");
    let outside = env.dir.path().join("outside.txt");
    std::fs::write(&outside, "not yours").unwrap();
    file(&root, "workspaces/idle/data.csv", "1,2", "3 hours ago");
    file(
        &root,
        "workspaces/idle/sub/model.bin",
        "xxxx",
        "2 hours ago",
    );
    file(&root, "workspaces/active/old.csv", "old", "3 hours ago");
    file(&root, "workspaces/active/new.csv", "new", "10 minutes ago");
    file(&root, "other/keep.txt", "k", "3 hours ago");
    std::os::unix::fs::symlink(&outside, root.join("workspaces/idle/link")).unwrap();
    // A link's own mtime counts toward its workspace's activity: age it too.
    assert!(std::process::Command::new("touch")
        .args(["-h", "-d", "3 hours ago"])
        .arg(root.join("workspaces/idle/link"))
        .status()
        .unwrap()
        .success());
    let cfg = fs_config(
        &env,
        &root,
        "[[rules]]\nname = \"idle-workspaces-1h\"\nstore = \"scratch\"\nprefix = \"workspaces/\"\ngroup_by_prefix_depth = 2\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n",
    );
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    let p = plan.rule("idle-workspaces-1h");
    assert_eq!(
        (
            p["matched"].as_i64(),
            p["protected"].as_i64(),
            p["total"].as_i64()
        ),
        (Some(2), Some(1), Some(5)),
        "{plan}"
    );
    assert_eq!(p["bytes"], 7);
    assert!(
        root.join("workspaces/idle/data.csv").exists(),
        "plan deleted nothing"
    );
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("idle-workspaces-1h")["affected"], 2);
    assert!(
        !root.join("workspaces/idle/data.csv").exists()
            && !root.join("workspaces/idle/sub").exists()
    );
    assert!(
        root.join("workspaces/idle/link").symlink_metadata().is_ok(),
        "the link itself stays"
    );
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "not yours",
        "what it points at is untouched"
    );
    assert!(
        root.join("workspaces/active/old.csv").exists(),
        "an active workspace keeps its old files"
    );
    assert!(root.join("other/keep.txt").exists());
    let again = json_cmd("run", &cfg, &[]);
    assert_eq!(again.rule("idle-workspaces-1h")["affected"], 0, "{again}");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcome = chain::of(&records, "run_outcome", "idle-workspaces-1h")[0];
    assert_eq!(outcome["counts"]["affected"], 2);
    assert_eq!(outcome["counts"]["bytes"], 7);
}

#[tokio::test]
async fn blob_prefix_age_boundary_holds_and_cap() {
    let env = Env::new().await;
    let root = env.dir.path().join("scratch");
    // --at 2026-01-01T00:00:00Z with keep 1h: the cutoff is 2025-12-31T23:00:00Z.
    file(&root, "tmp/at-cutoff", "a", "2025-12-31T23:00:00Z");
    file(&root, "tmp/after-cutoff", "b", "2025-12-31T23:00:01Z");
    file(&root, "tmp/old", "c", "2025-12-01T00:00:00Z");
    file(&root, "tmp/held/evidence", "d", "2025-12-01T00:00:00Z");
    file(&root, "tmpfile-not-in-prefix", "e", "2025-12-01T00:00:00Z");
    let rules = "[[rules]]\nname = \"tmp-1h\"\nstore = \"scratch\"\nprefix = \"tmp/\"\nkeep = \"1h\"\naction = \"delete\"\n\n\
                 [[holds]]\nname = \"case-9\"\nstore = \"scratch\"\nprefix = \"tmp/held/\"\nreason = \"litigation\"\n";
    let cfg = fs_config(&env, &root, rules);
    // 2 of 4 objects due: exactly the default cap of 0.5 is allowed.
    let run = json_cmd("run", &cfg, &["--at", "2026-01-01T00:00:00Z"]);
    assert_eq!(run.code, 0, "{run}");
    let r = run.rule("tmp-1h");
    assert_eq!(
        (r["affected"].as_i64(), r["protected"].as_i64()),
        (Some(2), Some(1)),
        "{run}"
    );
    assert!(!root.join("tmp/at-cutoff").exists() && !root.join("tmp/old").exists());
    assert!(
        root.join("tmp/after-cutoff").exists()
            && root.join("tmp/held/evidence").exists()
            && root.join("tmpfile-not-in-prefix").exists()
    );
    // Now everything left under tmp/ is due (later --at): 1 of 2 unheld, plus the held one, is over the cap.
    file(&root, "tmp/x1", "x", "2025-12-01T00:00:00Z");
    file(&root, "tmp/x2", "x", "2025-12-01T00:00:00Z");
    let run = json_cmd("run", &cfg, &["--at", "2026-01-02T00:00:00Z"]);
    assert_eq!(
        run.code, 3,
        "3 of 4 objects is above max_fraction 0.5: {run}"
    );
    assert!(
        root.join("tmp/x1").exists(),
        "a refused run deletes nothing"
    );
}

/// A selection larger than `RETENTIOND_DUE_IN_MEMORY` goes through a
/// temporary file: the same objects go, counted the same; and when no
/// temporary file can be made, the rule fails before anything is deleted.
#[tokio::test]
async fn blob_a_selection_past_memory_goes_through_a_temporary_file() {
    let env = Env::new().await;
    let root = env.dir.path().join("scratch");
    let mut idle = Vec::new();
    for ws in 0..8 {
        let active = ws % 3 == 0;
        for f in 0..(ws + 2) {
            let key = format!("workspaces/w{ws}/f{f:02}");
            file(&root, &key, "x", "3 hours ago");
            if !active {
                idle.push(key);
            }
        }
        if active {
            file(
                &root,
                &format!("workspaces/w{ws}/new"),
                "n",
                "10 minutes ago",
            );
        }
    }
    let cfg = fs_config(
        &env,
        &root,
        "[[rules]]\nname = \"idle\"\nstore = \"scratch\"\nprefix = \"workspaces/\"\ngroup_by_prefix_depth = 2\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 4\n",
    );
    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let nowhere = env.dir.path().join("no-such-dir");
    let refused = json_cmd_with(
        "run",
        &cfg,
        &[],
        &[
            ("RETENTIOND_DUE_IN_MEMORY", "3"),
            ("TMPDIR", nowhere.to_str().unwrap()),
        ],
    );
    assert_ne!(refused.code, 0, "{refused}");
    let r = refused.rule("idle");
    assert_eq!(r["outcome"], "failed", "{refused}");
    assert!(
        r["reason"].as_str().unwrap_or("").contains("TMPDIR"),
        "the error says what to set: {refused}"
    );
    for key in &idle {
        assert!(root.join(key).exists(), "nothing deleted: {key}");
    }
    let run = json_cmd_with(
        "run",
        &cfg,
        &[],
        &[
            ("RETENTIOND_DUE_IN_MEMORY", "3"),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 0, "{run}");
    let r = run.rule("idle");
    assert_eq!(r["affected"].as_i64(), Some(idle.len() as i64), "{run}");
    for key in &idle {
        assert!(!root.join(key).exists(), "{key} went");
    }
    for ws in [0, 3, 6] {
        assert!(root.join(format!("workspaces/w{ws}/f00")).exists());
        assert!(root.join(format!("workspaces/w{ws}/new")).exists());
    }
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the temporary file has no name to leave behind"
    );
}

#[test]
fn blob_check_rejects_metadata_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = retentiond::audit::key::generate(&dir.path().join("k")).unwrap();
    let path = dir.path().join("retention.toml");
    std::fs::write(
        &path,
        format!(
            "[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"postgres://x@h/db\"\n[stores.scratch]\ntype = \"filesystem\"\nroot = \"/tmp\"\n[[rules]]\nname = \"a\"\nstore = \"scratch\"\nprefix = \"u/\"\nmatch_metadata = {{ tier = \"free\" }}\nkeep = \"1h\"\naction = \"delete\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = retentiond(&["check", "-c", &path.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("retention.toml:14:18: files have no metadata to match"),
        "{out}"
    );
}

#[tokio::test]
async fn blob_rows_go_with_their_objects_first_and_a_rerun_finishes() {
    let env = Env::new().await;
    let root = env.dir.path().join("uploads");
    env.db.exec(
        "CREATE TABLE users (id int primary key, tier text);
         INSERT INTO users VALUES (1, 'free'), (2, 'paid');
         CREATE TABLE uploaded_files (id int primary key, owner_id int references users(id), uploaded_at timestamptz, blob_key text);
         INSERT INTO uploaded_files VALUES
           (1, 1, now() - interval '2 hours', 'files/1.csv'),
           (2, 1, now() - interval '2 hours', 'files/2.csv'),   -- its file is already gone (a crashed run)
           (3, 1, now() - interval '2 hours', NULL),            -- names no file
           (4, 1, now() - interval '10 minutes', 'files/4.csv'),
           (5, 2, now() - interval '2 hours', 'files/5.csv');
         CREATE TABLE data_sources (id int primary key, deleted_at timestamptz);
         INSERT INTO data_sources VALUES (10, now() - interval '1 minute'), (11, NULL), (12, now() - interval '1 minute');",
    )
    .await;
    for key in [
        "files/1.csv",
        "files/4.csv",
        "files/5.csv",
        "files/1.csv.bak",
    ] {
        file(&root, key, "data", "3 hours ago");
    }
    for key in [
        "sources/10/a.parquet",
        "sources/10/deep/b.parquet",
        "sources/11/c.parquet",
        "sources/100/d.parquet",
        "sources/12/e.parquet",
    ] {
        file(&root, key, "rows", "3 hours ago");
    }
    // Source 12 holds a link: the store never deletes it, so its row stays.
    std::os::unix::fs::symlink("/etc/hostname", root.join("sources/12/link")).unwrap();
    let rules = "[[rules]]\nname = \"uploads-free-1h\"\nstore = \"app\"\ntable = \"uploaded_files\"\nage = \"uploaded_at\"\n\
                 where = \"owner_id IN (SELECT id FROM users WHERE tier = 'free')\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                 blobs = { store = \"uploads\", key_column = \"blob_key\" }\n\n\
                 [[rules]]\nname = \"deleted-data-sources\"\nstore = \"app\"\ntable = \"data_sources\"\nage = \"deleted_at\"\nkeep = \"0s\"\naction = \"delete\"\nmax_fraction = 1.0\n\
                 blobs = { store = \"uploads\", prefix_template = \"sources/{id}/\" }\n";
    let cfg = env.config(&format!(
        "[stores.uploads]\ntype = \"filesystem\"\nroot = \"{}\"\n\n{rules}",
        root.display()
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!(plan.rule("uploads-free-1h")["matched"], 3);
    assert!(root.join("files/1.csv").exists(), "plan deleted nothing");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    let up = run.rule("uploads-free-1h");
    assert_eq!(
        (up["affected"].as_i64(), up["objects"].as_i64()),
        (Some(3), Some(1)),
        "{run}"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM uploaded_files ORDER BY id")
            .await,
        ["4", "5"]
    );
    assert!(!root.join("files/1.csv").exists());
    for kept in [
        "files/4.csv",
        "files/5.csv",
        "files/1.csv.bak",
        "sources/11/c.parquet",
        "sources/100/d.parquet",
        "sources/12/e.parquet",
    ] {
        assert!(root.join(kept).exists(), "{kept} must stay");
    }
    let ds = run.rule("deleted-data-sources");
    assert_eq!(
        (
            ds["affected"].as_i64(),
            ds["objects"].as_i64(),
            ds["protected"].as_i64()
        ),
        (Some(1), Some(2), Some(1)),
        "{run}"
    );
    assert!(
        !root.join("sources/10").exists(),
        "every file under the source's prefix went"
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM data_sources ORDER BY id")
            .await,
        ["11", "12"],
        "a row whose object is locked stays"
    );
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcome = chain::of(&records, "run_outcome", "deleted-data-sources")[0];
    assert_eq!(outcome["counts"]["objects"], 2);
}

#[tokio::test]
async fn blob_directory_links_below_the_root_are_never_crossed() {
    let env = Env::new().await;
    let root = env.dir.path().join("uploads");
    let outside = env.dir.path().join("outside");
    let outside2 = env.dir.path().join("outside2");
    let outside3 = env.dir.path().join("outside3");
    file(&outside, "secret.txt", "secret", "3 hours ago");
    file(&outside2, "x.txt", "x", "3 hours ago");
    file(&outside2, "sub/y.txt", "y", "3 hours ago");
    file(&outside3, "z.txt", "z", "3 hours ago");
    file(&root, "docs/real.txt", "r", "3 hours ago");
    file(&root, "ws/keep.txt", "k", "3 hours ago");
    file(&root, "tmp/old.txt", "o", "3 hours ago");
    file(&root, "tmp/deep/old.txt", "o", "3 hours ago");
    std::os::unix::fs::symlink(&outside, root.join("docs/link")).unwrap();
    std::os::unix::fs::symlink(&outside2, root.join("ws/link2")).unwrap();
    std::os::unix::fs::symlink(&outside3, root.join("tmp/link3")).unwrap();
    let store = format!(
        "[stores.uploads]\ntype = \"filesystem\"\nroot = \"{}\"\n\n",
        root.display()
    );

    // A plain prefix walk meets a directory link: it goes, the link and its
    // target stay.
    let cfg = env.config(&format!(
        "{store}[[rules]]\nname = \"tmp-1h\"\nstore = \"uploads\"\nprefix = \"tmp/\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n"
    ));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        !root.join("tmp/old.txt").exists() && !root.join("tmp/deep").exists(),
        "{run}"
    );
    assert!(root.join("tmp/link3").symlink_metadata().is_ok());
    assert_eq!(
        std::fs::read_to_string(outside3.join("z.txt")).unwrap(),
        "z"
    );

    // A row's key and a rule's prefix through a directory link: nothing
    // outside the root is touched, whatever the engine makes of it.
    env.db
        .exec(
            "CREATE TABLE docs (id int primary key, created_at timestamptz, blob_key text);
             INSERT INTO docs VALUES (1, now() - interval '2 hours', 'docs/link/secret.txt'),
                                     (2, now() - interval '2 hours', 'docs/real.txt');",
        )
        .await;
    let cfg = env.config(&format!(
        "{store}[[rules]]\nname = \"docs-1h\"\nstore = \"app\"\ntable = \"docs\"\nage = \"created_at\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n\
         blobs = {{ store = \"uploads\", key_column = \"blob_key\" }}\n\n\
         [[rules]]\nname = \"ws-link-1h\"\nstore = \"uploads\"\nprefix = \"ws/link2/\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\n"
    ));
    let run = json_cmd("run", &cfg, &[]);
    for (path, content) in [
        (outside.join("secret.txt"), "secret"),
        (outside2.join("x.txt"), "x"),
        (outside2.join("sub/y.txt"), "y"),
    ] {
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some(content),
            "{} is outside the root: {run}",
            path.display()
        );
    }
    assert!(root.join("docs/link").symlink_metadata().is_ok());
    assert!(root.join("ws/link2").symlink_metadata().is_ok());
    assert!(
        root.join("ws/keep.txt").exists(),
        "outside the rule's prefix"
    );
}

/// SIGKILL at several points of runs deleting files, then a run to the
/// end: every file removed is counted once across the abandoned records
/// and the last run. A delete call cannot share a transaction with its
/// count, so its items are recorded before it is made and the next run
/// counts those the store no longer has.
#[tokio::test]
async fn blob_killed_runs_count_every_file_removed() {
    let env = Env::new().await;
    let root = env.dir.path().join("scratch");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    let files = 20_000;
    for i in 0..files {
        let dir = root.join(format!("logs/{:02}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let f = std::fs::File::create(dir.join(format!("{i:05}"))).unwrap();
        f.set_modified(old).unwrap();
    }
    let cfg = fs_config(
        &env,
        &root,
        "[[rules]]\nname = \"logs\"\nstore = \"scratch\"\nprefix = \"logs/\"\nkeep = \"1h\"\naction = \"delete\"\nmax_fraction = 1.0\nbatch_size = 500\n",
    );
    let left = || {
        (0..20)
            .map(|d| {
                std::fs::read_dir(root.join(format!("logs/{d:02}")))
                    .map(|r| r.count())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };
    for wait_ms in [400, 700, 1000, 1300] {
        let mut child = spawn_run(&cfg);
        let before = left();
        // Kill once this run has removed something, or after `wait_ms`.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(wait_ms)
            || (left() == before && started.elapsed() < std::time::Duration::from_secs(20))
        {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    let last = json_cmd("run", &cfg, &[]);
    assert_eq!(last.code, 0, "{last}");
    assert_eq!(left(), 0, "every file went");
    let records = chain::assert_valid(&env.db.pool, &load_public(&env.public_key).unwrap()).await;
    let outcomes = chain::of(&records, "run_outcome", "logs");
    let counted: i64 = outcomes
        .iter()
        .map(|o| o["counts"]["affected"].as_i64().unwrap_or(0))
        .sum();
    let abandoned = outcomes
        .iter()
        .filter(|o| o["outcome"] == "abandoned")
        .count();
    assert!(abandoned >= 1, "a run was killed mid-way: {outcomes:?}");
    assert_eq!(counted, files, "{outcomes:#?}");
    assert_eq!(
        env.db
            .strings("SELECT count(*)::text FROM retentiond.run_progress")
            .await,
        ["0"],
        "nothing left in flight"
    );
}
