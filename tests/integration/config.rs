//! `retentiond check`: the contract is accepted, mistakes are located.

use crate::util::*;

fn key_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = retentiond::audit::key::generate(&dir.path().join("k")).unwrap();
    (dir, key)
}

#[test]
fn config_contract_example_is_accepted() {
    let (_dir, key) = key_dir();
    let contract = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/fixtures/contract.toml"
    );
    let key = key.display().to_string();
    let out = retentiond(
        &["check", "-c", contract],
        &contract_vars(&key, "postgres://u@127.0.0.1:1/app"),
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("ok") && out.stdout.contains("15 rule(s), 1 guard(s)"),
        "{out}"
    );
}

#[test]
fn config_contract_missing_env_var_is_named_with_its_line() {
    let (_dir, key) = key_dir();
    let contract = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/fixtures/contract.toml"
    );
    let key = key.display().to_string();
    let out = retentiond(
        &["check", "-c", contract],
        &[("RETENTIOND_SIGNING_KEY", key.as_str())],
    );
    assert_eq!(out.code, 2, "{out}");
    // url = "${APP_DATABASE_URL}" is on line 41 of the contract, value at column 7.
    assert!(
        out.stderr
            .contains("contract.toml:41:7: environment variable `APP_DATABASE_URL` is not set"),
        "{out}"
    );
    assert!(out.stderr.contains("`S3_ENDPOINT` is not set"), "{out}");
}

#[test]
fn config_unknown_key_points_at_it() {
    let (dir, key) = key_dir();
    let path = dir.path().join("retention.toml");
    std::fs::write(
        &path,
        format!(
            "version = 1\n[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"postgres://x@h/db\"\n\n[[rules]]\nname = \"a\"\nstore = \"app\"\ntable = \"t\"\nage = \"c\"\nkep = \"30d\"\naction = \"delete\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = retentiond(&["check", "-c", &path.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("retention.toml:14:1: unknown field `kep`"),
        "{out}"
    );
}

#[test]
fn config_every_semantic_problem_reported_with_line_and_fix() {
    let (dir, key) = key_dir();
    let path = dir.path().join("retention.toml");
    let text = format!(
        r#"version = 1
[defaults]
schedule = "*/5 * * *"
[audit]
store = "app"
signing_key = "{key}"
[stores.app]
type = "postgres"
url = "${{NOPE_DATABASE_URL}}"

[[rules]]
name = "logs"
store = "app"
table = "logs"
age = "created_at"
keep = "30 days"
action = "delete"

[[rules]]
name = "logs"
store = "ap"
table = "logs"
age = "created_at"
keep = "30d"
action = "delete"

[[rules]]
name = "billing"
store = "app"
table = "billing_records"
age = "issued_at"
keep = "9y"
action = "delete"

[[guards]]
store = "app"
table = "billing_records"
age = "issued_at"
min_keep = "10y"
reason = "tax law"
"#,
        key = key.display()
    );
    std::fs::write(&path, text).unwrap();
    let out = retentiond(&["check", "-c", &path.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out}");
    for expected in [
        "retention.toml:3:12: invalid cron expression `*/5 * * *`",
        "retention.toml:9:7: environment variable `NOPE_DATABASE_URL` is not set",
        "retention.toml:16:8: invalid duration `30 days`",
        "retention.toml:20:8: duplicate rule name `logs`",
        "retention.toml:21:9: unknown store `ap`",
        "retention.toml:32:8: rule keeps billing_records for 9y, less than the guard's min_keep 10y (tax law)",
    ] {
        assert!(out.stderr.contains(expected), "missing `{expected}` in:\n{out}");
    }
    assert!(
        out.stderr
            .contains("raise `keep` to at least \"10y\" (the guard at line 35)"),
        "{out}"
    );
    assert!(out.stderr.contains("first used at line 12"), "{out}");
    assert!(out.stderr.contains("6 problem(s)"), "{out}");
}

#[test]
fn config_blob_prefix_escaping_root_is_rejected() {
    let (dir, key) = key_dir();
    let path = dir.path().join("retention.toml");
    std::fs::write(
        &path,
        format!(
            "[audit]\nstore = \"app\"\nsigning_key = \"{}\"\n[stores.app]\ntype = \"postgres\"\nurl = \"postgres://x@h/db\"\n[stores.scratch]\ntype = \"filesystem\"\nroot = \"/tmp/x\"\n[[rules]]\nname = \"a\"\nstore = \"scratch\"\nprefix = \"work/../../etc/\"\nkeep = \"1h\"\naction = \"delete\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = retentiond(&["check", "-c", &path.display().to_string()], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains(
            "retention.toml:13:10: prefix `work/../../etc/` leaves or re-enters the root"
        ),
        "{out}"
    );
}

#[test]
fn cli_run_at_in_future_is_a_usage_error() {
    let out = retentiond(
        &["run", "-c", "/nonexistent.toml", "--at", "2999-01-01"],
        &[],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("only move time backwards"), "{out}");
}

#[test]
fn cli_missing_file_is_a_usage_error() {
    let out = retentiond(&["check", "-c", "/nonexistent/retention.toml"], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("cannot read /nonexistent/retention.toml"),
        "{out}"
    );
}

#[test]
fn config_shipped_examples_are_valid() {
    let (_dir, key) = key_dir();
    let key = key.display().to_string();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in SHIPPED_CONFIGS {
        let path = format!("{root}/{file}");
        let out = retentiond(
            &["check", "-c", &path],
            &contract_vars(&key, "postgres://u@127.0.0.1:1/app"),
        );
        assert_eq!(out.code, 0, "{file}: {out}");
    }
}

/// `rust-version` in Cargo.toml is the real minimum: no locked dependency
/// declares a newer one (a user on the declared toolchain can build).
#[test]
fn config_rust_version_is_the_locked_dependencies_minimum() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let version = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let packages = meta["packages"].as_array().expect("packages");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "retentiond")
        .and_then(|p| p["rust_version"].as_str())
        .expect("rust-version is declared");
    let (newest, who) = packages
        .iter()
        .filter_map(|p| Some((p["rust_version"].as_str()?, p["name"].as_str()?)))
        .max_by_key(|(v, _)| version(v))
        .expect("some dependency declares one");
    assert!(
        version(ours) >= version(newest),
        "rust-version {ours} is below {who}'s {newest}: raise it in Cargo.toml and docker/Dockerfile"
    );
}

/// The examples name the seed policies by file name, not by a path on
/// somebody's machine.
#[test]
fn config_examples_name_seed_files_not_machine_paths() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "examples/personaplex.toml",
        "examples/personaizer.toml",
        "examples/inferlabs.toml",
        "examples/schema.sql",
        "retention.toml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read");
        assert!(!text.contains("/work/"), "{file} names a machine path");
    }
    for (file, seed) in [
        ("examples/personaplex.toml", "000_c8f048f99943baf9.txt"),
        ("examples/personaizer.toml", "001_0067688c0b7f7a4e.txt"),
        ("examples/inferlabs.toml", "003_8d55cb58fa7a15ec.txt"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read");
        assert!(text.contains(seed), "{file} names its seed {seed}");
    }
}

/// Every command's `--help` shows examples and the exit codes.
#[test]
fn config_every_help_has_examples_and_exit_codes() {
    for cmd in [
        &["--help"][..],
        &["check", "--help"],
        &["plan", "--help"],
        &["run", "--help"],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["keygen", "--help"],
        &["audit", "log", "--help"],
        &["audit", "verify", "--help"],
        &["audit", "export", "--help"],
        &["audit", "head", "--help"],
        &["report", "--help"],
        &["report", "verify", "--help"],
    ] {
        let out = retentiond(cmd, &[]);
        assert_eq!(out.code, 0, "{cmd:?}: {out}");
        assert!(
            out.stdout.contains("Examples:\n  retentiond"),
            "{cmd:?}: {out}"
        );
        assert!(
            out.stdout.contains("Exit codes:\n  0  ok"),
            "{cmd:?}: {out}"
        );
        assert!(
            out.stdout.contains("3  refused by a safety check"),
            "{cmd:?}"
        );
    }
}
