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
