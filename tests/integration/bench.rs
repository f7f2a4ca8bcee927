//! The benchmark suite's smoke run: `scripts/bench --quick` (20,000 rows,
//! 300 objects, 2,000 audit records, 3,000 files, 400 versions) with this
//! build's binary, so the suite keeps working although `.ci/run` never runs
//! it at full size. It starts its
//! own PostgreSQL cluster (from `PG_BIN`) and emulators (`RETENTIOND_MOTO`,
//! `RETENTIOND_AZURITE`); `scripts/test` installs pg_partman and rclone.

use crate::util::BIN;
use std::process::Command;
use std::time::Instant;

/// Every table `scripts/bench` writes, by the start of its heading.
const TABLES: &[&str] = &[
    "### Delete, time-ordered heap",
    "### Delete, random heap",
    "### Mask `client_ip`",
    "### Partitioned table",
    "### Exact `plan`, time-ordered heap",
    "### Exact `plan`, random heap",
    "### Blob store: filesystem",
    "### Blob store: S3",
    "### Blob store: Azure Blob",
    "### Bounded memory: filesystem",
    "### Bounded memory: S3",
    "### Audit records",
];

/// The data rows of the markdown table under `heading`, as cells.
fn table(md: &str, heading: &str) -> Vec<Vec<String>> {
    let start = md
        .find(heading)
        .unwrap_or_else(|| panic!("no table {heading:?} in:\n{md}"));
    md[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn bench_quick_writes_every_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("BENCHMARKS.md");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench");
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(script)
        .args(["--quick", "--bin", BIN, "--out"])
        .arg(&out);
    // `cargo test --all-targets` (scripts/test) builds examples/audit_gen
    // beside the binary; only without it does scripts/bench run cargo itself.
    let audit_gen = std::path::Path::new(BIN).with_file_name("examples/audit_gen");
    if audit_gen.is_file() {
        command.arg("--audit-gen").arg(&audit_gen);
    }
    let run = command
        .env_remove("RETENTIOND_CONFIG")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run scripts/bench");
    let log = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "scripts/bench --quick failed: {}\n{log}",
        run.status
    );
    let md = std::fs::read_to_string(&out).expect("scripts/bench wrote no --out file");
    assert!(!md.contains("## Failures"), "{md}");
    for heading in TABLES {
        let rows = table(&md, heading);
        assert!(rows.len() >= 2, "{heading}: fewer than two variants:\n{md}");
        let mut retentiond_rows = 0;
        for row in &rows {
            let (variant, changed) = (&row[0], &row[1]);
            if changed.starts_with("n/a") {
                // Only a feature this build may lack: parallelism.
                assert!(
                    variant.contains("parallelism 2"),
                    "{heading}: {variant}: {changed}\n{md}"
                );
                continue;
            }
            let n: u64 = changed
                .replace(',', "")
                .parse()
                .unwrap_or_else(|_| panic!("{heading}: {variant}: not a count: {changed}\n{md}"));
            if variant.contains("no-op") {
                // Only the rows that came due since the first pass (one per 432 s here).
                assert!(
                    n <= 5,
                    "{heading}: the second mask pass changed {n} rows\n{md}"
                );
            } else {
                assert!(n > 0, "{heading}: {variant} changed nothing\n{md}");
            }
            retentiond_rows += usize::from(variant.contains("retentiond"));
        }
        assert!(retentiond_rows > 0, "{heading}: no retentiond row\n{md}");
    }
    eprintln!("scripts/bench --quick took {:?}", started.elapsed());
}
