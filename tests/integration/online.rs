//! `check --online`: problems only the database can reveal, still located.

use crate::util::*;

#[tokio::test]
async fn online_check_locates_schema_problems_and_lists_cascades() {
    let env = Env::new().await;
    env.db.exec(
        "CREATE TABLE accounts (id int primary key, closed_at timestamptz, label text);
         CREATE TABLE billing_records (id int primary key, account_id int references accounts(id) ON DELETE CASCADE, issued_at timestamptz not null);
         CREATE TABLE sessions (id int primary key, started_at timestamptz, client_ip int);",
    )
    .await;
    let body = r#"[[rules]]
name = "closed-accounts-2y"
store = "app"
table = "accounts"
age = "closed_at"
keep = "2y"
action = "delete"

[[rules]]
name = "no-such-table"
store = "app"
table = "acounts"
age = "closed_at"
keep = "2y"
action = "delete"

[[rules]]
name = "bad-age"
store = "app"
table = "accounts"
age = "label"
keep = "2y"
action = "delete"

[[rules]]
name = "bad-where"
store = "app"
table = "accounts"
age = "closed_at"
where = "tier = 'free'"
keep = "2y"
action = "delete"

[[rules]]
name = "bad-mask"
store = "app"
table = "sessions"
age = "started_at"
keep = "30d"
action = "mask"
columns = { client_ip = "ip_prefix" }

[[guards]]
store = "app"
table = "billing_records"
age = "issued_at"
min_keep = "10y"
reason = "tax"
"#;
    let cfg = env.config(body);
    let header_lines = env.header().lines().count();
    let line = |n: usize| format!("retention.toml:{}:", header_lines + n);
    let out = retentiond(
        &["check", "--online", "-c", &cfg.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    for (n, text) in [
        (12, "rule `no-such-table`: table acounts does not exist"),
        (
            21,
            "rule `bad-age`: column accounts.label is text, not a timestamp",
        ),
        (
            30,
            "rule `bad-where`: `where` does not compile: column \"tier\" does not exist",
        ),
        (41, "rule `bad-mask`: column sessions.client_ip is integer"),
    ] {
        let expected = line(n);
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&expected) && l.contains(text)),
            "missing {expected}… {text}:\n{out}"
        );
    }
    assert!(
        out.stdout
            .contains("accounts → public.billing_records via ON DELETE CASCADE"),
        "{out}"
    );

    let good = env.config(&body[..body.find("[[rules]]\nname = \"no-such-table\"").unwrap()]);
    let out = retentiond(
        &["check", "--online", "-c", &good.display().to_string()],
        &[],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("checked online"), "{out}");
}

#[tokio::test]
async fn online_shipped_examples_fit_the_shipped_schema_and_stores() {
    use crate::emulators::{contract_vars_on, s3_client, Azure, Emulator};
    let env = Env::new().await;
    let root = env!("CARGO_MANIFEST_DIR");
    env.db
        .exec(&std::fs::read_to_string(format!("{root}/examples/schema.sql")).unwrap())
        .await;
    env.db
        .exec(&std::fs::read_to_string(format!("{root}/examples/sample-data.sql")).unwrap())
        .await;
    // The buckets and containers the examples name; check --online finds
    // a missing one (retentiond never creates them).
    let moto = Emulator::moto_with(false);
    let s3 = s3_client(&moto);
    for bucket in [
        "personaplex-media",
        "inferlabs-uploads",
        "inferlabs-sources",
        "media",
    ] {
        crate::s3::bucket(&s3, bucket, false, false).await;
    }
    let azurite = Emulator::azurite();
    let az = Azure::new(&azurite);
    for container in ["realtime-media", "uploads"] {
        az.container(container).await;
    }
    let key = env.key.display().to_string();
    let s3_endpoint = moto.url();
    let scratch = env.dir.path().display().to_string();
    let vars = contract_vars_on(&key, &env.db.url, &s3_endpoint, &az.endpoint, &scratch);
    for file in SHIPPED_CONFIGS {
        let out = retentiond(
            &["check", "--online", "-c", &format!("{root}/{file}")],
            &vars,
        );
        assert_eq!(out.code, 0, "{file}: {out}");
        assert!(out.stdout.contains("checked online"), "{file}: {out}");
    }
}
