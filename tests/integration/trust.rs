//! Over-deletion paths and exact counts (the trust issue): each test here
//! reproduces a way retentiond once deleted what it must not, or removed
//! rows no record counted.

use crate::util::*;

fn rule(name: &str, table: &str, extra: &str) -> String {
    format!("[[rules]]\nname = \"{name}\"\nstore = \"app\"\ntable = \"{table}\"\nage = \"at\"\nkeep = \"30d\"\naction = \"delete\"\nmax_fraction = 1.0\n{extra}\n")
}

const PARENTS_AND_KIDS: &str = "
    CREATE TABLE parents (id int PRIMARY KEY, at timestamptz);
    CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE);
    CREATE TABLE grandkids (id int PRIMARY KEY, parent_id int REFERENCES kids ON DELETE CASCADE);
    CREATE TABLE kid_holds (kid_id int);
    INSERT INTO parents SELECT g, now() - interval '60 days' FROM generate_series(1, 10) g;
    INSERT INTO kids SELECT g, g FROM generate_series(1, 10) g;
    INSERT INTO kids SELECT 100 + g, g FROM generate_series(1, 10) g;
    INSERT INTO grandkids SELECT g, 100 + g FROM generate_series(1, 10) g;
    INSERT INTO kid_holds VALUES (3), (7);";

#[tokio::test]
async fn trust_a_hold_on_a_child_keeps_its_parent_whatever_alias_it_names() {
    let env = Env::new().await;
    env.db.exec(PARENTS_AND_KIDS).await;
    // `t` in the hold is the child's row: the style the README recommends.
    let cfg = env.config(&format!(
        "{}[[holds]]\nname = \"kid-case\"\nstore = \"app\"\ntable = \"kids\"\nwhere = \"EXISTS (SELECT 1 FROM kid_holds h WHERE h.kid_id = t.id)\"\nreason = \"case 42\"\n\
         [[holds]]\nname = \"bare\"\nstore = \"app\"\ntable = \"grandkids\"\nwhere = \"id = 5\"\nreason = \"case 43\"\n",
        rule("parents", "parents", "")
    ));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    // Parents 3 and 7 (held kids) and 5 (kid 105 has held grandkid 5).
    assert_eq!(plan.rule("parents")["protected"], 3, "{plan}");
    assert_eq!(plan.rule("parents")["matched"], 7, "{plan}");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM parents ORDER BY id")
            .await,
        ["3", "5", "7"]
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM kids WHERE id IN (3, 7)")
            .await,
        ["3", "7"]
    );
    assert_eq!(
        env.db
            .strings("SELECT id::text FROM grandkids ORDER BY id")
            .await,
        ["3", "5", "7"]
    );
}

#[tokio::test]
async fn trust_a_where_that_escapes_its_parentheses_is_refused_everywhere() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE ev (id int PRIMARY KEY, at timestamptz, keep_me bool);
             INSERT INTO ev SELECT g, now() - interval '60 days', g > 5 FROM generate_series(1, 10) g;",
        )
        .await;
    for bad in [
        "true)) OR ((false",
        "NOT keep_me) OR (true",
        "NOT keep_me; DELETE FROM ev",
        "NOT keep_me LIMIT 100",
    ] {
        let cfg = env.config(&format!(
            "{}[[guards]]\nstore = \"app\"\ntable = \"ev\"\nage = \"at\"\nmin_keep = \"1d\"\nreason = \"r\"\n\
             [[holds]]\nname = \"h\"\nstore = \"app\"\ntable = \"ev\"\nwhere = \"keep_me\"\nreason = \"r\"\n",
            rule("ev", "ev", &format!("where = {}", toml_str(bad)))
        ));
        let check = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
        assert_eq!(check.code, 2, "{bad}: {check}");
        assert!(check.stderr.contains("retention.toml:"), "located: {check}");
        assert!(check.stderr.contains("not one SQL expression"), "{check}");
        for cmd in ["plan", "run"] {
            let out = json_cmd(cmd, &cfg, &[]);
            assert_eq!(out.code, 2, "{cmd} {bad}: {out}");
        }
        assert_eq!(env.db.count("SELECT count(*) FROM ev").await, 10, "{bad}");
    }
    // A hold's `where` is held to the same rule.
    let cfg = env.config(&format!(
        "{}[[holds]]\nname = \"h\"\nstore = \"app\"\ntable = \"ev\"\nwhere = \"keep_me) OR (false\"\nreason = \"r\"\n",
        rule("ev", "ev", "")
    ));
    assert_eq!(json_cmd("run", &cfg, &[]).code, 2);
    assert_eq!(env.db.count("SELECT count(*) FROM ev").await, 10);
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[tokio::test]
async fn trust_cascaded_rows_are_predicted_counted_and_recorded_per_table() {
    let env = Env::new().await;
    env.db
        .exec(&PARENTS_AND_KIDS.replace("INSERT INTO kid_holds VALUES (3), (7);", ""))
        .await;
    // A SET NULL child loses no rows; a self-referencing cascade on the
    // rule's own table removes rows the rule did not select.
    env.db
        .exec(
            "CREATE TABLE notes (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE SET NULL);
             INSERT INTO notes SELECT g, g FROM generate_series(1, 4) g;
             ALTER TABLE parents ADD COLUMN reply_to int REFERENCES parents ON DELETE CASCADE;
             INSERT INTO parents VALUES (11, now(), 1), (12, now(), 11);",
        )
        .await;
    let cfg = env.config(&rule("parents", "parents", "batch_size = 3"));
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(plan.code, 0, "{plan}");
    let expected =
        serde_json::json!({"public.kids": 20, "public.grandkids": 10, "public.parents": 1});
    assert_eq!(plan.rule("parents")["matched"], 10, "{plan}");
    assert_eq!(plan.rule("parents")["cascaded"], expected, "{plan}");
    assert_eq!(plan.rule("parents")["skipped"], serde_json::json!({}));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("parents")["affected"], 10, "{run}");
    // Row 12 replies to 11, which replies to 1: the self-cascade takes
    // both, though the plan's one-level prediction saw only 11.
    let removed_by_cycle = 12 - env.db.count("SELECT count(*) FROM parents").await - 10;
    assert_eq!(removed_by_cycle, 2);
    let expected =
        serde_json::json!({"public.kids": 20, "public.grandkids": 10, "public.parents": 2});
    assert_eq!(run.rule("parents")["cascaded"], expected, "{run}");
    assert_eq!(env.db.count("SELECT count(*) FROM kids").await, 0);
    assert_eq!(env.db.count("SELECT count(*) FROM notes").await, 4);
    let key = retentiond::audit::key::load_public(&env.public_key).expect("public key");
    let records = crate::chain::assert_valid(&env.db.pool, &key).await;
    let outcome = crate::chain::of(&records, "run_outcome", "parents");
    assert_eq!(outcome[0]["counts"]["cascaded"], expected);
    assert_eq!(outcome[0]["counts"]["skipped"], serde_json::json!({}));
}

#[tokio::test]
async fn trust_run_never_creates_the_audit_schema() {
    let env = Env::unmigrated().await;
    env.db
        .exec("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz); INSERT INTO ev VALUES (1, now() - interval '60 days');")
        .await;
    let cfg = env.config(&rule("ev", "ev", ""));
    let run = json_cmd("run", &cfg, &[]);
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("retentiond migrate"), "{run}");
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM pg_namespace WHERE nspname = 'retentiond'")
            .await,
        0,
        "run created the schema"
    );
    assert_eq!(env.db.count("SELECT count(*) FROM ev").await, 1);
    let migrate = retentiond(&["migrate", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(migrate.code, 0, "{migrate}");
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(env.db.count("SELECT count(*) FROM ev").await, 0);
}

/// Kills a run with SIGKILL once its first batches are committed, then
/// reruns: the dead run's `abandoned` outcome carries exactly what its
/// batches removed, so the outcomes add up to the rows gone.
#[tokio::test]
async fn trust_a_killed_run_is_counted_exactly_by_the_next_one() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE parents (id int PRIMARY KEY, at timestamptz);
             CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE);
             INSERT INTO parents SELECT g, now() - interval '60 days' FROM generate_series(1, 40000) g;
             INSERT INTO kids SELECT g, g FROM generate_series(1, 40000) g;
             CREATE INDEX ON kids (parent_id);",
        )
        .await;
    // Small batches, each slowed by a trigger, so the kill lands mid-run.
    env.db
        .exec(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER DELETE ON parents FOR EACH STATEMENT EXECUTE FUNCTION slow();",
        )
        .await;
    let cfg = env.config(&rule("parents", "parents", "batch_size = 500"));
    let mut child = spawn_run(&cfg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = env
            .db
            .count("SELECT coalesce(max(affected), 0) FROM retentiond.run_progress")
            .await;
        if done >= 2000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
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
    let kids: i64 = outcomes
        .iter()
        .map(|o| o["counts"]["cascaded"]["public.kids"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(kids, 40000);
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM retentiond.run_progress")
            .await,
        0,
        "progress rows are dropped once recorded"
    );
}

#[tokio::test]
async fn trust_check_locates_settings_that_would_wait_forever_or_never_run() {
    let env = Env::new().await;
    for (extra, message) in [
        ("lock_timeout = \"0s\"", "no timeout at all"),
        ("statement_timeout = \"0s\"", "no timeout at all"),
        ("schedule = \"0 0 0 30 2 *\"", "never fires"),
    ] {
        let cfg = env.config(&rule("ev", "ev", extra));
        let check = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
        assert_eq!(check.code, 2, "{extra}: {check}");
        assert!(check.stderr.contains(message), "{extra}: {check}");
        // Pointed at the line of the setting.
        let text = std::fs::read_to_string(&cfg).unwrap();
        let line = text.lines().position(|l| l == extra).unwrap() + 1;
        assert!(
            check.stderr.contains(&format!("retention.toml:{line}:")),
            "{extra}: {check}"
        );
    }
    let cfg = env.config(&rule("ev", "a.b.c", ""));
    let check = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(check.code, 2, "{check}");
    assert!(
        check.stderr.contains("invalid table name `a.b.c`"),
        "{check}"
    );
    // Invalid UTF-8 on line 3.
    let path = env.dir.path().join("latin1.toml");
    std::fs::write(&path, b"version = 1\n\n# caf\xe9\n").unwrap();
    let check = retentiond(&["check", "-c", &path.display().to_string()], &[]);
    assert_eq!(check.code, 2, "{check}");
    assert!(check.stderr.contains("latin1.toml:3:6"), "{check}");
    assert!(check.stderr.contains("not valid UTF-8"), "{check}");
}

#[tokio::test]
async fn trust_an_unwritable_mirror_stops_records_before_the_database_has_them() {
    let env = Env::new().await;
    env.db
        .exec("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz); INSERT INTO ev VALUES (1, now() - interval '60 days');")
        .await;
    let header = env.header().replace(
        "[audit]\n",
        &format!(
            "[audit]\njsonl = \"{}/no-such-dir/audit.jsonl\"\n",
            env.dir.path().display()
        ),
    );
    let cfg = env.write(
        "retention.toml",
        &format!("{header}{}", rule("ev", "ev", "")),
    );
    for _ in 0..2 {
        let run = json_cmd("run", &cfg, &[]);
        assert_ne!(run.code, 0, "{run}");
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM retentiond.audit_log")
            .await,
        0
    );
    assert_eq!(env.db.count("SELECT count(*) FROM ev").await, 1);
}

#[tokio::test]
async fn trust_a_mask_value_a_unique_key_refuses_is_kept_and_counted_not_blocking() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE seen (id int PRIMARY KEY, at timestamptz, ip text UNIQUE);
             INSERT INTO seen SELECT g, now() - interval '60 days', '10.0.' || g || '.7' FROM generate_series(1, 50) g;
             -- 10.0.1.7 and 10.0.1.9 both mask to 10.0.1.0: the second cannot be written.
             INSERT INTO seen VALUES (51, now() - interval '60 days', '10.0.1.9');",
        )
        .await;
    let cfg = env.config(
        "[[rules]]\nname = \"ips\"\nstore = \"app\"\ntable = \"seen\"\nage = \"at\"\nkeep = \"30d\"\naction = \"mask\"\nmax_fraction = 1.0\ncolumns = { ip = \"ip_prefix\" }\n",
    );
    let plan = json_cmd("plan", &cfg, &[]);
    assert_eq!(
        (
            plan.rule("ips")["matched"].as_i64(),
            plan.rule("ips")["conflicts"].as_i64()
        ),
        (Some(50), Some(1)),
        "predicted: the second row masking to 10.0.1.0 is a conflict: {plan}"
    );
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("ips")["affected"], 50, "{run}");
    assert_eq!(run.rule("ips")["conflicts"], 1, "{run}");
    assert_eq!(run.rule("ips")["skipped"], serde_json::json!({}), "{run}");
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM seen WHERE ip LIKE '%.0'")
            .await,
        50
    );
    let key = retentiond::audit::key::load_public(&env.public_key).expect("public key");
    let records = crate::chain::assert_valid(&env.db.pool, &key).await;
    let outcome = crate::chain::of(&records, "run_outcome", "ips");
    assert_eq!(outcome[0]["counts"]["conflicts"], 1);
    assert_eq!(outcome[0]["counts"]["skipped"], serde_json::json!({}));
}

#[tokio::test]
async fn trust_a_row_a_restrict_key_refuses_is_kept_and_counted_not_blocking() {
    let env = Env::new().await;
    env.db
        .exec(
            "CREATE TABLE parents (id int PRIMARY KEY, at timestamptz);
             CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE);
             CREATE TABLE invoices (id int PRIMARY KEY, kid_id int REFERENCES kids ON DELETE RESTRICT);
             INSERT INTO parents SELECT g, now() - interval '60 days' FROM generate_series(1, 30) g;
             INSERT INTO kids SELECT g, g FROM generate_series(1, 30) g;
             -- Parent 7's kid has an invoice: deleting parent 7 cascades
             -- into kid 7, which the invoice's RESTRICT key refuses.
             INSERT INTO invoices VALUES (1, 7);",
        )
        .await;
    let cfg = env.config(&rule("parents", "parents", ""));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("parents")["affected"], 29, "{run}");
    assert_eq!(
        run.rule("parents")["skipped"],
        serde_json::json!({"foreign_key": 1})
    );
    // Exactly the kids of deleted parents, not the one rolled back.
    assert_eq!(
        run.rule("parents")["cascaded"],
        serde_json::json!({"public.kids": 29})
    );
    assert_eq!(env.db.strings("SELECT id::text FROM parents").await, ["7"]);
    assert_eq!(env.db.strings("SELECT id::text FROM kids").await, ["7"]);
}

#[tokio::test]
async fn trust_check_says_each_keep_in_words_and_warns_on_minutes() {
    let env = Env::new().await;
    let body = rule("ev", "ev", "").replace("keep = \"30d\"", "keep = \"1m\"");
    let cfg = env.config(&body);
    let check = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
    assert_eq!(check.code, 0, "{check}");
    assert!(
        check.stdout.contains("ev: delete ev after 1 minute"),
        "{check}"
    );
    assert!(
        check
            .stdout
            .contains("warning: rule `ev`: keep = \"1m\" is 1 minute; a month is \"1mo\""),
        "{check}"
    );
    let cfg = env.config(&rule("ev", "ev", ""));
    let check = retentiond(&["check", "-c", &cfg.display().to_string()], &[]);
    assert!(
        check.stdout.contains("ev: delete ev after 30 days"),
        "{check}"
    );
    assert!(!check.stdout.contains("warning"), "{check}");
}

#[test]
fn trust_an_unreachable_database_is_named_once_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = retentiond::audit::key::generate(&dir.path().join("keys")).unwrap();
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\n{}{}",
            key.display(),
            rule("a", "t", ""),
            rule("b", "t2", "")
        ),
    )
    .unwrap();
    for cmd in ["plan", "run"] {
        let started = std::time::Instant::now();
        let out = retentiond(&[cmd, "-c", &cfg.display().to_string()], &[]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{cmd} took {:?}",
            started.elapsed()
        );
        assert_ne!(out.code, 0, "{out}");
        let said = out
            .stderr
            .matches("127.0.0.1:1): cannot connect: connection refused")
            .count();
        assert_eq!(said, 1, "{cmd}: one error for the store: {out}");
    }
}

/// The server reads a `where` as PostgreSQL's parser did in `check`, even
/// where the database turns `standard_conforming_strings` off.
#[tokio::test]
async fn trust_where_is_read_with_standard_conforming_strings_whatever_the_database_says() {
    let env = Env::new().await;
    env.db
        .exec(&format!(
            "ALTER DATABASE {} SET standard_conforming_strings = off;
             CREATE TABLE ev (id int PRIMARY KEY, at timestamptz, note text);
             INSERT INTO ev VALUES (1, now() - interval '60 days', E'a\\\\'), (2, now() - interval '60 days', 'b');",
            env.db.name
        ))
        .await;
    // `note = 'a\'`: the note a-backslash, as the parser reads it.
    let cfg = env.config(&rule("ev", "ev", "where = \"note = 'a\\\\'\""));
    let run = json_cmd("run", &cfg, &[]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.rule("ev")["affected"], 1, "{run}");
    assert_eq!(env.db.strings("SELECT id::text FROM ev").await, ["2"]);
}

#[tokio::test]
async fn trust_a_role_without_the_runtime_grants_is_told_which_to_apply() {
    let env = Env::new().await;
    env.db
        .exec("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz); CREATE ROLE bare LOGIN; GRANT SELECT, DELETE ON ev TO bare;")
        .await;
    let text = env.header().replace("postgres@", "bare@") + &rule("ev", "ev", "");
    let cfg = env.write("bare.toml", &text);
    let run = json_cmd("run", &cfg, &[]);
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("--grant-to"), "{run}");
    assert!(run.stderr.contains("permission denied"), "{run}");
}

#[tokio::test]
async fn trust_migrate_without_rights_says_which_it_needs() {
    let env = Env::unmigrated().await;
    env.db
        .exec(&format!(
            "CREATE ROLE weak LOGIN; REVOKE CREATE ON DATABASE {} FROM PUBLIC;",
            env.db.name
        ))
        .await;
    let text = env.header().replace("postgres@", "weak@");
    let cfg = env.write("weak.toml", &text);
    let out = retentiond(&["migrate", "-c", &cfg.display().to_string()], &[]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("CREATE on the database"), "{out}");
}

#[tokio::test]
async fn trust_a_wrong_table_or_column_gets_the_closest_names() {
    let env = Env::new().await;
    env.db
        .exec("CREATE TABLE sessions (id int PRIMARY KEY, created_at timestamptz, seen date, note text);")
        .await;
    let body = rule("s", "sesions", "");
    let cfg = env.config(&body);
    let out = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("did you mean `sessions`?"), "{out}");
    let cfg = env.config(&rule("s", "sessions", "").replace("age = \"at\"", "age = \"created\""));
    let out = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("did you mean `created_at`?"), "{out}");
    assert!(
        out.stderr
            .contains("its timestamp columns: `created_at`, `seen`"),
        "{out}"
    );
    let cfg = env.config(&rule("s", "sessions", "").replace("age = \"at\"", "age = \"note\""));
    let out = json_cmd("plan", &cfg, &[]);
    assert!(
        out.stdout
            .contains("its timestamp columns: `created_at`, `seen`"),
        "{out}"
    );
}

#[test]
fn trust_s3_without_credentials_says_what_was_tried_and_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s3.toml");
    std::fs::write(
        &cfg,
        "[stores.media]\ntype = \"s3\"\nbucket = \"media\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:1\"\n\
         [[rules]]\nname = \"a\"\nstore = \"media\"\nprefix = \"audio/\"\nkeep = \"1h\"\naction = \"delete\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["plan", "-c", &cfg.display().to_string()])
        .env_clear()
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RETENTIOND_LOG", "warn")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("no AWS credentials for bucket media at http://127.0.0.1:1"),
        "{text}"
    );
    assert!(
        text.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{text}"
    );
    assert!(text.contains("tried: Environment"), "{text}");
    assert!(!text.contains("Error {"), "no Debug dump: {text}");
}

#[tokio::test]
async fn trust_text_output_fits_80_columns() {
    let env = Env::new().await;
    env.db.exec(PARENTS_AND_KIDS).await;
    let cfg = env.config(&format!(
        "{}[[holds]]\nname = \"kid-case\"\nstore = \"app\"\ntable = \"kids\"\nwhere = \"EXISTS (SELECT 1 FROM kid_holds h WHERE h.kid_id = t.id)\"\nreason = \"case 42\"\n",
        rule("a-rather-long-rule-name-for-parents", "parents", "")
    ));
    for cmd in ["plan", "run", "check"] {
        let mut args = vec![cmd, "-c"];
        let path = cfg.display().to_string();
        args.push(&path);
        if cmd == "check" {
            args.push("--online");
        }
        let out = retentiond(&args, &[("COLUMNS", "80")]);
        assert_eq!(out.code, 0, "{out}");
        for line in out.stdout.lines() {
            assert!(
                line.chars().count() <= 80,
                "{cmd}: {} columns: {line}",
                line.chars().count()
            );
        }
    }
    let path = cfg.display().to_string();
    let out = retentiond(&["audit", "log", "-c", &path], &[("COLUMNS", "80")]);
    assert_eq!(out.code, 0, "{out}");
    for line in out.stdout.lines() {
        assert!(line.chars().count() <= 80, "audit log: {line}");
    }
}
