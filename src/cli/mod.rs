//! The command line: parse arguments, run a command, map the result to an
//! exit code (0 ok, 1 runtime failure, 2 config or usage error, 3 refused by
//! a safety check, 4 the audit log does not verify).

mod audit_cmd;
mod check;
mod output;

use crate::audit::{self, AuditLog, Signer};
use crate::config::{Config, LoadError};
use crate::engine::{Cancel, Runner};
use crate::plan::{self, PlanOptions};
use crate::store::Stores;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A store or the audit log failed.
    pub const FAILED: i32 = 1;
    /// The config or the command line is wrong.
    pub const USAGE: i32 = 2;
    /// A safety check refused (max_fraction, clock skew, wrong target).
    pub const REFUSED: i32 = 3;
    /// `audit verify` (or `report`): the audit log does not verify.
    pub const INVALID: i32 = 4;
}

/// The exit-code table, as every `--help` ends (a macro, so `concat!` can
/// put it after each command's examples).
macro_rules! exit_codes {
    () => {
        "Exit codes:\n  0  ok\n  1  a store or the audit log failed (or a run was interrupted)\n  \
         2  the config or the command line is wrong\n  3  refused by a safety check (max_fraction, clock skew, wrong target)\n  \
         4  the audit log does not verify"
    };
}

/// Data-retention enforcement: declarative rules, batched purges and IP
/// masking, signed audit records.
#[derive(Debug, Parser)]
#[command(name = "retentiond", version, about, long_about = None, after_help = concat!(
    "Examples:\n  retentiond check -c retention.toml --online\n  retentiond plan -c retention.toml --at 2027-01-01\n  \
     retentiond run -c retention.toml\n  retentiond serve -c retention.toml\n\n",
    exit_codes!()
))]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Report output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables.
    Text,
    /// One JSON object on stdout.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a rules file; with --online also check it against the databases.
    #[command(after_help = concat!("Examples:\n  retentiond check -c retention.toml            # the file alone: located errors\n  retentiond check -c retention.toml --online   # and the databases and buckets\n\n", exit_codes!()))]
    Check {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Connect and verify tables, columns, types, `where` and cascades.
        #[arg(long)]
        online: bool,
    },
    /// Show what each rule would delete or mask now (or --at another time). Changes nothing.
    #[command(after_help = concat!("Examples:\n  retentiond plan -c retention.toml\n  retentiond plan -c retention.toml --rule session-logs-30d --at 2027-01-01\n  retentiond plan -c retention.toml --format json | jq '.rules[] | {rule, matched, cascaded}'\n\n", exit_codes!()))]
    Plan {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Only these rules (repeatable).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Simulate another "now": RFC 3339 or a date (midnight UTC).
        #[arg(long, value_parser = parse_time)]
        at: Option<DateTime<Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Execute the rules once, then exit.
    #[command(after_help = concat!("Examples:\n  retentiond run -c retention.toml\n  retentiond run -c retention.toml --rule telemetry-90d --format json\n  retentiond run -c retention.toml --dry-run       # exactly `plan`\n\n", exit_codes!()))]
    Run {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Only these rules (repeatable).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Exactly `plan`: change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run as of an earlier time (never later than the database's now).
        #[arg(long, value_parser = parse_time)]
        at: Option<DateTime<Utc>>,
        /// Lift the max_fraction cap for this run.
        #[arg(long)]
        allow_large: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run as a service: every rule on its schedule, /healthz, /readyz and
    /// /metrics over HTTP; SIGTERM finishes the current batch and exits.
    #[command(after_help = concat!("Examples:\n  retentiond serve -c retention.toml --listen 0.0.0.0:9464 --log-format json\n  curl -s localhost:9464/readyz; curl -s localhost:9464/metrics\n\n", exit_codes!()))]
    Serve {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// HTTP address for /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:9464")]
        listen: std::net::SocketAddr,
        /// After SIGTERM, how long running rules get to finish their batch.
        #[arg(long, default_value = "25s", value_parser = parse_grace)]
        grace_period: std::time::Duration,
        /// Rules running at the same time, at most.
        #[arg(long, default_value_t = 2)]
        max_concurrent_rules: usize,
    },
    /// Create or update schema `retentiond` (run as an admin role) in the
    /// audit store and every PostgreSQL store with rules.
    #[command(after_help = concat!("Examples:\n  retentiond migrate -c retention.toml\n  retentiond migrate -c retention.toml --grant-to retentiond_runtime\n\n", exit_codes!()))]
    Migrate {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Also grant this (runtime) role exactly what `run` and `serve`
        /// need on schema `retentiond` (docs/runtime-grants.sql).
        #[arg(long, value_name = "ROLE")]
        grant_to: Option<String>,
    },
    /// Write a new Ed25519 signing key pair (signing.pem, signing.pub.pem).
    #[command(after_help = concat!("Examples:\n  retentiond keygen --out ./keys    # keep signing.pem secret; give signing.pub.pem to auditors\n\n", exit_codes!()))]
    Keygen {
        /// Directory for the key files.
        #[arg(long)]
        out: PathBuf,
    },
    /// A report for auditors: the whole audit log is verified first (a log
    /// that does not verify gets no report), then per promise over
    /// [--from, --to): runs, rows deleted, masked and cascaded, what was
    /// kept back, the latest cutoff and the compliance lag, with the holds,
    /// guards and config hashes in force. Needs only the public key.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = concat!(
            "Examples:\n  retentiond report --file audit.jsonl --public-key signing.pub.pem --checkpoint checkpoints.jsonl --out report.html\n  \
             retentiond report --db postgres://auditor@db/app --public-key signing.pub.pem --from 2026-11-01 --to 2026-12-01 --format json\n  \
             retentiond report -c retention.toml --from 2026-11-01 --to 2026-12-01 --out report.html   # also writes report.html.sig\n  \
             retentiond report verify --public-key signing.pub.pem report.html\n\n",
            exit_codes!()
        )
    )]
    Report {
        /// `report verify`: check a report's signature.
        #[command(subcommand)]
        command: Option<audit_cmd::ReportCommand>,
        /// Where the log is, the period, the output.
        #[command(flatten)]
        args: audit_cmd::ReportArgs,
    },
    /// Read the audit log.
    Audit {
        /// What to read.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// A readable table of recorded events.
    #[command(after_help = concat!("Examples:\n  retentiond audit log -c retention.toml --rule session-logs-30d --since 2026-11-01\n\n", exit_codes!()))]
    Log {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only records at or after this time.
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// At most this many records (newest).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Check every signature, the hash chain, gapless seq and (with
    /// --checkpoint) truncation. Exit 0 when valid, 4 when not.
    #[command(after_help = concat!("Examples:\n  retentiond audit verify --public-key signing.pub.pem --file audit.jsonl --checkpoint checkpoints.jsonl\n  retentiond audit verify --public-key signing.pub.pem --db postgres://auditor@db/app\n\n", exit_codes!()))]
    Verify {
        /// An Ed25519 public key (PEM); repeat for rotated keys.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
        /// Read the audit store named by this rules file.
        #[arg(short, long, group = "source")]
        config: Option<PathBuf>,
        /// Read this database's retentiond.audit_log.
        #[arg(long, group = "source")]
        db: Option<String>,
        /// Read a JSONL export.
        #[arg(long, group = "source")]
        file: Option<PathBuf>,
        /// A file of signed checkpoints; its last one must be reached and match.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print the records verbatim, one per line (JSONL), in seq order.
    #[command(after_help = concat!("Examples:\n  retentiond audit export -c retention.toml > audit.jsonl\n\n", exit_codes!()))]
    Export {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
        /// Only records at or after this time.
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only records before this time.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
    },
    /// Print a fresh signed checkpoint of the log's head.
    #[command(after_help = concat!("Examples:\n  retentiond audit head -c retention.toml >> checkpoints.jsonl\n\n", exit_codes!()))]
    Head {
        /// The rules file.
        #[arg(short, long, env = "RETENTIOND_CONFIG")]
        config: PathBuf,
    },
}

fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    crate::config::duration::parse_fixed(text).map_err(|e| format!("{e}: {}", e.help()))
}

/// Parses RFC 3339, or a date as midnight UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "`{text}` is not an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)"
    ))
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Check { config, online } => check::run(&config, online).await,
        Command::Plan {
            config,
            rules,
            at,
            format,
        } => plan_cmd(&config, &rules, at, format).await,
        Command::Run {
            config,
            rules,
            dry_run: true,
            at,
            format,
            ..
        } => plan_cmd(&config, &rules, at, format).await,
        Command::Run {
            config,
            rules,
            at,
            allow_large,
            format,
            ..
        } => {
            run_cmd(
                &config,
                &rules,
                PlanOptions {
                    at,
                    allow_large,
                    for_run: true,
                },
                format,
            )
            .await
        }
        Command::Serve {
            config,
            listen,
            grace_period,
            max_concurrent_rules,
        } => {
            let loaded = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let options = crate::daemon::ServeOptions {
                config,
                listen,
                grace: grace_period,
                max_concurrent_rules,
            };
            match crate::daemon::serve(loaded, options, crate::daemon::os_signals()).await {
                Ok(()) => exit::OK,
                Err(e @ crate::daemon::ServeError::Config(_)) => fail(exit::USAGE, e),
                Err(e) => fail(exit::FAILED, e),
            }
        }
        Command::Migrate { config, grant_to } => migrate_cmd(&config, grant_to.as_deref()).await,
        Command::Keygen { out } => match audit::key::generate(&out) {
            Ok((private, public, id)) => {
                println!("key id {id}\nprivate key {} (keep secret; point [audit] signing_key at it)\npublic key  {} (give to auditors)", private.display(), public.display());
                exit::OK
            }
            Err(e) => fail(exit::FAILED, e),
        },
        Command::Report { command, args } => match command {
            Some(audit_cmd::ReportCommand::Verify {
                public_keys,
                report,
                signature,
            }) => audit_cmd::verify_report(&public_keys, &report, signature.as_deref()),
            None => audit_cmd::report(args).await,
        },
        Command::Audit { command } => match command {
            AuditCommand::Log {
                config,
                rule,
                since,
                limit,
            } => audit_cmd::log(&config, rule, since, limit).await,
            AuditCommand::Verify {
                public_keys,
                config,
                db,
                file,
                checkpoint,
            } => {
                let source = match (config, db, file) {
                    (Some(c), _, _) => audit_cmd::LogSource::Config(c),
                    (_, Some(url), _) => audit_cmd::LogSource::Db(url),
                    (_, _, Some(f)) => audit_cmd::LogSource::File(f),
                    _ => {
                        return fail(
                            exit::USAGE,
                            "say where the log is: -c FILE, --db URL or --file audit.jsonl",
                        )
                    }
                };
                audit_cmd::verify(&public_keys, source, checkpoint.as_deref()).await
            }
            AuditCommand::Export {
                config,
                since,
                until,
            } => audit_cmd::export(&config, since, until).await,
            AuditCommand::Head { config } => audit_cmd::head(&config).await,
        },
    }
}

pub(crate) fn fail(code: i32, e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    code
}

/// Loads the config, printing located problems (exit 2) on failure.
pub fn load(path: &std::path::Path) -> Result<Config, i32> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(LoadError::Invalid(e)) => {
            eprint!("{}", e.render(std::io::stderr().is_terminal()));
            eprintln!("{} problem(s) in {}", e.problems.len(), e.path);
            Err(exit::USAGE)
        }
        Err(e) => Err(fail(exit::USAGE, e)),
    }
}

fn open(config: &Config) -> Result<Stores, i32> {
    Stores::open(config).map_err(|e| fail(exit::FAILED, e))
}

/// Opens the stores and says once, within seconds, which database cannot
/// be reached and why; rules on it then fail at once with that message.
async fn open_probed(config: &Config) -> Result<Stores, i32> {
    let stores = open(config)?;
    for e in stores.probe_postgres().await {
        eprintln!("error: {e}");
    }
    Ok(stores)
}

async fn plan_cmd(
    path: &std::path::Path,
    names: &[String],
    at: Option<DateTime<Utc>>,
    format: Format,
) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules = match config.select_rules(names) {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    let stores = match open_probed(&config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let plan = plan::plan(
        &config,
        &stores,
        &rules,
        PlanOptions {
            at,
            ..PlanOptions::default()
        },
    )
    .await;
    stores.close().await;
    output::print_reports(&plan.rules, plan.at, format, false);
    // A plan fails only when a store does; would_refuse is information.
    if plan
        .rules
        .iter()
        .any(|r| r.outcome == plan::Outcome::Failed)
    {
        exit::FAILED
    } else {
        exit::OK
    }
}

async fn open_audit(config: &Config, stores: &Stores) -> Result<AuditLog, i32> {
    let Some(audit_cfg) = &config.audit else {
        return Err(fail(exit::USAGE, "the config has no [audit] section; `run` writes audit records and needs one (see README)"));
    };
    let signer = Signer::load(&audit_cfg.signing_key).map_err(|e| fail(exit::USAGE, e))?;
    let Some(pg) = stores.postgres(&audit_cfg.store) else {
        return Err(fail(
            exit::USAGE,
            format!("audit store `{}` is not a postgres store", audit_cfg.store),
        ));
    };
    if pg.down().is_some() {
        return Err(fail(
            exit::FAILED,
            format!(
                "the audit log (store `{}`) is unavailable, so nothing was run",
                audit_cfg.store
            ),
        ));
    }
    AuditLog::open(pg.pool.clone(), signer, audit_cfg.jsonl.clone())
        .await
        .map_err(|e| fail(exit::FAILED, e))
}

async fn run_cmd(
    path: &std::path::Path,
    names: &[String],
    options: PlanOptions,
    format: Format,
) -> i32 {
    if options.at.is_some_and(|at| at > Utc::now()) {
        return fail(
            exit::USAGE,
            "run --at may only move time backwards; use `plan --at` to look into the future",
        );
    }
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules = match config.select_rules(names) {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    let stores = match open_probed(&config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let audit = match open_audit(&config, &stores).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cancel = Cancel::default();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("Interrupted: finishing the current batch, then stopping.");
            on_signal.cancel();
        }
    });
    #[cfg(unix)]
    {
        let on_term = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                tracing::warn!("SIGTERM: finishing the current batch, then stopping.");
                on_term.cancel();
            }
        });
    }
    let progress =
        output::ProgressBars::new(format == Format::Text && std::io::stderr().is_terminal());
    let runner = Runner {
        config: &config,
        stores: &stores,
        audit: &audit,
        options,
        cancel,
        progress: &progress,
    };
    let report = runner.run(&rules).await;
    progress.finish();
    stores.close().await;
    output::print_reports(&report.rules, report.at, format, true);
    plan::worst_exit_code(report.rules.iter().map(|r| &r.outcome))
}

/// A failed migration, with the rights it needs when it lacked them.
fn migrate_error(store: &str, e: &audit::AuditError) -> String {
    let denied = match e {
        audit::AuditError::Db(d) => d
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "42501"),
        audit::AuditError::Migrate(m) => m.to_string().contains("permission denied"),
        _ => false,
    };
    if denied {
        format!(
            "store `{store}`: {e}\n  migrate needs an admin role: CREATE on the database (to create schema `retentiond`), \
             or ownership of an existing schema `retentiond`; run it as the database owner, e.g. \
             `GRANT CREATE ON DATABASE <db> TO <admin role>` first"
        )
    } else {
        format!("store `{store}`: {e}")
    }
}

async fn migrate_cmd(path: &std::path::Path, grant_to: Option<&str>) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(audit_cfg) = &config.audit else {
        return fail(
            exit::USAGE,
            "the config has no [audit] section: nothing to migrate",
        );
    };
    let stores = match open_probed(&config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if stores.postgres(&audit_cfg.store).is_none() {
        return fail(
            exit::USAGE,
            format!("audit store `{}` is not a postgres store", audit_cfg.store),
        );
    }
    // The audit store, then every other PostgreSQL store a rule changes:
    // each batch records its counts in its own database's
    // retentiond.run_progress.
    let mut names = vec![audit_cfg.store.clone()];
    for rule in &config.rules {
        if !rule.is_blob() && !names.contains(&rule.store) {
            names.push(rule.store.clone());
        }
    }
    for name in names {
        let Some(pg) = stores.postgres(&name) else {
            continue;
        };
        let before = audit::log::is_migrated(&pg.pool).await.unwrap_or(false);
        match audit::log::migrate(&pg.pool).await {
            Ok(()) => {
                let what = if before {
                    "was already up to date"
                } else {
                    "has been created or updated"
                };
                println!("schema `retentiond` {what} in store `{name}`");
            }
            Err(e) => return fail(exit::FAILED, migrate_error(&name, &e)),
        }
        if let Some(role) = grant_to {
            match audit::log::grant_runtime(&pg.pool, role).await {
                Ok(()) => println!("granted role `{role}` the runtime rights in store `{name}`"),
                Err(e) => return fail(exit::FAILED, format!("store `{name}`: {e}")),
            }
        }
    }
    exit::OK
}
