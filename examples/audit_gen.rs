//! Writes N signed, chained audit records (realistic `run_outcome`s) as a
//! JSONL export, to measure `retentiond audit verify` at scale; with `--db`,
//! appends M records to a real audit log to measure the write rate: one
//! writer appending one record at a time (one transaction each), then with
//! W > 1 also W concurrent writers in this process, whose appends the log
//! writes in shared transactions (group commit).
//!
//! cargo run --release --example audit_gen -- KEY.pem OUT.jsonl N [DB_URL M [W]]

use retentiond::audit::key::Signer;
use retentiond::audit::record::{seal, Event, GENESIS};
use serde_json::{json, Map};
use std::io::Write;
use std::time::Instant;

fn event(i: i64) -> Event {
    let mut f = Map::new();
    let v = json!({
        "run_id": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
        "rule": "session-logs-30d", "store": "app", "target": "session_logs", "action": "delete",
        "keep": "30d", "cutoff": "2026-10-24T06:04:19.125000Z", "outcome": "ok",
        "counts": {"matched": 5000 + i % 97, "affected": 5000 + i % 97, "protected": i % 7, "batches": 1},
        "started": "2026-11-23T06:04:19.100000Z", "finished": "2026-11-23T06:04:19.900000Z",
        "description": "Session logs are kept 30 days for debugging and security, then deleted",
        "policy_ref": "PersonaPlex Privacy Policy, 6. Data Retention"
    });
    if let serde_json::Value::Object(o) = v {
        f = o;
    }
    Event {
        kind: "run_outcome",
        fields: f,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: audit_gen KEY.pem OUT.jsonl N [DB_URL M [W]]");
        std::process::exit(2);
    }
    let signer = Signer::load(std::path::Path::new(&args[1]))?;
    let n: i64 = args[3].parse()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[2])?);
    let (mut prev, mut bytes) = (GENESIS.to_string(), 0usize);
    let start = Instant::now();
    for seq in 1..=n {
        let sealed = seal(&event(seq), seq, chrono::Utc::now(), &prev, &signer)?;
        bytes += sealed.line.len() + 1;
        writeln!(out, "{}", sealed.line)?;
        prev = sealed.hash;
    }
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sealed {n} records in {secs:.2} s ({:.0} records/s, one core), {} bytes/record",
        n as f64 / secs,
        bytes / n.max(1) as usize
    );
    if let (Some(url), Some(m)) = (args.get(4), args.get(5)) {
        let m: i64 = m.parse()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await?;
        let log = retentiond::audit::AuditLog::open(pool, signer, None).await?;
        let start = Instant::now();
        for i in 0..m {
            log.append(&event(i)).await?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("appended {m} records to retentiond.audit_log in {secs:.2} s ({:.0} records/s, one writer, one transaction each)", m as f64 / secs);
        let writers: i64 = args.get(6).map_or(Ok(1), |w| w.parse())?;
        if writers > 1 {
            let log = std::sync::Arc::new(log);
            let start = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut i = m + w;
                        while i < 2 * m {
                            log.append(&event(i)).await?;
                            i += writers;
                        }
                        Ok::<_, retentiond::audit::AuditError>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
            let secs = start.elapsed().as_secs_f64();
            println!("group commit: {writers} concurrent writers appended {m} records in {secs:.2} s ({:.0} records/s)", m as f64 / secs);
        }
    }
    Ok(())
}
