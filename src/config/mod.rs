//! The rules file: parse (`raw`), interpolate `${VAR}` (`interpolate`),
//! validate (`validate`) into the typed [`Config`] the rest of the crate uses.
//!
//! A [`Config`] cannot be invalid: store names resolve, durations are parsed,
//! every rule has its effective settings. Problems are collected, not returned
//! one at a time, so `retentiond check` shows them all with file, line and
//! column ([`ConfigError`]).

pub mod diagnostic;
pub mod duration;
pub mod interpolate;
#[allow(missing_docs)] // mirrors the file's keys, documented in README.md
pub mod raw;
pub mod sql_expr;
pub mod validate;

pub use diagnostic::{ConfigError, Problem};
pub use duration::Keep;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated rules file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from and its hash.
    pub source: Source,
    /// `[defaults]` with built-in values filled in.
    pub defaults: Settings,
    /// `[audit]`, required by `run` and `serve`.
    pub audit: Option<AuditConfig>,
    /// `[stores.NAME]` by name.
    pub stores: BTreeMap<String, StoreConfig>,
    /// Where each `[stores.NAME]` table is, for errors found later
    /// (`check --online`).
    pub store_spans: BTreeMap<String, Range<usize>>,
    /// `[[rules]]`, in file order.
    pub rules: Vec<Rule>,
    /// `[[guards]]`: must-keep floors.
    pub guards: Vec<Guard>,
    /// `[[holds]]`: legal holds.
    pub holds: Vec<Hold>,
    /// `[report]`.
    pub report: ReportSettings,
}

/// `[report]`: what `retentiond report` names the report's subject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportSettings {
    /// The organisation whose promises these are.
    pub organisation: Option<String>,
    /// The system the rules apply to.
    pub system: Option<String>,
}

/// The file a config was read from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// Its text, before interpolation.
    pub text: String,
    /// Lowercase hex SHA-256 of the text: the `config_sha256` of audit records.
    pub sha256: String,
}

/// Settings a rule inherits from `[defaults]` and may override.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Cron expression with seconds, UTC.
    pub schedule: String,
    /// Rows or objects per batch (one short transaction each).
    pub batch_size: u32,
    /// Refuse a run that would affect more than this fraction of the target.
    pub max_fraction: f64,
    /// Refuse when the database clock and ours differ by more than this.
    pub max_clock_skew: Duration,
    /// `lock_timeout` for each batch transaction.
    pub lock_timeout: Duration,
    /// `statement_timeout` for each statement.
    pub statement_timeout: Duration,
    /// The daemon starts each scheduled run up to this much later (a fixed
    /// offset per rule), to spread rules that share a schedule.
    pub jitter: Duration,
    /// Table rules: batches run over this many disjoint heap ranges at once,
    /// each on its own connection (at most what the store's pool has free).
    pub parallelism: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            schedule: "0 */15 * * * *".to_string(),
            batch_size: 5000,
            max_fraction: 0.5,
            max_clock_skew: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
            jitter: Duration::ZERO,
            parallelism: 1,
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A postgres store holding schema `retentiond`.
    pub store: String,
    /// Path to the Ed25519 PKCS#8 PEM private key.
    pub signing_key: PathBuf,
    /// Optional JSONL mirror.
    pub jsonl: Option<PathBuf>,
    /// Optional file of signed checkpoints.
    pub checkpoints: Option<PathBuf>,
}

/// A store and how to reach it.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A PostgreSQL database.
    Postgres {
        /// Connection URL.
        url: String,
        /// Pool size.
        max_connections: u32,
    },
    /// An S3 bucket (or an S3-compatible server).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Region.
        region: Option<String>,
        /// Service URL for S3-compatible servers.
        endpoint: Option<String>,
        /// Path-style addressing.
        force_path_style: bool,
        /// Bucket owner id the bucket must belong to.
        expected_account: Option<String>,
    },
    /// An Azure Blob container.
    AzureBlob {
        /// Storage account name.
        account: String,
        /// Container name.
        container: String,
        /// Blob service URL.
        endpoint: Option<String>,
        /// SAS token.
        sas_token: Option<String>,
        /// Account key.
        access_key: Option<String>,
        /// Account name the container must belong to.
        expected_account: Option<String>,
    },
    /// A directory tree on local disk.
    Filesystem {
        /// The root; nothing outside it is ever touched.
        root: PathBuf,
    },
}

impl StoreConfig {
    /// The `type` value of this store.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Postgres { .. } => "postgres",
            StoreConfig::S3 { .. } => "s3",
            StoreConfig::AzureBlob { .. } => "azure_blob",
            StoreConfig::Filesystem { .. } => "filesystem",
        }
    }

    /// True for object stores (s3, azure_blob, filesystem).
    pub fn is_blob(&self) -> bool {
        !matches!(self, StoreConfig::Postgres { .. })
    }
}

/// A schema-qualified (or search-path) table name from the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema, when written as `schema.table`.
    pub schema: Option<String>,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Splits `schema.table` at its first dot.
    pub fn parse(text: &str) -> Option<TableName> {
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (Some(s.to_string()), n.to_string()),
            None => (None, text.to_string()),
        };
        let ok = |s: &str| !s.is_empty() && !s.contains('\0');
        (ok(&name) && schema.as_deref().is_none_or(ok)).then_some(TableName { schema, name })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One retention rule, with its effective settings.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Free text shown in plans, records and reports.
    pub description: Option<String>,
    /// The policy clause it enforces.
    pub policy_ref: Option<String>,
    /// Store name (resolves in [`Config::stores`]).
    pub store: String,
    /// How long data is kept: `keep`, or with `keep_expr` its `keep_min`
    /// (what guards are compared with; nothing younger is ever due).
    pub keep: Keep,
    /// A retention period read from the data, per row (table rules).
    pub keep_expr: Option<KeepExpr>,
    /// Defaults merged with the rule's overrides.
    pub settings: Settings,
    /// What it applies to and what it does.
    pub target: Target,
    /// Where its values are in the file.
    pub spans: RuleSpans,
}

/// `keep_expr`: each row's retention period from the data, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepExpr {
    /// SQL on the row (alias `t`) yielding an `interval`.
    pub expr: String,
    /// The shortest period any row gets.
    pub min: Keep,
    /// The longest, and the period of a row whose expression is NULL.
    pub max: Keep,
}

impl Rule {
    /// The promise's period as text: `30d`, or `1h..7d` with `keep_expr`.
    pub fn keep_text(&self) -> String {
        match &self.keep_expr {
            Some(k) => format!("{}..{}", k.min, k.max),
            None => self.keep.to_string(),
        }
    }

    /// The period in words: `30 days`, or `1 hour to 7 days, per row`.
    pub fn keep_in_words(&self) -> String {
        match &self.keep_expr {
            Some(k) => format!(
                "{} to {}, per row (keep_expr)",
                k.min.in_words(),
                k.max.in_words()
            ),
            None => self.keep.in_words(),
        }
    }

    /// `delete` or `mask`.
    pub fn action_name(&self) -> &'static str {
        match &self.target {
            Target::Table(t) => match t.action {
                TableAction::Delete => "delete",
                TableAction::Mask(_) => "mask",
            },
            Target::Prefix(_) => "delete",
        }
    }

    /// True for a rule on a blob store's prefix.
    pub fn is_blob(&self) -> bool {
        matches!(self.target, Target::Prefix(_))
    }

    /// The table or `store:prefix` the rule applies to, for display.
    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Table(t) => t.table.to_string(),
            Target::Prefix(p) => p.prefix.clone(),
        }
    }
}

/// Byte spans of a rule's values, for errors found later (`check --online`).
#[derive(Debug, Clone, Default)]
pub struct RuleSpans {
    /// The whole `[[rules]]` table.
    pub rule: Range<usize>,
    /// `table`.
    pub table: Range<usize>,
    /// `age`, or `age_expr`.
    pub age: Range<usize>,
    /// `age_unit`, when given.
    pub age_unit: Option<Range<usize>>,
    /// `keep_expr`, when given.
    pub keep_expr: Option<Range<usize>>,
    /// `where`.
    pub filter: Option<Range<usize>>,
    /// Each masked column's value.
    pub columns: BTreeMap<String, Range<usize>>,
}

/// What a rule applies to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Rows of a SQL table.
    Table(TableRule),
    /// Objects under a prefix of a blob store.
    Prefix(PrefixRule),
}

/// A rule on a SQL table.
#[derive(Debug, Clone)]
pub struct TableRule {
    /// The table.
    pub table: TableName,
    /// Where each row's age comes from.
    pub age: Age,
    /// Extra SQL predicate.
    pub filter: Option<String>,
    /// Delete or mask.
    pub action: TableAction,
    /// Blobs to delete with each row.
    pub blobs: Option<BlobLink>,
}

/// Where a row's age comes from: a column, or an SQL expression on the
/// row (alias `t`); a time, or an integer count of `unit`s since the Unix
/// epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Age {
    /// The column or expression.
    pub source: AgeSource,
    /// For integer ages: the unit (`age_unit`).
    pub unit: Option<EpochUnit>,
}

/// The column or expression an [`Age`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgeSource {
    /// `age = "column"`.
    Column(String),
    /// `age_expr = "SQL expression"` (alias `t`).
    Expr(String),
}

/// The unit of an integer age (`age_unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochUnit {
    /// `s`: seconds since the epoch.
    Seconds,
    /// `ms`: milliseconds.
    Millis,
    /// `us`: microseconds.
    Micros,
}

impl EpochUnit {
    /// Parses `s`, `ms` or `us`.
    pub fn parse(text: &str) -> Option<EpochUnit> {
        match text {
            "s" => Some(EpochUnit::Seconds),
            "ms" => Some(EpochUnit::Millis),
            "us" => Some(EpochUnit::Micros),
            _ => None,
        }
    }

    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            EpochUnit::Seconds => "s",
            EpochUnit::Millis => "ms",
            EpochUnit::Micros => "us",
        }
    }

    /// Microseconds in one unit.
    pub fn micros(self) -> i64 {
        match self {
            EpochUnit::Seconds => 1_000_000,
            EpochUnit::Millis => 1_000,
            EpochUnit::Micros => 1,
        }
    }
}

impl Age {
    /// The column name, when the age is a plain column.
    pub fn column(&self) -> Option<&str> {
        match &self.source {
            AgeSource::Column(c) => Some(c),
            AgeSource::Expr(_) => None,
        }
    }

    /// The expression, when the age is `age_expr`.
    pub fn expr(&self) -> Option<&str> {
        match &self.source {
            AgeSource::Expr(e) => Some(e),
            AgeSource::Column(_) => None,
        }
    }
}

impl fmt::Display for Age {
    /// The column name, or `(expression)`; ` [ms]` for integer ages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            AgeSource::Column(c) => write!(f, "{c}")?,
            AgeSource::Expr(e) => write!(f, "({e})")?,
        }
        match self.unit {
            Some(u) => write!(f, " [{}]", u.as_str()),
            None => Ok(()),
        }
    }
}

/// What a table rule does to an expired row.
#[derive(Debug, Clone)]
pub enum TableAction {
    /// Delete it.
    Delete,
    /// Overwrite some columns.
    Mask(MaskSpec),
}

/// The columns a mask rule overwrites.
#[derive(Debug, Clone)]
pub struct MaskSpec {
    /// Column → strategy, in name order.
    pub columns: Vec<(String, MaskStrategy)>,
    /// What to do with text that is not an IP address.
    pub on_unparsable: OnUnparsable,
    /// What to do with a row whose masked form a unique key refuses.
    pub on_conflict: OnConflict,
}

/// What happens to a row whose masked form duplicates another row's
/// unique key (`on_conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Keep it unmasked, count it and say so.
    #[default]
    Skip,
    /// Delete it: the row it duplicates already carries all that may be
    /// kept. Guards and holds still keep it.
    Delete,
}

/// How a column is masked.
#[derive(Clone, PartialEq, Eq)]
pub enum MaskStrategy {
    /// IPv4 → /24, IPv6 → /48 (an IPv4-mapped IPv6 address as IPv4).
    IpPrefix {
        /// Text `ip:port` and `[v6]:port` keep their port.
        keep_port: bool,
    },
    /// A keyed, stable pseudonym (HMAC-SHA-256).
    Hmac {
        /// The key bytes.
        key: Vec<u8>,
    },
    /// NULL.
    Null,
    /// The text `redacted`.
    Redact,
    /// In a `json`/`jsonb` column, each path (object keys from the root)
    /// masked by its own strategy; the rest of the document untouched.
    Json(Vec<(Vec<String>, MaskStrategy)>),
}

impl fmt::Debug for MaskStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.write_str(self.name())
    }
}

impl MaskStrategy {
    /// The strategy's config name.
    pub fn name(&self) -> &'static str {
        match self {
            MaskStrategy::IpPrefix { .. } => "ip_prefix",
            MaskStrategy::Hmac { .. } => "hmac",
            MaskStrategy::Null => "null",
            MaskStrategy::Redact => "redact",
            MaskStrategy::Json(_) => "json paths",
        }
    }
}

/// What happens to a text IP column value that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnparsable {
    /// NULL, or `redacted` in a NOT NULL column (the default).
    Replace,
    /// Leave it, still counted.
    Keep,
}

/// Objects referenced by a table's rows, deleted before the rows.
#[derive(Debug, Clone)]
pub struct BlobLink {
    /// A blob store.
    pub store: String,
    /// Where the objects are.
    pub locator: BlobLocator,
}

/// How a row names its objects.
#[derive(Debug, Clone)]
pub enum BlobLocator {
    /// A column holding the object key.
    KeyColumn(String),
    /// A prefix built from columns, e.g. `sources/{id}/`.
    PrefixTemplate(String),
}

/// A rule on a blob store prefix.
#[derive(Debug, Clone)]
pub struct PrefixRule {
    /// Key prefix.
    pub prefix: String,
    /// `all` or `current`.
    pub versions: Versions,
    /// Treat each prefix at this depth as one unit.
    pub group_by_prefix_depth: Option<u32>,
    /// Only objects whose metadata has these values.
    pub match_metadata: BTreeMap<String, String>,
    /// Metadata key holding the age instead of last-modified.
    pub age_metadata: Option<String>,
}

/// Which versions of an expired key go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Every version and delete marker.
    All,
    /// Only the current one (a delete marker on versioned buckets).
    Current,
}

/// A must-keep floor on a table.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Store name.
    pub store: String,
    /// Guarded table.
    pub table: TableName,
    /// Where each row's age comes from.
    pub age: Age,
    /// No row younger than this is ever deleted.
    pub min_keep: Keep,
    /// Why (shown in plans and reports).
    pub reason: String,
    /// The `[[guards]]` table in the file.
    pub span: Range<usize>,
}

/// A legal hold.
#[derive(Debug, Clone)]
pub struct Hold {
    /// Hold name.
    pub name: String,
    /// Store name.
    pub store: String,
    /// What it holds.
    pub target: HoldTarget,
    /// Why.
    pub reason: String,
    /// The `[[holds]]` table in the file.
    pub span: Range<usize>,
}

/// What a hold covers.
#[derive(Debug, Clone)]
pub enum HoldTarget {
    /// Rows of a table matching an SQL predicate.
    Rows {
        /// The table.
        table: TableName,
        /// Held rows.
        filter: String,
    },
    /// Every object under a prefix.
    Prefix(String),
}

impl Config {
    /// Reads and validates `path`, interpolating from the process environment.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                // Located like any other problem: the valid prefix is the
                // same bytes in the lossy text.
                let at = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                return Err(LoadError::Invalid(ConfigError {
                    path: path.display().to_string(),
                    text,
                    problems: vec![diagnostic::Problem::new(
                        at..end,
                        "the file is not valid UTF-8",
                        "save it as UTF-8 (retentiond reads TOML, which is always UTF-8)",
                    )],
                }));
            }
        };
        Config::from_text(path, text, &|name| std::env::var(name).ok()).map_err(LoadError::Invalid)
    }

    /// Validates `text` as if read from `path`, looking variables up with `env`.
    pub fn from_text(
        path: &Path,
        text: String,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        validate::validate(path, text, env)
    }

    /// The rules named in `names` (all when empty), or the unknown name.
    pub fn select_rules(&self, names: &[String]) -> Result<Vec<&Rule>, String> {
        if names.is_empty() {
            return Ok(self.rules.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.rules.iter().find(|r| &r.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
                    format!("no rule named `{n}`; the rules are: {}", known.join(", "))
                })
            })
            .collect()
    }

    /// Guards on `store`.`table`.
    pub fn guards_on<'a>(
        &'a self,
        store: &'a str,
        table: &'a TableName,
    ) -> impl Iterator<Item = &'a Guard> {
        self.guards
            .iter()
            .filter(move |g| g.store == store && &g.table == table)
    }

    /// Guards on any table of `store` (cascades may reach them).
    pub fn guards_in<'a>(&'a self, store: &'a str) -> impl Iterator<Item = &'a Guard> {
        self.guards.iter().filter(move |g| g.store == store)
    }

    /// Row holds on any table of `store` (cascades may reach them), with
    /// their table and `where`.
    pub fn row_holds_in<'a>(
        &'a self,
        store: &'a str,
    ) -> impl Iterator<Item = (&'a Hold, &'a TableName, &'a str)> {
        self.holds.iter().filter_map(move |h| match &h.target {
            HoldTarget::Rows { table, filter } if h.store == store => {
                Some((h, table, filter.as_str()))
            }
            _ => None,
        })
    }

    /// Row holds on `store`.`table`.
    pub fn row_holds_on<'a>(
        &'a self,
        store: &'a str,
        table: &'a TableName,
    ) -> impl Iterator<Item = (&'a Hold, &'a str)> {
        self.holds.iter().filter_map(move |h| match &h.target {
            HoldTarget::Rows { table: t, filter } if h.store == store && t == table => {
                Some((h, filter.as_str()))
            }
            _ => None,
        })
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error(transparent)]
    Invalid(ConfigError),
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
