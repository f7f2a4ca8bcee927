//! `retentiond audit ...`: read, export and verify the audit log.

use super::{exit, fail, load, output};
use crate::audit::checkpoint;
use crate::audit::key::{load_public, Signer};
use crate::audit::record::format_ts;
use crate::audit::verify::{Columns, Keyring, LogVerifier, Stored, CHUNK};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Exit code of `audit verify` when the log does not verify.
pub const INVALID: i32 = exit::INVALID;

/// Where `verify` reads the log from.
pub enum LogSource {
    /// The audit store named by a config.
    Config(PathBuf),
    /// A database URL.
    Db(String),
    /// A JSONL export.
    File(PathBuf),
}

/// The audit store's pool for a config, or an exit code.
async fn audit_pool(path: &Path) -> Result<(PgPool, crate::config::Config), i32> {
    let config = load(path)?;
    let Some(audit) = &config.audit else {
        return Err(fail(exit::USAGE, "the config has no [audit] section"));
    };
    let Some(crate::config::StoreConfig::Postgres { url, .. }) = config.stores.get(&audit.store)
    else {
        return Err(fail(
            exit::USAGE,
            format!("audit store `{}` is not a postgres store", audit.store),
        ));
    };
    let pool = connect(url).await?;
    Ok((pool, config))
}

async fn connect(url: &str) -> Result<PgPool, i32> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .map_err(|e| {
            fail(
                exit::FAILED,
                format!("cannot connect to the audit store: {e}"),
            )
        })
}

/// `audit verify`.
pub async fn verify(
    public_keys: &[PathBuf],
    source: LogSource,
    checkpoint_file: Option<&Path>,
) -> i32 {
    let mut keys = Keyring::default();
    for path in public_keys {
        match load_public(path) {
            Ok(k) => keys.add(k),
            Err(e) => return fail(exit::USAGE, e),
        }
    }
    let checkpoint = match checkpoint_file.map(checkpoint::read_last) {
        None => None,
        Some(Ok(Some(cp))) => Some(cp),
        Some(Ok(None)) => return fail(exit::USAGE, "the checkpoint file holds no checkpoint"),
        Some(Err(e)) => return fail(exit::USAGE, e),
    };
    let mut verifier = LogVerifier::new(&keys, checkpoint);
    let fed = match source {
        LogSource::File(path) => feed_file(&path, &mut verifier),
        LogSource::Db(url) => match connect(&url).await {
            Ok(pool) => feed_db(&pool, &mut verifier).await,
            Err(code) => return code,
        },
        LogSource::Config(path) => match audit_pool(&path).await {
            Ok((pool, _)) => feed_db(&pool, &mut verifier).await,
            Err(code) => return code,
        },
    };
    let result = match fed {
        Ok(Ok(())) => verifier.finish(),
        Ok(Err(invalid)) => Err(invalid),
        Err(e) => return fail(exit::FAILED, e),
    };
    match result {
        Ok(proof) => {
            match proof.range {
                None => println!("ok: no records"),
                Some((first, last)) => {
                    let keys: Vec<&str> = proof.key_ids.iter().map(String::as_str).collect();
                    let checkpoint = proof
                        .checkpoint
                        .map(|seq| format!(", checkpoint seq {seq} matches"))
                        .unwrap_or_default();
                    println!(
                        "ok: verified seq {first}..{last} ({} records), prev of first: {}, head: {}, key ids: {}{checkpoint}",
                        proof.count,
                        proof.first_prev,
                        proof.head,
                        keys.join(", ")
                    );
                }
            }
            exit::OK
        }
        Err(invalid) => {
            println!("invalid: {invalid}");
            INVALID
        }
    }
}

type Fed = Result<Result<(), crate::audit::verify::Invalid>, String>;

fn feed_file(path: &Path, verifier: &mut LogVerifier) -> Fed {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let display = path.display().to_string();
    // A reader thread splits lines while the verifier works on the previous
    // chunk; two chunks in flight bound the memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Stored>, String>>(2);
    let reader = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for bytes in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
            let mut bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(format!("{display}: {e}")));
                    return;
                }
            };
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if bytes.is_empty() {
                continue;
            }
            chunk.push(match String::from_utf8(bytes) {
                Ok(line) => Stored {
                    line,
                    columns: None,
                    malformed: None,
                },
                Err(e) => Stored {
                    line: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    columns: None,
                    malformed: Some("the line is not valid UTF-8".into()),
                },
            });
            if chunk.len() == CHUNK
                && tx
                    .send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))))
                    .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(chunk));
    });
    let mut result = Ok(Ok(()));
    for chunk in rx {
        match chunk {
            Ok(chunk) => {
                if let Err(e) = verifier.feed(&chunk) {
                    result = Ok(Err(e));
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Dropping the receiver (end of scope) stops a reader still sending.
    drop(reader);
    result
}

type Row = (
    i64,
    DateTime<Utc>,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
);

const SELECT_ROWS: &str =
    "SELECT seq, ts, kind, rule, run_id, prev, key_id, hash, record FROM retentiond.audit_log";

async fn feed_db(pool: &PgPool, verifier: &mut LogVerifier<'_>) -> Fed {
    let query = format!("{SELECT_ROWS} ORDER BY seq");
    let mut rows = sqlx::query_as::<_, Row>(&query).fetch(pool);
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some((seq, ts, kind, rule, run_id, prev, key_id, hash, record)) = rows
        .try_next()
        .await
        .map_err(|e| format!("reading retentiond.audit_log: {e}"))?
    {
        let columns = Columns {
            seq,
            ts: format_ts(ts),
            kind,
            rule,
            run_id,
            prev,
            key_id,
            hash,
        };
        chunk.push(Stored {
            line: record,
            columns: Some(columns),
            malformed: None,
        });
        if chunk.len() == CHUNK {
            if let Err(e) = verifier.feed(&chunk) {
                return Ok(Err(e));
            }
            chunk.clear();
        }
    }
    Ok(verifier.feed(&chunk))
}

/// `audit export`: the records verbatim, one per line, in seq order.
pub async fn export(
    path: &Path,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> i32 {
    let (pool, _) = match audit_pool(path).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut rows = sqlx::query_scalar::<_, String>(
        "SELECT record FROM retentiond.audit_log \
         WHERE ($1::timestamptz IS NULL OR ts >= $1) AND ($2::timestamptz IS NULL OR ts < $2) ORDER BY seq",
    )
    .bind(since)
    .bind(until)
    .fetch(&pool);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        match rows.try_next().await {
            Ok(Some(line)) => {
                if writeln!(out, "{line}").is_err() {
                    return exit::FAILED;
                }
            }
            Ok(None) => break,
            Err(e) => return fail(exit::FAILED, format!("reading retentiond.audit_log: {e}")),
        }
    }
    if out.flush().is_err() {
        return exit::FAILED;
    }
    exit::OK
}

/// `audit head`: a fresh signed checkpoint of the current head.
pub async fn head(path: &Path) -> i32 {
    let (pool, config) = match audit_pool(path).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(audit) = &config.audit else {
        return exit::USAGE;
    };
    let signer = match Signer::load(&audit.signing_key) {
        Ok(s) => s,
        Err(e) => return fail(exit::USAGE, e),
    };
    let log = match crate::audit::AuditLog::open(pool, signer, None).await {
        Ok(l) => l,
        Err(e) => return fail(exit::FAILED, e),
    };
    match log.checkpoint().await {
        Ok(Some(line)) => {
            println!("{line}");
            exit::OK
        }
        Ok(None) => fail(
            exit::FAILED,
            "the audit log is empty: nothing to checkpoint",
        ),
        Err(e) => fail(exit::FAILED, e),
    }
}

/// `audit log`: a readable table.
pub async fn log(
    path: &Path,
    rule: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> i32 {
    let (pool, _) = match audit_pool(path).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let rows = sqlx::query_scalar::<_, String>(
        "SELECT record FROM (SELECT seq, record FROM retentiond.audit_log \
         WHERE ($1::text IS NULL OR rule = $1) AND ($2::timestamptz IS NULL OR ts >= $2) \
         ORDER BY seq DESC LIMIT $3) r ORDER BY seq",
    )
    .bind(rule)
    .bind(since)
    .bind(limit)
    .fetch_all(&pool)
    .await;
    let total: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM retentiond.audit_log")
        .fetch_one(&pool)
        .await;
    match (rows, total) {
        (Ok(rows), Ok(total)) => {
            output::print_audit(rows.iter().map(String::as_str));
            if (rows.len() as i64) < total {
                println!("showing {} of {total} records (the newest that match); use --limit, --rule or --since", rows.len());
            }
            exit::OK
        }
        (Err(e), _) | (_, Err(e)) => fail(
            exit::FAILED,
            format!("reading retentiond.audit_log: {e} (has `retentiond migrate` run?)"),
        ),
    }
}

/// Report output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML file.
    Html,
    /// Markdown.
    Md,
    /// JSON.
    Json,
    /// CSV, one row per rule.
    Csv,
}

/// `report`: what the signed records say about each promise in `[from, to)`.
pub async fn report(
    path: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: ReportFormat,
    out: Option<&Path>,
    public_keys: &[PathBuf],
) -> i32 {
    if from >= to {
        return fail(exit::USAGE, "--from must be before --to");
    }
    let (pool, config) = match audit_pool(path).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut keys = Keyring::default();
    if let Some(audit) = &config.audit {
        match Signer::load(&audit.signing_key) {
            Ok(s) => keys.add(s.verifying_key()),
            Err(e) => return fail(exit::USAGE, e),
        }
    }
    for p in public_keys {
        match load_public(p) {
            Ok(k) => keys.add(k),
            Err(e) => return fail(exit::USAGE, e),
        }
    }
    let mut verifier = LogVerifier::new(&keys, None);
    let verification = match feed_db(&pool, &mut verifier).await {
        Ok(Ok(())) => verifier.finish(),
        Ok(Err(invalid)) => Err(invalid),
        Err(e) => return fail(exit::FAILED, e),
    };
    let lines = sqlx::query_scalar::<_, String>(
        "SELECT record FROM retentiond.audit_log WHERE ts >= $1 AND ts < $2 ORDER BY seq",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&pool)
    .await;
    let records: Vec<serde_json::Value> = match lines {
        Ok(lines) => lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Err(e) => return fail(exit::FAILED, format!("reading retentiond.audit_log: {e}")),
    };
    let verified = verification.is_ok();
    let report = crate::report::build(&config, &records, from, to, verification);
    let text = match format {
        ReportFormat::Html => crate::report::html::render(&report),
        ReportFormat::Md => crate::report::render::markdown(&report),
        ReportFormat::Json => crate::report::render::json(&report),
        ReportFormat::Csv => crate::report::render::csv(&report),
    };
    let written = match out {
        Some(p) => std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display())),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        return fail(exit::FAILED, e);
    }
    if verified {
        exit::OK
    } else {
        eprintln!("warning: the audit log does not verify; the report says so");
        INVALID
    }
}
