//! From [`RawConfig`] to [`Config`]: resolve names, parse durations and cron
//! expressions, merge defaults, and collect every problem with its span.

use super::diagnostic::{ConfigError, Problem};
use super::duration::{parse_fixed, Keep};
use super::interpolate::interpolate;
use super::raw::{
    RawBlobLink, RawConfig, RawDefaults, RawMask, RawMaskLeaf, RawMaskTable, RawRule, RawStore,
    SStr,
};
use super::*;
use std::str::FromStr;
use toml::Spanned;

/// Collects problems and interpolates values.
struct Ctx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    text: &'a str,
    problems: Vec<Problem>,
    base_dir: PathBuf,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        self.problems.push(Problem::new(span, message, help));
    }

    /// The value with `${VAR}` replaced; records a problem and returns None on
    /// a missing variable.
    fn string(&mut self, value: &SStr) -> Option<String> {
        match interpolate(value.get_ref(), |n| (self.env)(n)) {
            Ok(s) => Some(s),
            Err(e) => {
                let help = match &e {
                    super::interpolate::InterpolateError::Missing(name) => {
                        format!("export {name}=... before running, or write the value directly")
                    }
                    _ => "write ${NAME} to use an environment variable, or $${ for a literal ${"
                        .to_string(),
                };
                self.err(value.span(), e.to_string(), help);
                None
            }
        }
    }

    fn opt_string(&mut self, value: &Option<SStr>) -> Option<String> {
        value.as_ref().and_then(|v| self.string(v))
    }

    /// A required string key of a table spanning `table_span`.
    fn required(
        &mut self,
        value: &Option<SStr>,
        key: &str,
        table_span: Range<usize>,
        what: &str,
    ) -> Option<String> {
        match value {
            Some(v) => {
                let s = self.string(v)?;
                if s.trim().is_empty() {
                    self.err(
                        v.span(),
                        format!("`{key}` is empty"),
                        format!("give the {what} a `{key}`"),
                    );
                    return None;
                }
                Some(s)
            }
            None => {
                self.err(
                    table_span,
                    format!("missing `{key}`"),
                    format!("add `{key} = ...` to this {what}"),
                );
                None
            }
        }
    }

    fn keep(&mut self, value: &SStr) -> Option<Keep> {
        let text = self.string(value)?;
        match Keep::parse(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                self.err(
                    value.span(),
                    format!("invalid duration `{text}`: {e}"),
                    e.help(),
                );
                None
            }
        }
    }

    fn fixed(&mut self, value: &SStr) -> Option<std::time::Duration> {
        let text = self.string(value)?;
        match parse_fixed(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    value.span(),
                    format!("invalid duration `{text}`: {e}"),
                    e.help(),
                );
                None
            }
        }
    }

    /// One-based line of a byte offset, for messages that cite another place.
    fn line(&self, offset: usize) -> usize {
        super::diagnostic::line_col(self.text, offset).0
    }

    fn path(&self, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        if path.is_relative() {
            self.base_dir.join(path)
        } else {
            path
        }
    }
}

pub(super) fn validate(
    path: &Path,
    text: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let display = path.display().to_string();
    let raw: RawConfig = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().to_string();
            let help = syntax_help(&message);
            return Err(ConfigError {
                path: display,
                text,
                problems: vec![Problem::new(span, message, help)],
            });
        }
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Ctx {
        env,
        text: &text,
        problems: Vec::new(),
        base_dir,
    };

    if let Some(v) = &raw.version {
        if *v.get_ref() != 1 {
            cx.err(
                v.span(),
                format!("unsupported version {}", v.get_ref()),
                "this retentiond reads `version = 1`",
            );
        }
    }
    let defaults = settings(
        &mut cx,
        &Settings::default(),
        &SettingsKeys::from_defaults(raw.defaults.as_ref()),
    );
    let stores = stores(&mut cx, &raw);
    let audit = audit(&mut cx, &raw, &stores);
    let guards = guards(&mut cx, &raw, &stores);
    let holds = holds(&mut cx, &raw, &stores);
    let rules = rules(&mut cx, &raw, &stores, &defaults, &guards);
    let report = ReportSettings {
        organisation: raw
            .report
            .as_ref()
            .and_then(|r| cx.opt_string(&r.organisation)),
        system: raw.report.as_ref().and_then(|r| cx.opt_string(&r.system)),
    };

    let mut problems = std::mem::take(&mut cx.problems);
    if problems.is_empty() {
        let sha256 = sha256_hex(text.as_bytes());
        Ok(Config {
            source: Source {
                path: path.to_path_buf(),
                text,
                sha256,
            },
            defaults,
            audit,
            stores,
            store_spans: raw
                .stores
                .iter()
                .map(|(name, table)| (name.clone(), table.span()))
                .collect(),
            rules,
            guards: guards.into_iter().map(|(g, _)| g).collect(),
            holds,
            report,
        })
    } else {
        problems.sort_by_key(|p| p.span.offset());
        Err(ConfigError {
            path: display,
            text,
            problems,
        })
    }
}

fn syntax_help(message: &str) -> String {
    if message.contains("unknown field") {
        // serde lists the expected keys after "expected"; keep its wording.
        "remove the key or fix its spelling; the keys this table accepts are listed above"
            .to_string()
    } else if message.contains("duplicate key") {
        "each key may appear once per table".to_string()
    } else {
        "see the config reference in README.md".to_string()
    }
}

/// The settings keys, from `[defaults]` or a rule.
struct SettingsKeys<'a> {
    schedule: Option<&'a SStr>,
    batch_size: Option<&'a Spanned<i64>>,
    max_fraction: Option<&'a Spanned<f64>>,
    max_clock_skew: Option<&'a SStr>,
    lock_timeout: Option<&'a SStr>,
    statement_timeout: Option<&'a SStr>,
    jitter: Option<&'a SStr>,
    parallelism: Option<&'a Spanned<i64>>,
}

impl<'a> SettingsKeys<'a> {
    fn from_defaults(d: Option<&'a RawDefaults>) -> SettingsKeys<'a> {
        SettingsKeys {
            schedule: d.and_then(|d| d.schedule.as_ref()),
            batch_size: d.and_then(|d| d.batch_size.as_ref()),
            max_fraction: d.and_then(|d| d.max_fraction.as_ref()),
            max_clock_skew: d.and_then(|d| d.max_clock_skew.as_ref()),
            lock_timeout: d.and_then(|d| d.lock_timeout.as_ref()),
            statement_timeout: d.and_then(|d| d.statement_timeout.as_ref()),
            jitter: d.and_then(|d| d.jitter.as_ref()),
            parallelism: d.and_then(|d| d.parallelism.as_ref()),
        }
    }

    fn from_rule(r: &'a RawRule) -> SettingsKeys<'a> {
        SettingsKeys {
            schedule: r.schedule.as_ref(),
            batch_size: r.batch_size.as_ref(),
            max_fraction: r.max_fraction.as_ref(),
            max_clock_skew: r.max_clock_skew.as_ref(),
            lock_timeout: r.lock_timeout.as_ref(),
            statement_timeout: r.statement_timeout.as_ref(),
            jitter: r.jitter.as_ref(),
            parallelism: r.parallelism.as_ref(),
        }
    }
}

fn settings(cx: &mut Ctx, base: &Settings, keys: &SettingsKeys) -> Settings {
    let mut s = base.clone();
    if let Some(v) = keys.schedule {
        if let Some(text) = cx.string(v) {
            match cron::Schedule::from_str(&text) {
                Ok(sched) if sched.upcoming(chrono::Utc).next().is_none() => cx.err(
                    v.span(),
                    format!("cron expression `{text}` never fires (no such date)"),
                    "check day-of-month against month, e.g. February has no 30th; \"0 0 3 * * *\" runs daily at 03:00 UTC",
                ),
                Ok(_) => s.schedule = text,
                Err(_) => {
                    let fields = text.split_whitespace().count();
                    let why = if (6..=7).contains(&fields) {
                        "a field is out of range or malformed".to_string()
                    } else {
                        format!("it has {fields} fields, cron here has 6 (or 7 with a year)")
                    };
                    cx.err(
                        v.span(),
                        format!("invalid cron expression `{text}`: {why}"),
                        "six fields, seconds first, UTC: \"sec min hour day-of-month month day-of-week\", e.g. \"0 */15 * * * *\"",
                    )
                }
            }
        }
    }
    if let Some(v) = keys.batch_size {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=1_000_000).contains(&n) => s.batch_size = n,
            _ => cx.err(
                v.span(),
                format!("batch_size {} is out of range", v.get_ref()),
                "use a whole number from 1 to 1000000; 5000 suits most tables",
            ),
        }
    }
    if let Some(v) = keys.parallelism {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=16).contains(&n) => s.parallelism = n,
            _ => cx.err(
                v.span(),
                format!("parallelism {} is out of range", v.get_ref()),
                "use a whole number from 1 to 16, at most the store's max_connections; 2 suits a 2-core server",
            ),
        }
    }
    if let Some(v) = keys.max_fraction {
        let f = *v.get_ref();
        if f > 0.0 && f <= 1.0 {
            s.max_fraction = f;
        } else {
            cx.err(v.span(), format!("max_fraction {f} is out of range"), "use a number above 0 and at most 1.0, e.g. 0.5 to refuse runs that would touch more than half the rows");
        }
    }
    for (value, slot) in [
        (keys.max_clock_skew, &mut s.max_clock_skew),
        (keys.lock_timeout, &mut s.lock_timeout),
        (keys.statement_timeout, &mut s.statement_timeout),
        (keys.jitter, &mut s.jitter),
    ] {
        if let Some(v) = value {
            if let Some(d) = cx.fixed(v) {
                *slot = d;
            }
        }
    }
    for (name, value, d) in [
        ("lock_timeout", keys.lock_timeout, s.lock_timeout),
        (
            "statement_timeout",
            keys.statement_timeout,
            s.statement_timeout,
        ),
    ] {
        // PostgreSQL reads 0 as "no timeout"; we send whole milliseconds.
        if let Some(v) = value.filter(|_| d.as_millis() == 0) {
            cx.err(
                v.span(),
                format!(
                    "`{name}` of 0 is no timeout at all: PostgreSQL reads 0 as \"wait forever\""
                ),
                "use at least 1ms; \"5s\" suits most tables",
            );
        }
    }
    s
}

const STORE_TYPES: &str = "postgres, s3, azure_blob or filesystem";

fn stores(cx: &mut Ctx, raw: &RawConfig) -> BTreeMap<String, StoreConfig> {
    let mut out = BTreeMap::new();
    for (name, table) in &raw.stores {
        let span = table.span();
        let st = table.get_ref();
        let Some(kind) = &st.kind else {
            cx.err(
                span,
                format!("store `{name}` has no `type`"),
                format!("add `type = ` one of {STORE_TYPES}"),
            );
            continue;
        };
        let allowed: &[&str] = match kind.get_ref().as_str() {
            "postgres" => &["url", "max_connections"],
            "s3" => &[
                "bucket",
                "region",
                "endpoint",
                "force_path_style",
                "expected_account",
            ],
            "azure_blob" => &[
                "account",
                "container",
                "endpoint",
                "sas_token",
                "access_key",
                "expected_account",
            ],
            "filesystem" => &["root"],
            other => {
                cx.err(
                    kind.span(),
                    format!("unknown store type `{other}`"),
                    format!("use one of {STORE_TYPES}"),
                );
                continue;
            }
        };
        for (key, span) in present_store_keys(st) {
            if !allowed.contains(&key) {
                cx.err(
                    span,
                    format!("`{key}` does not apply to a {} store", kind.get_ref()),
                    format!("a {} store takes: {}", kind.get_ref(), allowed.join(", ")),
                );
            }
        }
        let what = "store";
        let store = match kind.get_ref().as_str() {
            "postgres" => {
                let url = cx.required(&st.url, "url", span.clone(), what);
                let max_connections = match &st.max_connections {
                    Some(v) => match u32::try_from(*v.get_ref()) {
                        Ok(n) if (1..=64).contains(&n) => n,
                        _ => {
                            cx.err(v.span(), "max_connections is out of range", "use 1 to 64");
                            4
                        }
                    },
                    None => 4,
                };
                url.map(|url| StoreConfig::Postgres {
                    url,
                    max_connections,
                })
            }
            "s3" => {
                let bucket = cx.required(&st.bucket, "bucket", span.clone(), what);
                let region = cx.opt_string(&st.region);
                let endpoint = cx.opt_string(&st.endpoint).filter(|e| !e.is_empty());
                let expected_account = cx.opt_string(&st.expected_account);
                let force_path_style = st
                    .force_path_style
                    .as_ref()
                    .map_or(endpoint.is_some(), |v| *v.get_ref());
                bucket.map(|bucket| StoreConfig::S3 {
                    bucket,
                    region,
                    endpoint,
                    force_path_style,
                    expected_account,
                })
            }
            "azure_blob" => {
                let account = cx.required(&st.account, "account", span.clone(), what);
                let container = cx.required(&st.container, "container", span.clone(), what);
                let endpoint = cx.opt_string(&st.endpoint).filter(|e| !e.is_empty());
                let sas_token = cx.opt_string(&st.sas_token);
                let access_key = cx.opt_string(&st.access_key);
                let expected_account = cx.opt_string(&st.expected_account);
                match (account, container) {
                    (Some(account), Some(container)) => Some(StoreConfig::AzureBlob {
                        account,
                        container,
                        endpoint,
                        sas_token,
                        access_key,
                        expected_account,
                    }),
                    _ => None,
                }
            }
            _ => cx
                .required(&st.root, "root", span.clone(), what)
                .map(|root| StoreConfig::Filesystem {
                    root: cx.path(&root),
                }),
        };
        if let Some(store) = store {
            out.insert(name.clone(), store);
        }
    }
    out
}

fn present_store_keys(st: &RawStore) -> Vec<(&'static str, Range<usize>)> {
    let mut keys = Vec::new();
    let mut s = |key: &'static str, v: &Option<SStr>| {
        if let Some(v) = v {
            keys.push((key, v.span()));
        }
    };
    s("url", &st.url);
    s("bucket", &st.bucket);
    s("region", &st.region);
    s("endpoint", &st.endpoint);
    s("account", &st.account);
    s("container", &st.container);
    s("sas_token", &st.sas_token);
    s("access_key", &st.access_key);
    s("expected_account", &st.expected_account);
    s("root", &st.root);
    if let Some(v) = &st.max_connections {
        keys.push(("max_connections", v.span()));
    }
    if let Some(v) = &st.force_path_style {
        keys.push(("force_path_style", v.span()));
    }
    keys
}

/// Resolves a store reference to a declared store. A store whose own section
/// has problems still resolves, so the rules using it are checked too.
fn store_ref(
    cx: &mut Ctx,
    _stores: &BTreeMap<String, StoreConfig>,
    raw: &RawConfig,
    value: &SStr,
) -> Option<String> {
    let name = cx.string(value)?;
    if raw.stores.contains_key(&name) {
        return Some(name);
    }
    {
        let known: Vec<&str> = raw.stores.keys().map(String::as_str).collect();
        cx.err(
            value.span(),
            format!("unknown store `{name}`"),
            format!("define [stores.{name}] or use one of: {}", known.join(", ")),
        );
    }
    None
}

/// The `type` a store declares, valid or not.
fn declared_kind<'r>(raw: &'r RawConfig, name: &str) -> Option<&'r str> {
    raw.stores
        .get(name)?
        .get_ref()
        .kind
        .as_ref()
        .map(|k| k.get_ref().as_str())
}

/// True when the named store declares a blob type.
fn declared_blob(raw: &RawConfig, name: &str) -> bool {
    matches!(
        declared_kind(raw, name),
        Some("s3" | "azure_blob" | "filesystem")
    )
}

fn audit(
    cx: &mut Ctx,
    raw: &RawConfig,
    stores: &BTreeMap<String, StoreConfig>,
) -> Option<AuditConfig> {
    let a = raw.audit.as_ref()?;
    let span = a.span();
    let a = a.get_ref();
    let store = match &a.store {
        Some(v) => store_ref(cx, stores, raw, v).and_then(|name| {
            if declared_kind(raw, &name) == Some("postgres") {
                Some(name)
            } else {
                cx.err(
                    v.span(),
                    format!("audit store `{name}` is not a postgres store"),
                    "audit records live in schema `retentiond` of a PostgreSQL store",
                );
                None
            }
        }),
        None => {
            cx.err(
                span.clone(),
                "missing `store`",
                "name the postgres store that holds the audit log",
            );
            None
        }
    };
    let key = cx.required(&a.signing_key, "signing_key", span, "[audit] section");
    let signing_key = key.map(|k| cx.path(&k));
    if let (Some(path), Some(v)) = (&signing_key, &a.signing_key) {
        if !path.is_file() {
            cx.err(v.span(), format!("signing key {} does not exist", path.display()), "create one with `retentiond keygen --out DIR` and point signing_key at DIR/signing.pem");
        }
    }
    let jsonl = cx.opt_string(&a.jsonl).map(|p| cx.path(&p));
    let checkpoints = cx.opt_string(&a.checkpoints).map(|p| cx.path(&p));
    Some(AuditConfig {
        store: store?,
        signing_key: signing_key?,
        jsonl,
        checkpoints,
    })
}

fn sql_store(
    cx: &mut Ctx,
    stores: &BTreeMap<String, StoreConfig>,
    raw: &RawConfig,
    value: &Option<SStr>,
    span: Range<usize>,
    what: &str,
) -> Option<String> {
    let Some(v) = value else {
        cx.err(
            span,
            "missing `store`",
            format!("name the store this {what} applies to"),
        );
        return None;
    };
    store_ref(cx, stores, raw, v)
}

fn table_name(
    cx: &mut Ctx,
    value: &Option<SStr>,
    span: Range<usize>,
    what: &str,
) -> Option<TableName> {
    let text = cx.required(value, "table", span, what)?;
    // `a.b.c` could be a database, a schema and a table, or a dotted name:
    // refused rather than guessed.
    let parsed = TableName::parse(&text).filter(|t| !t.name.contains('.'));
    if parsed.is_none() {
        if let Some(v) = value {
            cx.err(
                v.span(),
                format!("invalid table name `{text}`"),
                "write `table` or `schema.table` (one dot at most)",
            );
        }
    }
    parsed
}

fn guards(
    cx: &mut Ctx,
    raw: &RawConfig,
    stores: &BTreeMap<String, StoreConfig>,
) -> Vec<(Guard, Range<usize>)> {
    let mut out = Vec::new();
    for g in &raw.guards {
        let span = g.span();
        let g = g.get_ref();
        let what = "guard";
        let store = sql_store(cx, stores, raw, &g.store, span.clone(), what);
        if let (Some(name), Some(v)) = (&store, &g.store) {
            if declared_blob(raw, name) {
                cx.err(
                    v.span(),
                    format!("guards apply to SQL tables; `{name}` is a blob store"),
                    "protect objects with a [[holds]] entry and `prefix` instead",
                );
            }
        }
        let table = table_name(cx, &g.table, span.clone(), what);
        let age =
            age(cx, &g.age, &g.age_expr, &g.age_unit, span.clone(), what).map(|(age, _, _)| age);
        let min_keep = match &g.min_keep {
            Some(v) => cx.keep(v),
            None => {
                cx.err(
                    span.clone(),
                    "missing `min_keep`",
                    "add `min_keep = \"10y\"` (the must-keep minimum)",
                );
                None
            }
        };
        let reason = cx.required(&g.reason, "reason", span.clone(), what);
        if let (Some(store), Some(table), Some(age), Some(min_keep), Some(reason)) =
            (store, table, age, min_keep, reason)
        {
            out.push((
                Guard {
                    store,
                    table,
                    age,
                    min_keep,
                    reason,
                    span: span.clone(),
                },
                span,
            ));
        }
    }
    out
}

fn holds(cx: &mut Ctx, raw: &RawConfig, stores: &BTreeMap<String, StoreConfig>) -> Vec<Hold> {
    let mut out = Vec::new();
    for h in &raw.holds {
        let span = h.span();
        let span_for_hold = span.clone();
        let h = h.get_ref();
        let what = "hold";
        let name = cx.required(&h.name, "name", span.clone(), what);
        let store = sql_store(cx, stores, raw, &h.store, span.clone(), what);
        let reason = cx.required(&h.reason, "reason", span.clone(), what);
        let is_blob = store.as_ref().is_some_and(|s| declared_blob(raw, s));
        let target = if is_blob {
            for (key, v) in [("table", &h.table), ("where", &h.filter)] {
                if let Some(v) = v {
                    cx.err(
                        v.span(),
                        format!("`{key}` does not apply to a hold on a blob store"),
                        "hold objects with `prefix`",
                    );
                }
            }
            cx.required(&h.prefix, "prefix", span.clone(), what)
                .map(HoldTarget::Prefix)
        } else {
            if let Some(v) = &h.prefix {
                cx.err(
                    v.span(),
                    "`prefix` does not apply to a hold on a SQL store",
                    "hold rows with `table` and `where`",
                );
            }
            let table = table_name(cx, &h.table, span.clone(), what);
            let filter = cx.required(&h.filter, "where", span.clone(), what);
            if let (Some(v), Some(f)) = (&h.filter, &filter) {
                check_where(cx, v.span(), f);
            }
            table
                .zip(filter)
                .map(|(table, filter)| HoldTarget::Rows { table, filter })
        };
        if let (Some(name), Some(store), Some(target), Some(reason)) = (name, store, target, reason)
        {
            out.push(Hold {
                name,
                store,
                target,
                reason,
                span: span_for_hold,
            });
        }
    }
    out
}

fn rules(
    cx: &mut Ctx,
    raw: &RawConfig,
    stores: &BTreeMap<String, StoreConfig>,
    defaults: &Settings,
    guards: &[(Guard, Range<usize>)],
) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut names: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for r in &raw.rules {
        let span = r.span();
        let r = r.get_ref();
        let what = "rule";
        let name = cx.required(&r.name, "name", span.clone(), what);
        if let (Some(n), Some(v)) = (&name, &r.name) {
            if let Some(first) = names.get(n) {
                let line = cx.line(first.start);
                cx.err(v.span(), format!("duplicate rule name `{n}`"), format!("rule names must be unique (they key the audit log and metrics); `{n}` is first used at line {line}: rename one of them"));
            } else if !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                cx.err(v.span(), format!("rule name `{n}` has characters other than letters, digits, `-`, `_` and `.`"), "use a short slug such as \"session-logs-30d\"");
            } else {
                names.insert(n.clone(), v.span());
            }
        }
        let store = sql_store(cx, stores, raw, &r.store, span.clone(), what);
        let (keep, keep_expr) = keep(cx, r, span.clone());
        let settings = settings(cx, defaults, &SettingsKeys::from_rule(r));
        let description = cx.opt_string(&r.description);
        let policy_ref = cx.opt_string(&r.policy_ref);
        let action = cx.required(&r.action, "action", span.clone(), what);
        let kind = store.as_ref().and_then(|s| declared_kind(raw, s));
        let mut spans = RuleSpans {
            rule: span.clone(),
            keep_expr: r.keep_expr.as_ref().map(|v| v.span()),
            ..RuleSpans::default()
        };
        let target = match kind {
            Some(k @ ("s3" | "azure_blob" | "filesystem")) => {
                prefix_target(cx, r, k, action.as_deref(), span.clone())
            }
            Some("postgres") => table_target(
                cx,
                raw,
                stores,
                r,
                action.as_deref(),
                span.clone(),
                &mut spans,
            ),
            _ => None,
        };
        // A delete rule shorter than a guard on its table is a contradiction
        // in the policy itself: report it at check, not at run.
        if let (Some(Target::Table(t)), Some(keep), Some(store), Some(v)) = (
            &target,
            &keep,
            &store,
            r.keep.as_ref().or(r.keep_min.as_ref()),
        ) {
            if matches!(t.action, TableAction::Delete) {
                for (g, gspan) in guards
                    .iter()
                    .filter(|(g, _)| &g.store == store && g.table == t.table)
                {
                    if keep.is_shorter_than(&g.min_keep) {
                        let line = cx.line(gspan.start);
                        cx.err(
                            v.span(),
                            format!(
                                "rule keeps {} for {keep}{}, less than the guard's min_keep {} ({})",
                                t.table,
                                if r.keep.is_some() { "" } else { " (keep_min)" },
                                g.min_keep,
                                g.reason
                            ),
                            format!(
                                "raise `{}` to at least \"{}\" (the guard at line {line})",
                                if r.keep.is_some() { "keep" } else { "keep_min" },
                                g.min_keep
                            ),
                        );
                    }
                }
            }
        }
        if let (Some(name), Some(store), Some(keep), Some(target)) = (name, store, keep, target) {
            out.push(Rule {
                name,
                description,
                policy_ref,
                store,
                keep,
                keep_expr: if matches!(target, Target::Table(_)) {
                    keep_expr
                } else {
                    None
                },
                settings,
                target,
                spans,
            });
        }
    }
    out
}

/// `keep`, or `keep_expr` with `keep_min` and `keep_max` (the rule's
/// `keep` is then `keep_min`).
fn keep(cx: &mut Ctx, r: &RawRule, span: Range<usize>) -> (Option<Keep>, Option<KeepExpr>) {
    let Some(expr) = &r.keep_expr else {
        for (key, v) in [("keep_min", &r.keep_min), ("keep_max", &r.keep_max)] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    format!("`{key}` applies with `keep_expr` only"),
                    "remove it, or add `keep_expr` (a per-row period this bounds)",
                );
            }
        }
        return match &r.keep {
            Some(v) => (cx.keep(v), None),
            None => {
                cx.err(
                    span,
                    "missing `keep`",
                    "add `keep = \"30d\"`: how long data is kept before it expires",
                );
                (None, None)
            }
        };
    };
    if let Some(v) = &r.keep {
        cx.err(
            v.span(),
            "`keep` and `keep_expr` both given",
            "with `keep_expr`, the period is bounded by `keep_min` and `keep_max`: remove `keep`",
        );
        return (None, None);
    }
    let text = cx.string(expr);
    if let Some(e) = text
        .as_deref()
        .and_then(|t| super::sql_expr::check(t).err())
    {
        cx.err(
            expr.span(),
            format!("`keep_expr` is not one SQL expression: {e}"),
            "write one expression on the row (alias `t`) yielding an interval, e.g. \"(SELECT p.upload_ttl FROM plans p WHERE p.id = t.plan_id)\"",
        );
        return (None, None);
    }
    let mut bound = |key: &str, v: &Option<SStr>| match v {
        Some(v) => cx.keep(v),
        None => {
            cx.err(
                expr.span(),
                format!("`keep_expr` needs `{key}`"),
                "bound the per-row period with literal durations, e.g. `keep_min = \"1h\"`, `keep_max = \"7d\"`: the promise stays bounded and auditable",
            );
            None
        }
    };
    let (min, max) = (
        bound("keep_min", &r.keep_min),
        bound("keep_max", &r.keep_max),
    );
    let (Some(text), Some(min), Some(max)) = (text, min, max) else {
        return (None, None);
    };
    if max.is_shorter_than(&min) {
        if let Some(v) = &r.keep_max {
            cx.err(
                v.span(),
                format!("keep_max {max} is shorter than keep_min {min}"),
                "keep_max bounds the period from above: make it at least keep_min",
            );
        }
        return (None, None);
    }
    (
        Some(min),
        Some(KeepExpr {
            expr: text,
            min,
            max,
        }),
    )
}

fn table_target(
    cx: &mut Ctx,
    raw: &RawConfig,
    stores: &BTreeMap<String, StoreConfig>,
    r: &RawRule,
    action: Option<&str>,
    span: Range<usize>,
    spans: &mut RuleSpans,
) -> Option<Target> {
    let what = "rule";
    for (key, v) in [
        ("prefix", &r.prefix),
        ("versions", &r.versions),
        ("age_metadata", &r.age_metadata),
    ] {
        if let Some(v) = v {
            cx.err(v.span(), format!("`{key}` does not apply to a rule on a SQL table"), "blob keys (`prefix`, `versions`) belong to rules on s3, azure_blob or filesystem stores");
        }
    }
    if let Some(v) = &r.group_by_prefix_depth {
        cx.err(
            v.span(),
            "`group_by_prefix_depth` does not apply to a rule on a SQL table",
            "it belongs to rules on blob stores",
        );
    }
    if let Some(v) = &r.match_metadata {
        cx.err(
            v.span(),
            "`match_metadata` does not apply to a rule on a SQL table",
            "use `where` to filter rows",
        );
    }
    let table = table_name(cx, &r.table, span.clone(), what);
    if let Some(v) = &r.table {
        spans.table = v.span();
    }
    let age = age(cx, &r.age, &r.age_expr, &r.age_unit, span.clone(), what).map(
        |(age, age_span, unit_span)| {
            spans.age = age_span;
            spans.age_unit = unit_span;
            age
        },
    );
    let filter = match &r.filter {
        Some(v) => {
            spans.filter = Some(v.span());
            let f = cx.string(v)?;
            check_where(cx, v.span(), &f);
            Some(f)
        }
        None => None,
    };
    let blobs = r.blobs.as_ref().and_then(|b| blob_link(cx, raw, stores, b));
    let action = match action? {
        "delete" => {
            if let Some(v) = &r.columns {
                cx.err(
                    v.span(),
                    "`columns` applies to `action = \"mask\"` only",
                    "remove `columns`, or set `action = \"mask\"`",
                );
            }
            if let Some(v) = &r.on_unparsable {
                cx.err(
                    v.span(),
                    "`on_unparsable` applies to `action = \"mask\"` only",
                    "remove it",
                );
            }
            if let Some(v) = &r.on_conflict {
                cx.err(
                    v.span(),
                    "`on_conflict` applies to `action = \"mask\"` only",
                    "remove it",
                );
            }
            TableAction::Delete
        }
        "mask" => {
            if let Some(b) = &r.blobs {
                cx.err(
                    b.span(),
                    "`blobs` applies to `action = \"delete\"` only",
                    "masking keeps the row, so its blobs stay",
                );
            }
            let Some(columns) = &r.columns else {
                cx.err(
                    span,
                    "a mask rule needs `columns`",
                    "add e.g. `columns = { client_ip = \"ip_prefix\" }`",
                );
                return None;
            };
            if columns.get_ref().is_empty() {
                cx.err(
                    columns.span(),
                    "`columns` is empty",
                    "name at least one column to mask",
                );
            }
            let mut out = Vec::new();
            for (col, strat) in columns.get_ref() {
                spans.columns.insert(col.clone(), strat.span());
                if let Some(s) = mask_strategy(cx, strat) {
                    out.push((col.clone(), s));
                }
            }
            let on_unparsable = match &r.on_unparsable {
                None => OnUnparsable::Replace,
                Some(v) => match v.get_ref().as_str() {
                    "replace" | "null" => OnUnparsable::Replace,
                    "keep" => OnUnparsable::Keep,
                    other => {
                        cx.err(v.span(), format!("unknown on_unparsable `{other}`"), "use \"replace\" (NULL, or `redacted` in a NOT NULL column) or \"keep\"");
                        OnUnparsable::Replace
                    }
                },
            };
            let on_conflict = match &r.on_conflict {
                None => OnConflict::Skip,
                Some(v) => match v.get_ref().as_str() {
                    "skip" => OnConflict::Skip,
                    "delete" => OnConflict::Delete,
                    other => {
                        cx.err(
                            v.span(),
                            format!("unknown on_conflict `{other}`"),
                            "use \"skip\" (keep a row whose masked form a unique key refuses, and count it) or \"delete\" (delete it: the row it duplicates carries all that may be kept)",
                        );
                        OnConflict::Skip
                    }
                },
            };
            TableAction::Mask(MaskSpec {
                columns: out,
                on_unparsable,
                on_conflict,
            })
        }
        other => {
            if let Some(v) = &r.action {
                cx.err(
                    v.span(),
                    format!("unknown action `{other}`"),
                    "use \"delete\" or \"mask\"",
                );
            }
            return None;
        }
    };
    Some(Target::Table(TableRule {
        table: table?,
        age: age?,
        filter,
        action,
        blobs,
    }))
}

/// `age = "column"` or `age_expr = "SQL"` (exactly one), and `age_unit`.
/// Whether the unit fits the column's type is for `check --online`.
fn age(
    cx: &mut Ctx,
    column: &Option<SStr>,
    expr: &Option<SStr>,
    unit: &Option<SStr>,
    table_span: Range<usize>,
    what: &str,
) -> Option<(Age, Range<usize>, Option<Range<usize>>)> {
    let unit = match unit {
        None => None,
        Some(v) => {
            let text = cx.string(v)?;
            match EpochUnit::parse(&text) {
                Some(u) => Some((u, v.span())),
                None => {
                    cx.err(
                        v.span(),
                        format!("unknown age_unit `{text}`"),
                        "an integer age counts \"s\" (seconds), \"ms\" (milliseconds) or \"us\" (microseconds) since 1970-01-01 UTC",
                    );
                    return None;
                }
            }
        }
    };
    let (source, span) = match (column, expr) {
        (Some(_), Some(e)) => {
            cx.err(
                e.span(),
                "`age` and `age_expr` both given",
                format!("a {what}'s age is one column (`age`) or one expression (`age_expr`); remove one"),
            );
            return None;
        }
        (Some(_), None) => {
            let c = cx.required(column, "age", table_span, what)?;
            (AgeSource::Column(c), column.as_ref().map(|v| v.span()))
        }
        (None, Some(v)) => {
            let e = cx.string(v)?;
            if let Err(err) = super::sql_expr::check(&e) {
                cx.err(
                    v.span(),
                    format!("`age_expr` is not one SQL expression: {err}"),
                    "write one expression on the row (alias `t`) that yields a time, e.g. \"coalesce(t.refreshed_at, t.created_at)\"",
                );
                return None;
            }
            (AgeSource::Expr(e), Some(v.span()))
        }
        (None, None) => {
            cx.err(
                table_span,
                format!("a {what} on a SQL table needs `age` or `age_expr`"),
                "add `age = \"created_at\"` (the column holding each row's age), or `age_expr = \"coalesce(t.updated_at, t.created_at)\"`",
            );
            return None;
        }
    };
    Some((
        Age {
            source,
            unit: unit.as_ref().map(|(u, _)| *u),
        },
        span.unwrap_or_default(),
        unit.map(|(_, s)| s),
    ))
}

/// A `where` must be exactly one SQL expression (see [`super::sql_expr`]):
/// anything else could escape the parentheses it is pasted into.
fn check_where(cx: &mut Ctx, span: Range<usize>, text: &str) {
    if let Err(e) = super::sql_expr::check(text) {
        cx.err(
            span,
            format!("`where` is not one SQL expression: {e}"),
            "write a single SQL boolean expression such as \"tier = 'free'\", with balanced parentheses and no other clause or statement",
        );
    }
}

fn mask_strategy(cx: &mut Ctx, value: &Spanned<RawMask>) -> Option<MaskStrategy> {
    let span = value.span();
    match value.get_ref() {
        RawMask::Name(n) => leaf_strategy(cx, span, n, None),
        RawMask::Full(t) => leaf_strategy(cx, span, &t.strategy, Some(t)),
        RawMask::Paths(paths) => {
            let mut out = Vec::new();
            for (path, leaf) in paths {
                let Some(keys) = json_path(path) else {
                    cx.err(
                        span.clone(),
                        format!("`{path}` is not a JSON path"),
                        "name JSON paths as `$.key` or `$.outer.inner` (object keys only), e.g. { \"$.actor_username\" = \"redact\" }; to mask the whole column write a strategy (\"ip_prefix\", or { strategy = \"hmac\", key_env = \"VAR\" })",
                    );
                    return None;
                };
                let strategy = match leaf {
                    RawMaskLeaf::Name(n) => leaf_strategy(cx, span.clone(), n, None)?,
                    RawMaskLeaf::Full(t) => leaf_strategy(cx, span.clone(), &t.strategy, Some(t))?,
                };
                out.push((keys, strategy));
            }
            if out.is_empty() {
                cx.err(
                    span,
                    "no JSON path to mask",
                    "name at least one path, e.g. { \"$.ip\" = \"ip_prefix\" }",
                );
                return None;
            }
            Some(MaskStrategy::Json(out))
        }
    }
}

/// `$.a.b` as its keys; None when it is not that form.
fn json_path(path: &str) -> Option<Vec<String>> {
    let keys: Vec<String> = path
        .strip_prefix("$.")?
        .split('.')
        .map(str::to_string)
        .collect();
    keys.iter().all(|k| !k.is_empty()).then_some(keys)
}

/// One strategy, by name with its table's options (`table`: the
/// `{ strategy = ... }` form, None for a bare name).
fn leaf_strategy(
    cx: &mut Ctx,
    span: Range<usize>,
    name: &str,
    table: Option<&RawMaskTable>,
) -> Option<MaskStrategy> {
    let (key_env, key_file) = (
        table.and_then(|t| t.key_env.clone()),
        table.and_then(|t| t.key_file.clone()),
    );
    let help = "strategies: \"ip_prefix\" (IPv4 /24, IPv6 /48), \"null\", \"redact\", or { strategy = \"hmac\", key_env = \"VAR\" } / { strategy = \"hmac\", key_file = \"path\" }";
    let strategy = match name {
        "ip_prefix" => MaskStrategy::IpPrefix {
            keep_port: table.and_then(|t| t.keep_port).unwrap_or(false),
        },
        "null" => MaskStrategy::Null,
        "redact" => MaskStrategy::Redact,
        "hmac" => {
            let key = match (key_env, key_file) {
                (Some(var), None) => match (cx.env)(&var) {
                    Some(k) if !k.is_empty() => k.into_bytes(),
                    _ => {
                        cx.err(
                            span,
                            format!("environment variable `{var}` (the hmac key) is not set"),
                            format!("export {var}=<secret> before running"),
                        );
                        return None;
                    }
                },
                (None, Some(file)) => {
                    let path = cx.path(&file);
                    match std::fs::read(&path) {
                        Ok(k) if !k.is_empty() => trim_newline(k),
                        Ok(_) => {
                            cx.err(
                                span,
                                format!("hmac key file {} is empty", path.display()),
                                "write a random secret of at least 32 bytes into it",
                            );
                            return None;
                        }
                        Err(e) => {
                            cx.err(
                                span,
                                format!("cannot read hmac key file {}: {e}", path.display()),
                                "point key_file at a readable file holding the secret",
                            );
                            return None;
                        }
                    }
                }
                _ => {
                    cx.err(
                        span,
                        "hmac needs exactly one of `key_env` or `key_file`",
                        help,
                    );
                    return None;
                }
            };
            MaskStrategy::Hmac { key }
        }
        other => {
            cx.err(span, format!("unknown masking strategy `{other}`"), help);
            return None;
        }
    };
    if let (Some(t), false) = (table, matches!(strategy, MaskStrategy::IpPrefix { .. })) {
        if t.keep_port.is_some() {
            cx.err(
                span.clone(),
                format!("`{}` takes no `keep_port`", strategy.name()),
                "keep_port applies to { strategy = \"ip_prefix\", keep_port = true }",
            );
        }
    }
    if !matches!(strategy, MaskStrategy::Hmac { .. }) {
        if let Some(t) = table {
            if t.key_env.is_some() || t.key_file.is_some() {
                cx.err(
                    span,
                    format!("`{}` takes no key", strategy.name()),
                    "only hmac is keyed",
                );
            }
        }
    }
    Some(strategy)
}

fn trim_newline(mut key: Vec<u8>) -> Vec<u8> {
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    key
}

fn blob_link(
    cx: &mut Ctx,
    raw: &RawConfig,
    stores: &BTreeMap<String, StoreConfig>,
    b: &Spanned<RawBlobLink>,
) -> Option<BlobLink> {
    let span = b.span();
    let link = b.get_ref();
    let store = sql_store(cx, stores, raw, &link.store, span.clone(), "blobs link")?;
    if !declared_blob(raw, &store) {
        if let Some(v) = &link.store {
            cx.err(
                v.span(),
                format!("`{store}` is not a blob store"),
                "`blobs.store` names an s3, azure_blob or filesystem store",
            );
        }
        return None;
    }
    let locator = match (&link.key_column, &link.prefix_template) {
        (Some(k), None) => BlobLocator::KeyColumn(cx.string(k)?),
        (None, Some(p)) => {
            let t = cx.string(p)?;
            match template_columns(&t) {
                Ok(cols) if !cols.is_empty() => BlobLocator::PrefixTemplate(t),
                Ok(_) => {
                    cx.err(p.span(), "prefix_template names no column", "write e.g. \"sources/{id}/\": each {column} is replaced by that row's value");
                    return None;
                }
                Err(msg) => {
                    cx.err(p.span(), msg, "write e.g. \"sources/{id}/\"");
                    return None;
                }
            }
        }
        _ => {
            cx.err(
                span,
                "`blobs` needs exactly one of `key_column` or `prefix_template`",
                "e.g. blobs = { store = \"uploads\", key_column = \"blob_key\" }",
            );
            return None;
        }
    };
    Some(BlobLink { store, locator })
}

/// The `{column}` names in a prefix template.
pub fn template_columns(template: &str) -> Result<Vec<String>, String> {
    let mut cols = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let tail = &rest[open + 1..];
        let close = tail
            .find('}')
            .ok_or("`{` without a closing `}` in prefix_template")?;
        let col = &tail[..close];
        if col.is_empty() {
            return Err("`{}` names no column".to_string());
        }
        cols.push(col.to_string());
        rest = &tail[close + 1..];
    }
    Ok(cols)
}

fn prefix_target(
    cx: &mut Ctx,
    r: &RawRule,
    kind: &str,
    action: Option<&str>,
    span: Range<usize>,
) -> Option<Target> {
    for (key, v) in [
        ("table", &r.table),
        ("age", &r.age),
        ("age_expr", &r.age_expr),
        ("age_unit", &r.age_unit),
        ("keep_expr", &r.keep_expr),
        ("keep_min", &r.keep_min),
        ("keep_max", &r.keep_max),
        ("where", &r.filter),
        ("on_unparsable", &r.on_unparsable),
        ("on_conflict", &r.on_conflict),
    ] {
        if let Some(v) = v {
            cx.err(
                v.span(),
                format!("`{key}` does not apply to a rule on a blob store"),
                "rules on blob stores select objects with `prefix` (and `match_metadata`)",
            );
        }
    }
    if let Some(v) = &r.columns {
        cx.err(
            v.span(),
            "`columns` does not apply to a rule on a blob store",
            "objects are deleted, not masked",
        );
    }
    if let Some(v) = &r.blobs {
        cx.err(
            v.span(),
            "`blobs` does not apply to a rule on a blob store",
            "it links SQL rows to objects",
        );
    }
    if let (Some(a), Some(v)) = (action, &r.action) {
        if a != "delete" {
            cx.err(
                v.span(),
                format!("action `{a}` is not available on a blob store"),
                "objects can only be deleted: use action = \"delete\"",
            );
        }
    }
    let prefix = cx.required(&r.prefix, "prefix", span, "rule")?;
    if kind == "filesystem" {
        if let Some(v) = &r.match_metadata {
            cx.err(
                v.span(),
                "files have no metadata to match",
                "use a prefix that selects the files instead",
            );
        }
        if let Some(v) = &r.age_metadata {
            cx.err(
                v.span(),
                "files have no metadata to take an age from",
                "a file's age is its modification time; remove `age_metadata`",
            );
        }
    }
    if let ("filesystem", Some(v)) = (kind, &r.prefix) {
        if prefix.split('/').any(|seg| seg == ".." || seg == ".") || prefix.starts_with('/') {
            cx.err(
                v.span(),
                format!("prefix `{prefix}` leaves or re-enters the root"),
                "write a relative prefix without `.` or `..` segments, e.g. \"workspaces/\"",
            );
        }
    }
    let versions = match &r.versions {
        None => Versions::All,
        Some(v) => match v.get_ref().as_str() {
            "all" => Versions::All,
            "current" => Versions::Current,
            other => {
                cx.err(
                    v.span(),
                    format!("unknown versions `{other}`"),
                    "use \"all\" (every version and delete marker) or \"current\"",
                );
                Versions::All
            }
        },
    };
    let group_by_prefix_depth = match &r.group_by_prefix_depth {
        None => None,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=64).contains(&n) => Some(n),
            _ => {
                cx.err(v.span(), "group_by_prefix_depth is out of range", "use the number of `/`-separated segments that name a group, e.g. 2 for workspaces/<id>/");
                None
            }
        },
    };
    let match_metadata = r
        .match_metadata
        .as_ref()
        .map(|m| m.get_ref().clone())
        .unwrap_or_default();
    let age_metadata = cx.opt_string(&r.age_metadata);
    Some(Target::Prefix(PrefixRule {
        prefix,
        versions,
        group_by_prefix_depth,
        match_metadata,
        age_metadata,
    }))
}
