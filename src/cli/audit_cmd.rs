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
    let pool = connect(audit_url(&config)?).await?;
    Ok((pool, config))
}

/// The URL of a config's audit store, or an exit code.
fn audit_url(config: &crate::config::Config) -> Result<&str, i32> {
    let Some(audit) = &config.audit else {
        return Err(fail(exit::USAGE, "the config has no [audit] section"));
    };
    match config.stores.get(&audit.store) {
        Some(crate::config::StoreConfig::Postgres { url, .. }) => Ok(url),
        _ => Err(fail(
            exit::USAGE,
            format!("audit store `{}` is not a postgres store", audit.store),
        )),
    }
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
        LogSource::File(path) => feed_file(&path, &mut verifier, &mut |_| {}),
        LogSource::Db(url) => match connect(&url).await {
            Ok(pool) => feed_db(&pool, &mut verifier, &mut |_| {}).await,
            Err(code) => return code,
        },
        LogSource::Config(path) => match audit_pool(&path).await {
            Ok((pool, _)) => feed_db(&pool, &mut verifier, &mut |_| {}).await,
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
            println!("{}", crate::report::verified_line(&proof));
            exit::OK
        }
        Err(invalid) => {
            println!("invalid: {invalid}");
            INVALID
        }
    }
}

type Fed = Result<Result<(), crate::audit::verify::Invalid>, String>;

/// Sees each chunk of records after the verifier took it.
type Sink<'a> = dyn FnMut(&[Stored]) + 'a;

fn feed_file(path: &Path, verifier: &mut LogVerifier, sink: &mut Sink) -> Fed {
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
                sink(&chunk);
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

async fn feed_db(pool: &PgPool, verifier: &mut LogVerifier<'_>, sink: &mut Sink<'_>) -> Fed {
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
            sink(&chunk);
            chunk.clear();
        }
    }
    if let Err(e) = verifier.feed(&chunk) {
        return Ok(Err(e));
    }
    sink(&chunk);
    Ok(Ok(()))
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
    /// CSV, one row per promise.
    Csv,
}

/// `report`'s arguments: where the log is, what verifies it, the period,
/// and the output.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A rules file: read its audit store, verify with its signing key's
    /// public half (and any --public-key), sign the report with that key
    /// (with --out), and take `[report]` names and guards from it.
    #[arg(short, long, env = "RETENTIOND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read this database's retentiond.audit_log (SELECT on it is enough).
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Read a JSONL export (`audit export`, or the `[audit] jsonl` mirror).
    #[arg(long, conflicts_with = "db", value_name = "AUDIT.jsonl")]
    pub file: Option<PathBuf>,
    /// An Ed25519 public key (PEM) that signed the log; repeat for rotated keys.
    #[arg(long = "public-key", value_name = "PEM")]
    pub public_keys: Vec<PathBuf>,
    /// A file of signed checkpoints: the log must reach the last one and
    /// match it (default with -c: `[audit] checkpoints`, when it exists).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Start of the period (RFC 3339 or a date, UTC), inclusive; default:
    /// the first record.
    #[arg(long, value_parser = super::parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// End of the period, exclusive; default: after the last record.
    #[arg(long, value_parser = super::parse_time)]
    pub to: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
    /// Write here instead of stdout (and a signature to OUT.sig when signing).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sign the report with this Ed25519 private key (PKCS#8 PEM): a
    /// detached signature of the file's bytes in OUT.sig. Needs --out.
    #[arg(long, value_name = "PRIVATE.pem")]
    pub sign_with: Option<PathBuf>,
    /// The organisation named on the report (default: `[report] organisation`).
    #[arg(long)]
    pub organisation: Option<String>,
    /// The system named on the report (default: `[report] system`).
    #[arg(long)]
    pub system: Option<String>,
}

/// `report verify`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Check a report's detached Ed25519 signature (REPORT.sig). Exit 0 when
    /// it verifies, 4 when not.
    #[command(
        after_help = "Examples:\n  retentiond report verify --public-key signing.pub.pem report.html\n  \
        retentiond report verify --public-key signing.pub.pem report.json report.json.sig\n  \
        openssl pkeyutl -verify -pubin -inkey signing.pub.pem -rawin -in report.html -sigfile report.html.sig   # the same check\n\n\
        Exit codes:\n  0  ok\n  1  a store or the audit log failed (or a run was interrupted)\n  \
        2  the config or the command line is wrong\n  3  refused by a safety check (max_fraction, clock skew, wrong target)\n  \
        4  the audit log (here: the report's signature) does not verify"
    )]
    Verify {
        /// An Ed25519 public key (PEM); repeat to accept any of several.
        #[arg(long = "public-key", required = true, value_name = "PEM")]
        public_keys: Vec<PathBuf>,
        /// The report file, exactly as it was handed on.
        report: PathBuf,
        /// Its signature: 64 raw bytes, or 128 hex digits (default: REPORT.sig).
        signature: Option<PathBuf>,
    },
}

/// `OUT.sig` next to `OUT`.
fn sig_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".sig");
    out.with_file_name(name)
}

/// A database URL without its user and password, for the report.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "a database".into(),
    }
}

/// `report`: verify the whole log first, then say what its records show
/// about each promise in `[from, to)`. A log that does not verify gets no
/// report (exit 4).
pub async fn report(args: ReportArgs) -> i32 {
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from >= to {
            return fail(exit::USAGE, "--from must be before --to");
        }
    }
    if args.sign_with.is_some() && args.out.is_none() {
        return fail(
            exit::USAGE,
            "--sign-with needs --out: the signature is written next to the report, as OUT.sig",
        );
    }
    let config = match &args.config {
        Some(path) => match load(path) {
            Ok(c) => Some(c),
            Err(code) => return code,
        },
        None => None,
    };

    let mut keys = Keyring::default();
    for p in &args.public_keys {
        match load_public(p) {
            Ok(k) => keys.add(k),
            Err(e) => return fail(exit::USAGE, e),
        }
    }
    // With -c, the config's signing key verifies the log (its public half)
    // and signs the report; an auditor's copy may lack it, then
    // --public-key is needed.
    let mut config_signer = None;
    if let Some(audit) = config.as_ref().and_then(|c| c.audit.as_ref()) {
        match Signer::load(&audit.signing_key) {
            Ok(s) => {
                keys.add(s.verifying_key());
                config_signer = Some(s);
            }
            Err(e) if args.public_keys.is_empty() => {
                return fail(
                    exit::USAGE,
                    format!("{e}; without the private key, give the public one: --public-key signing.pub.pem"),
                )
            }
            Err(e) => {
                if args.out.is_some() && args.sign_with.is_none() {
                    eprintln!("warning: the report will not be signed: {e}");
                }
            }
        }
    }
    if keys.is_empty() {
        return fail(
            exit::USAGE,
            "give the public key the log was signed with: --public-key signing.pub.pem",
        );
    }
    let signer = match &args.sign_with {
        Some(path) => match Signer::load(path) {
            Ok(s) => Some(s),
            Err(e) => return fail(exit::USAGE, e),
        },
        None if args.out.is_some() => config_signer,
        None => None,
    };

    let checkpoint_file = args.checkpoint.clone().or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.audit.as_ref())
            .and_then(|a| a.checkpoints.clone())
            .filter(|p| p.is_file())
    });
    let checkpoint = match checkpoint_file.as_deref().map(checkpoint::read_last) {
        None => None,
        Some(Ok(Some(cp))) => Some(cp),
        Some(Ok(None)) => return fail(exit::USAGE, "the checkpoint file holds no checkpoint"),
        Some(Err(e)) => return fail(exit::USAGE, e),
    };

    let mut verifier = LogVerifier::new(&keys, checkpoint.clone());
    let mut builder = crate::report::Builder::new(args.from, args.to);
    let mut sink = |chunk: &[Stored]| {
        for s in chunk {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s.line) {
                builder.add(&v);
            }
        }
    };
    let (fed, source) = if let Some(path) = &args.file {
        (
            feed_file(path, &mut verifier, &mut sink),
            format!("JSONL export {}", path.display()),
        )
    } else if let Some(url) = &args.db {
        match connect(url).await {
            Ok(pool) => (
                feed_db(&pool, &mut verifier, &mut sink).await,
                format!("retentiond.audit_log of {}", redacted(url)),
            ),
            Err(code) => return code,
        }
    } else if let Some(config) = &config {
        let url = match audit_url(config) {
            Ok(u) => u,
            Err(code) => return code,
        };
        match connect(url).await {
            Ok(pool) => (
                feed_db(&pool, &mut verifier, &mut sink).await,
                format!(
                    "retentiond.audit_log of {}, the audit store of {}",
                    redacted(url),
                    config.source.path.display()
                ),
            ),
            Err(code) => return code,
        }
    } else {
        return fail(
            exit::USAGE,
            "say where the log is: --file audit.jsonl, --db URL or -c FILE",
        );
    };
    let verified = match fed {
        Ok(Ok(())) => verifier.finish(),
        Ok(Err(invalid)) => Err(invalid),
        Err(e) => return fail(exit::FAILED, e),
    };
    let proof = match verified {
        Ok(p) => p,
        Err(invalid) => {
            eprintln!(
                "error: the audit log does not verify, so no report was made: {invalid}\n\
                 (`retentiond audit verify` says the same; a report is only made from a log whose every record verifies)"
            );
            return INVALID;
        }
    };

    let settings = config
        .as_ref()
        .map(|c| c.report.clone())
        .unwrap_or_default();
    let signed_by = match (&signer, &args.out) {
        (Some(s), Some(out)) => Some(crate::report::SignedBy {
            key_id: s.key_id().to_string(),
            file: sig_path(out)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        }),
        _ => None,
    };
    let cx = crate::report::Context {
        organisation: args.organisation.clone().or(settings.organisation),
        system: args.system.clone().or(settings.system),
        source,
        config: config.as_ref(),
        checkpoint,
        signed_by,
    };
    let report = builder.finish(&cx, &proof);
    let text = match args.format {
        ReportFormat::Html => crate::report::html::render(&report),
        ReportFormat::Md => crate::report::render::markdown(&report),
        ReportFormat::Json => crate::report::render::json(&report),
        ReportFormat::Csv => crate::report::render::csv(&report),
    };
    let Some(out) = &args.out else {
        return match std::io::stdout().write_all(text.as_bytes()) {
            Ok(()) => exit::OK,
            Err(e) => fail(exit::FAILED, e),
        };
    };
    if let Err(e) = std::fs::write(out, &text) {
        return fail(exit::FAILED, format!("{}: {e}", out.display()));
    }
    if let Some(signer) = &signer {
        let sig = match hex::decode(signer.sign(text.as_bytes())) {
            Ok(b) => b,
            Err(e) => return fail(exit::FAILED, e),
        };
        let path = sig_path(out);
        if let Err(e) = std::fs::write(&path, sig) {
            return fail(exit::FAILED, format!("{}: {e}", path.display()));
        }
        eprintln!(
            "wrote {} and its Ed25519 signature {} (key id {})",
            out.display(),
            path.display(),
            signer.key_id()
        );
    }
    exit::OK
}

/// `report verify`: does `signature` verify over the bytes of `report`
/// with one of `public_keys`?
pub fn verify_report(public_keys: &[PathBuf], report: &Path, signature: Option<&Path>) -> i32 {
    let mut keys = Vec::new();
    for path in public_keys {
        match load_public(path) {
            Ok(k) => keys.push(k),
            Err(e) => return fail(exit::USAGE, e),
        }
    }
    let bytes = match std::fs::read(report) {
        Ok(b) => b,
        Err(e) => return fail(exit::USAGE, format!("{}: {e}", report.display())),
    };
    let sig_file = signature.map_or_else(|| sig_path(report), Path::to_path_buf);
    let raw = match std::fs::read(&sig_file) {
        Ok(b) => b,
        Err(e) => return fail(exit::USAGE, format!("{}: {e}", sig_file.display())),
    };
    let decoded = if raw.len() == 64 {
        Some(raw)
    } else {
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
    };
    let Some(sig) = decoded.and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok()) else {
        return fail(
            exit::USAGE,
            format!(
                "{}: not an Ed25519 signature (64 raw bytes or 128 hex digits)",
                sig_file.display()
            ),
        );
    };
    use ed25519_dalek::Verifier as _;
    if let Some(key) = keys.iter().find(|k| k.verify(&bytes, &sig).is_ok()) {
        println!(
            "ok: {} is signed by key id {} ({})",
            report.display(),
            crate::audit::key::key_id(key),
            sig_file.display()
        );
        return exit::OK;
    }
    let ids: Vec<String> = keys.iter().map(crate::audit::key::key_id).collect();
    println!(
        "invalid: {} does not verify over {} with key id {}: the report changed after it was signed, or another key signed it",
        sig_file.display(),
        report.display(),
        ids.join(", ")
    );
    INVALID
}
