//! Fuzzing the parsers of the rules file: durations, cron schedules, `where`
//! expressions and whole configs. No input may panic, and every problem
//! found in a config points inside its text (`file:line:col`).
//!
//! The properties run a fixed number of cases from a fixed seed, so CI sees
//! the same inputs every time. To explore further, set `PROPTEST_CASES`
//! and/or `PROPTEST_RNG_SEED`. Inputs that once failed are kept below as
//! plain regression tests (no proptest-regressions files are written).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use retentiond::config::diagnostic::line_col;
use retentiond::config::duration::{parse_fixed, DurationError};
use retentiond::config::{sql_expr, Config, ConfigError, Keep};
use retentiond::daemon::schedule::RuleSchedule;
use std::path::PathBuf;
use std::time::Duration;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x5eed_2e7e_4710_004d;

fn cfg(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        rng_seed: match base.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        failure_persistence: None,
        // Shrinking a config mutant can take many steps; bound it.
        max_shrink_iters: 2048,
        ..base
    }
}

// ---------------------------------------------------------------- durations

const UNITS: [(&str, Unit); 7] = [
    ("y", Unit::Months(12)),
    ("mo", Unit::Months(1)),
    ("w", Unit::Days(7)),
    ("d", Unit::Days(1)),
    ("h", Unit::Seconds(3600)),
    ("m", Unit::Seconds(60)),
    ("s", Unit::Seconds(1)),
];

#[derive(Debug, Clone, Copy)]
enum Unit {
    Months(u128),
    Days(u128),
    Seconds(u128),
}

/// A duration written from distinct units, in any order, with the value the
/// contract gives it.
#[derive(Debug, Clone)]
struct Written {
    text: String,
    units: Vec<&'static str>,
    months: u128,
    days: u128,
    seconds: u128,
}

impl Written {
    fn expected(&self) -> Result<Keep, DurationError> {
        if self.months > 12 * 1000 || self.days > 366 * 1000 || self.seconds > 86_400 * 366 * 1000 {
            return Err(DurationError::TooLarge);
        }
        Ok(Keep {
            months: self.months as u32,
            days: self.days as u32,
            seconds: self.seconds as u64,
        })
    }
}

fn number() -> BoxedStrategy<u64> {
    prop_oneof![
        4 => 0u64..=100,
        2 => 0u64..=2_000_000,
        1 => 0u64..=40_000_000_000,
        1 => any::<u64>(),
    ]
    .boxed()
}

fn space() -> BoxedStrategy<&'static str> {
    prop::sample::select(vec!["", "", "", " ", "  ", "\t", "\n", "\u{3000}"]).boxed()
}

fn written_duration() -> BoxedStrategy<Written> {
    prop::sample::subsequence((0..UNITS.len()).collect::<Vec<_>>(), 1..=UNITS.len())
        .prop_shuffle()
        .prop_flat_map(|units| {
            let n = units.len();
            (
                Just(units),
                prop::collection::vec(number(), n),
                prop::collection::vec(space(), n),
                space(),
            )
        })
        .prop_map(|(units, numbers, spaces, lead)| {
            let mut w = Written {
                text: lead.to_string(),
                units: Vec::new(),
                months: 0,
                days: 0,
                seconds: 0,
            };
            for ((u, n), sp) in units.iter().zip(&numbers).zip(&spaces) {
                let (name, unit) = UNITS[*u];
                w.units.push(name);
                w.text.push_str(&format!("{n}{name}{sp}"));
                match unit {
                    Unit::Months(f) => w.months += u128::from(*n) * f,
                    Unit::Days(f) => w.days += u128::from(*n) * f,
                    Unit::Seconds(f) => w.seconds += u128::from(*n) * f,
                }
            }
            w
        })
        .boxed()
}

/// Almost-durations: the grammar's characters in any order, numbers beyond
/// any integer type, and anything at all.
fn duration_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => written_duration().prop_map(|w| w.text),
        2 => "[0-9]{0,40}(y|mo|w|d|h|m|s|ms|M|D|µs|x|)",
        2 => "[0-9ymowdhs \\-+.,_]{0,14}",
        1 => "\\PC{0,12}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn keep_in_range() -> BoxedStrategy<Keep> {
    (0u32..=12_000, 0u32..=366_000, 0u64..=86_400 * 366 * 1000)
        .prop_map(|(months, days, seconds)| Keep {
            months,
            days,
            seconds,
        })
        .boxed()
}

proptest! {
    #![proptest_config(cfg(CASES))]

    /// Anything: no panic; what parses prints back to the same value, and
    /// `parse_fixed` agrees with `Keep::parse`.
    #[test]
    fn fuzz_duration_any_text_never_panics(text in duration_text()) {
        let keep = Keep::parse(&text);
        let fixed = parse_fixed(&text);
        match &keep {
            Ok(k) => {
                prop_assert_eq!(Keep::parse(&k.to_string()), Ok(*k), "display of {:?}", k);
                prop_assert!(k.months <= 12_000 && k.days <= 366_000);
                if k.months == 0 {
                    prop_assert_eq!(
                        fixed,
                        Ok(Duration::from_secs(u64::from(k.days) * 86_400 + k.seconds))
                    );
                } else {
                    prop_assert_eq!(fixed, Err(DurationError::CalendarUnit));
                }
            }
            Err(e) => {
                prop_assert_eq!(fixed, Err(e.clone()));
                prop_assert!(!e.to_string().is_empty() && !e.help().is_empty());
            }
        }
    }

    /// `{n}{unit}` parts with distinct units, any order, any spacing: the
    /// contract's value, or TooLarge beyond a thousand years.
    #[test]
    fn fuzz_duration_written_parts_parse_to_their_value(w in written_duration()) {
        let parsed = Keep::parse(&w.text);
        prop_assert_eq!(&parsed, &w.expected(), "{:?}", w.text);
        if let Ok(k) = parsed {
            prop_assert_eq!(Keep::parse(&k.to_string()), Ok(k));
            let now = chrono::DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z")
                .unwrap()
                .to_utc();
            let cutoff = k.cutoff(now);
            prop_assert!(cutoff.is_some_and(|c| c <= now), "{:?}", cutoff);
            prop_assert!(!k.is_shorter_than(&k));
        }
    }

    /// A unit written twice is refused as such (when the numbers are small
    /// enough that nothing else is wrong first).
    #[test]
    fn fuzz_duration_repeated_unit_is_refused(
        w in written_duration(),
        pick in any::<Index>(),
        n in 0u64..1000,
        sp in space(),
    ) {
        let again = w.units[pick.index(w.units.len())];
        let text = format!("{}{sp}{n}{again}", w.text.trim_end());
        let parsed = Keep::parse(&text);
        if w.expected().is_ok() {
            prop_assert_eq!(parsed, Err(DurationError::RepeatedUnit(again.to_string())));
        }
    }

    /// Every in-range value prints as a duration that parses back to it.
    #[test]
    fn fuzz_duration_display_round_trips(k in keep_in_range()) {
        prop_assert_eq!(Keep::parse(&k.to_string()), Ok(k));
    }
}

#[test]
fn fuzz_duration_regressions() {
    for (text, expected) in [
        ("99999999999999999999y", Err(DurationError::TooLarge)),
        ("18446744073709551615s", Err(DurationError::TooLarge)),
        ("18446744073709551615y", Err(DurationError::TooLarge)),
        ("1537228672809129302y", Err(DurationError::TooLarge)),
        ("1000y", Ok(Keep::parse("12000mo").unwrap())),
        ("1000y1mo", Err(DurationError::TooLarge)),
        ("\u{3000}1d\u{3000}", Ok(Keep::parse("1d").unwrap())),
        ("1d\u{3000}2h", Ok(Keep::parse("1d2h").unwrap())),
        ("1é", Err(DurationError::MissingUnit("1".into()))),
        ("١d", Err(DurationError::MissingNumber("١d".into()))),
        ("", Err(DurationError::Empty)),
        (" \t\n", Err(DurationError::Empty)),
    ] {
        assert_eq!(Keep::parse(text), expected, "{text:?}");
    }
}

// -------------------------------------------------------------------- cron

fn cron_number() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0u64..=60).prop_map(|n| n.to_string()),
        1 => (1960u64..=2200).prop_map(|n| n.to_string()),
        1 => any::<u32>().prop_map(|n| n.to_string()),
        1 => "[0-9]{10,25}",
    ]
    .boxed()
}

fn cron_atom() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just("*".to_string()),
        1 => Just("?".to_string()),
        4 => cron_number(),
        2 => (cron_number(), cron_number()).prop_map(|(a, b)| format!("{a}-{b}")),
        2 => (prop_oneof![Just("*".to_string()), cron_number()], cron_number())
            .prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (cron_number(), cron_number(), cron_number())
            .prop_map(|(a, b, c)| format!("{a}-{b}/{c}")),
        1 => prop::sample::select(vec![
            "Mon", "TUE", "sun", "Sun-Sat", "Mon-Fri", "Fri-Mon", "Jan", "DEC", "Jan-Mar",
            "Foo", "L", "W", "LW", "5L", "1#2", "#", "-", "/", ",", "",
        ])
        .prop_map(str::to_string),
        1 => "[0-9*?/,\\-A-Za-z#]{1,6}",
    ]
    .boxed()
}

fn cron_field() -> BoxedStrategy<String> {
    prop::collection::vec(cron_atom(), 1..=3)
        .prop_map(|v| v.join(","))
        .boxed()
}

/// Six valid fields: what the validator should accept.
fn cron_valid() -> BoxedStrategy<String> {
    (
        prop::sample::select(vec!["0", "*", "*/10", "0,30", "5-10"]),
        prop::sample::select(vec!["0", "*", "*/15", "0-59/7", "59"]),
        prop::sample::select(vec!["3", "*", "*/6", "0-23", "22"]),
        prop::sample::select(vec!["*", "?", "1", "15", "28", "1-7", "31"]),
        prop::sample::select(vec!["*", "1", "Feb", "Jan-Mar", "12", "*/2"]),
        prop::sample::select(vec!["*", "?", "Mon", "Mon-Fri", "1", "Sun"]),
        prop::sample::select(vec!["", " *", " 2030", " 2026-2100"]),
    )
        .prop_map(|(s, m, h, dom, mon, dow, y)| format!("{s} {m} {h} {dom} {mon} {dow}{y}"))
        .boxed()
}

fn cron_text() -> BoxedStrategy<String> {
    let sep = prop::sample::select(vec![" ", " ", " ", "  ", "\t", "\n", " \u{a0}", ""]);
    prop_oneof![
        3 => cron_valid(),
        4 => prop::collection::vec((cron_field(), sep), 1..=8)
            .prop_map(|v| v.into_iter().map(|(f, s)| f + s).collect::<String>()),
        1 => prop::sample::select(vec![
            "@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@reboot", "@every 5m",
            " @daily ", "@", "", " ",
        ])
        .prop_map(str::to_string),
        1 => "[0-9*?/,\\- A-Za-z#@]{0,30}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// Jitters the config allows (up to about two thousand years), and any at
/// all: `RuleSchedule` is public.
fn jitter() -> BoxedStrategy<Duration> {
    prop_oneof![
        2 => Just(Duration::ZERO),
        4 => (0u64..=86_400 * 366 * 2000).prop_map(Duration::from_secs),
        2 => (0u64..=1_000_000).prop_map(Duration::from_millis),
        1 => (0u64..=1_000_000).prop_map(Duration::from_micros),
        1 => any::<u64>().prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
    .boxed()
}

/// `schedule = ...` in `[defaults]` and on one rule.
fn schedule_config(expr: &str) -> String {
    let q = basic_string(expr);
    format!(
        "[defaults]\nschedule = {q}\n\n[stores.fs]\ntype = \"filesystem\"\nroot = \"r\"\n\n\
         [[rules]]\nname = \"r\"\nstore = \"fs\"\nprefix = \"p/\"\nkeep = \"1d\"\naction = \"delete\"\nschedule = {q}\n"
    )
}

proptest! {
    #![proptest_config(cfg(CASES))]

    /// The daemon's parser: no panic, and a schedule that parses yields a
    /// next slot strictly after now, started within the jitter.
    #[test]
    fn fuzz_cron_daemon_schedule_never_panics(
        expr in cron_text(),
        rule in "\\PC{0,12}",
        jitter in jitter(),
    ) {
        if let Ok(s) = RuleSchedule::new(&rule, &expr, jitter) {
            let now = chrono::Utc::now();
            if let Some((slot, start)) = s.next(now) {
                prop_assert!(slot > now);
                prop_assert!(start >= slot);
                let late = (start - slot).num_milliseconds().unsigned_abs();
                prop_assert!(
                    late == 0 || u128::from(late) < jitter.as_millis(),
                    "started {}ms late with a jitter of {:?}", late, jitter
                );
            }
        }
    }

    /// The validator: no panic, problems located, and whatever it accepts the
    /// daemon can schedule.
    #[test]
    fn fuzz_cron_config_schedule_is_checked_or_schedulable(expr in cron_text()) {
        let dir = tempfile::tempdir().unwrap();
        let text = schedule_config(&expr);
        match Config::from_text(&dir.path().join("retention.toml"), text.clone(), &|_| None) {
            Ok(config) => {
                prop_assert_eq!(&config.defaults.schedule, &expr);
                prop_assert_eq!(&config.rules[0].settings.schedule, &expr);
                let s = RuleSchedule::new("r", &expr, Duration::from_secs(30));
                prop_assert!(s.is_ok(), "accepted {:?} but the daemon cannot parse it", expr);
                prop_assert!(
                    s.unwrap().next(chrono::Utc::now()).is_some(),
                    "accepted {:?} but it never fires", expr
                );
            }
            Err(e) => {
                check_located(&e, &text)?;
                prop_assert!(e.problems.len() <= 2, "{}", e.render(false));
            }
        }
    }
}

#[test]
fn fuzz_cron_regressions() {
    // Panicked: `DateTime + TimeDelta` overflowed (the offset was added
    // unchecked), and a jitter beyond u64 milliseconds wrapped.
    for secs in [u64::MAX, 1 << 62, 9_223_372_036_854_776] {
        let s = RuleSchedule::new("r", "* * * * * *", Duration::from_secs(secs)).unwrap();
        if let Some((slot, start)) = s.next(chrono::Utc::now()) {
            assert!(start >= slot);
        }
    }
    let _ = RuleSchedule::new("r", "0 0 0 1 1 * 2100", Duration::MAX)
        .unwrap()
        .next(chrono::Utc::now());
    for expr in [
        "0 0 0 30 2 *",
        "0 0 0 31 2,4,6,9,11 * 2026-2100",
        "* * * * * * 1969",
        "* * * * * * 2101",
        "0/0 * * * * *",
        "*/4294967295 * * * * *",
        "4294967295-0 * * * * *",
        "99999999999999999999 * * * * *",
        "0 0 0 ? * Mon#2",
        "0 0 0 L * *",
        "@reboot",
        "",
        "\u{0}",
    ] {
        let _ = RuleSchedule::new("r", expr, Duration::from_secs(1))
            .map(|s| s.next(chrono::Utc::now()));
        let dir = tempfile::tempdir().unwrap();
        let text = schedule_config(expr);
        match Config::from_text(&dir.path().join("retention.toml"), text.clone(), &|_| None) {
            Ok(_) => {}
            Err(e) => check_located(&e, &text).unwrap(),
        }
    }
}

// ------------------------------------------------------------------- where

fn sql_token() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "(", ")", "((", "))", "'", "''", "\"", "$$", "$a$", "$1", "--", "/*", "*/", ";",
            "\n", " ", "\0", "\\", "E'\\''", "::", "[", "]", ",", ".", "*", "=", "<>", "<=",
            "||", "true", "false", "NULL", "1", "1e400", "0x", "a", "t.id", "tier", "'free'",
            "AND", "OR", "NOT", "IS", "IN", "EXISTS", "SELECT", "FROM", "WHERE", "UNION",
            "LIMIT 1", "OFFSET 1", "ORDER BY 1", "GROUP BY 1", "HAVING", "FOR UPDATE",
            "WINDOW w AS ()", "INTO x", "WITH", "VALUES (1)", "DELETE", "now()",
            "interval '1 day'", "CASE WHEN", "THEN", "ELSE", "END", "ARRAY[", "COLLATE \"C\"",
            "U&'\\0000'", "é", "\u{feff}",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{1,6}",
    ]
    .boxed()
}

fn sql_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(sql_token(), 0..16).prop_map(|v| v.join(" ")),
        2 => prop::collection::vec(sql_token(), 0..16).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(cfg(CASES))]

    /// No panic; NUL is refused; whatever is accepted stays one expression
    /// where retentiond pastes it.
    #[test]
    fn fuzz_where_check_never_panics(text in sql_text()) {
        let checked = sql_expr::check(&text);
        if text.contains('\0') || text.trim().is_empty() {
            prop_assert!(checked.is_err());
        }
        if checked.is_ok() {
            let sql = format!(
                "DELETE FROM t WHERE ctid IN (SELECT ctid FROM t WHERE (t.a <= now() AND (\n{text}\n) IS TRUE) LIMIT 10)"
            );
            let parsed = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT);
            prop_assert!(
                parsed.as_ref().is_ok_and(|p| p.protobuf.stmts.len() == 1),
                "accepted {:?} but the statement it is pasted into is {:?}", text, parsed.map(|p| p.protobuf.stmts.len())
            );
        }
    }
}

/// True when `text` ends the statement `SELECT 1 WHERE <text>` early with a
/// `;` (`true;`, `a = 1; -- x`). PostgreSQL drops the empty statement after
/// it; `sql_expr::check` also parses the text as it is used, inside
/// parentheses, and so refuses it.
fn ends_its_statement(text: &str) -> bool {
    let sql = format!("SELECT 1 WHERE {text}\n");
    pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT)
        .is_ok_and(|p| p.protobuf.stmts.first().is_some_and(|s| s.stmt_len > 0))
}

#[test]
fn fuzz_where_trailing_semicolon_is_refused() {
    for text in ["true;", "a ;", "true; ;", "true; -- x", "true;\n/* c */"] {
        assert!(ends_its_statement(text), "{text:?}");
        assert!(sql_expr::check(text).is_err(), "{text:?} passed");
    }
}

#[test]
fn fuzz_where_regressions() {
    for text in [
        "\0",
        "true\0",
        "'\0'",
        "-- \0",
        "/* \0 */ true",
        "$$\0$$",
        "U&'\\0000' = ''",
        "E'\\000' = ''",
    ] {
        let r = sql_expr::check(text);
        if text.contains('\0') {
            assert!(r.is_err(), "{text:?}");
        }
    }
    // Deep nesting must be refused or accepted, never overflow the stack.
    for depth in [1_000, 10_000, 100_000] {
        let text = format!("{}true{}", "(".repeat(depth), ")".repeat(depth));
        let _ = sql_expr::check(&text);
        let text = format!("{}true", "NOT ".repeat(depth));
        let _ = sql_expr::check(&text);
    }
}

// ------------------------------------------------------------------ config

/// A small config that uses every section, store type and rule kind. The
/// signing key, the database URL and the hmac key come from `env`.
const BASE: &str = r#"# retention rules (fuzz base)
version = 1

[defaults]
schedule = "0 */15 * * * *"   # cron with seconds, UTC
batch_size = 5000
max_fraction = 0.5
max_clock_skew = "5m"
lock_timeout = "5s"
statement_timeout = "1m"
jitter = "30s"

[audit]
store = "app"
signing_key = "${SIGNING_KEY}"
jsonl = "audit.jsonl"

[stores.app]
type = "postgres"
url = "${APP_DATABASE_URL}"
max_connections = 4

[stores.uploads]
type = "s3"
bucket = "uploads"
region = "eu-west-1"
endpoint = "http://127.0.0.1:9000"
force_path_style = true

[stores.media]
type = "azure_blob"
account = "devstoreaccount1"
container = "media"
sas_token = "sv=2024&sig=x"

[stores.scratch]
type = "filesystem"
root = "scratch"

[[guards]]
store = "app"
table = "billing.invoices"
age = "issued_at"
min_keep = "10y"
reason = "tax law (§147 AO)"

[[holds]]
name = "case-42"
store = "app"
table = "public.sessions"
where = "user_id = 42"
reason = "litigation"

[[holds]]
name = "case-43"
store = "uploads"
prefix = "users/43/"
reason = "litigation"

[[rules]]
name = "sessions-30d"
description = "Session logs — kept 30 days"
policy_ref = "Privacy Policy §6"
store = "app"
table = "public.sessions"
age = "created_at"
keep = "30d"
action = "delete"
where = "tier = 'free' -- comment"
schedule = "0 0 3 * * *"
batch_size = 1000
blobs = { store = "uploads", prefix_template = "sessions/{id}/" }

[[rules]]
name = "invoices-10y"
store = "app"
table = "billing.invoices"
age = "issued_at"
keep = "10y"
action = "delete"
blobs = { store = "media", key_column = "pdf_key" }

[[rules]]
name = "access-ip"
store = "app"
table = "access_log"
age = "seen_at"
keep = "1y6mo"
action = "mask"
columns = { client_ip = "ip_prefix", email = { strategy = "hmac", key_env = "HMAC_KEY" }, note = "redact" }
on_unparsable = "keep"

[[rules]]
name = "exports"
store = "uploads"
prefix = "exports/"
keep = "2w"
action = "delete"
versions = "current"
group_by_prefix_depth = 2
match_metadata = { kind = "export" }
age_metadata = "created"

[[rules]]
name = "tmp"
store = "scratch"
prefix = "tmp/"
keep = "12h"
action = "delete"
lock_timeout = "1s"
"#;

/// A temp dir with a signing key, and the variables the base config uses.
struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = retentiond::audit::key::generate(&dir.path().join("k")).unwrap();
        Fixture { dir, key }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("retention.toml")
    }

    fn env(&self, name: &str) -> Option<String> {
        match name {
            "SIGNING_KEY" => Some(self.key.display().to_string()),
            "APP_DATABASE_URL" => Some("postgres://u@127.0.0.1:1/app".to_string()),
            "HMAC_KEY" => Some("0123456789abcdef0123456789abcdef".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn check(&self, text: &str) -> Result<(), TestCaseError> {
        match Config::from_text(&self.path(), text.to_string(), &|n| self.env(n)) {
            Ok(config) => check_valid(&config, text),
            Err(e) => check_located(&e, text),
        }
    }
}

/// A TOML basic string holding exactly `s`.
fn basic_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings the validator gives a meaning to.
fn meaningful() -> BoxedStrategy<String> {
    prop::sample::select(vec![
        "",
        " ",
        "app",
        "uploads",
        "media",
        "scratch",
        "nope",
        "${SIGNING_KEY}",
        "${APP_DATABASE_URL}",
        "${NOPE}",
        "${EMPTY}",
        "${ EMPTY }",
        "${",
        "${}",
        "$${",
        "$",
        "a${HMAC_KEY",
        "postgres",
        "s3",
        "azure_blob",
        "filesystem",
        "delete",
        "mask",
        "hmac",
        "ip_prefix",
        "null",
        "redact",
        "keep",
        "replace",
        "current",
        "all",
        "a.b",
        "a.b.c",
        ".",
        "a.",
        ".b",
        "x\0y",
        "../etc/",
        "/abs/",
        "./x",
        "é",
        "\u{feff}",
        "{id}",
        "{",
        "{}",
        "x/{id}/{",
        "sessions-30d",
        "bad name!",
        "k/signing.pem",
        "missing",
    ])
    .prop_map(str::to_string)
    .boxed()
}

/// Any value a key might be given, quoted or not, valid TOML or not.
fn value() -> BoxedStrategy<String> {
    let string = prop_oneof![
        3 => meaningful(),
        2 => duration_text(),
        2 => cron_text(),
        2 => sql_text(),
        2 => any::<String>(),
    ];
    prop_oneof![
        6 => string.clone().prop_map(|s| basic_string(&s)),
        1 => string.clone().prop_map(|s| format!("'{s}'")),
        1 => string.prop_map(|s| format!("\"\"\"\n{s}\"\"\"")),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0", "-1", "1", "64", "65", "1000000", "1000001", "4294967296", "0.0", "-0.0",
            "1.0", "1.5", "1e-300", "nan", "inf", "-inf", "true", "false", "[]", "[1, \"a\"]",
            "{}", "1979-05-27T07:32:00Z", "99999999999999999999", "0x10", "1_000",
        ])
        .prop_map(str::to_string),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        2 => inline_table(),
        1 => "\\PC{0,16}",
    ]
    .boxed()
}

/// Inline tables like `columns`, `blobs` and `match_metadata`.
fn inline_table() -> BoxedStrategy<String> {
    let key = prop::sample::select(vec![
        "store",
        "key_column",
        "prefix_template",
        "strategy",
        "key_env",
        "key_file",
        "client_ip",
        "email",
        "kind",
        "bogus",
        "\"quoted key\"",
        "a.b",
    ]);
    let val = prop_oneof![
        4 => meaningful().prop_map(|s| basic_string(&s)),
        1 => Just("{ strategy = \"hmac\", key_env = \"HMAC_KEY\" }".to_string()),
        1 => Just("{ strategy = \"hmac\", key_file = \"k/signing.pem\" }".to_string()),
        1 => Just("{ strategy = \"hmac\", key_file = \"missing\" }".to_string()),
        1 => Just("{ strategy = \"ip_prefix\", key_env = \"HMAC_KEY\" }".to_string()),
        1 => Just("{ strategy = \"hmac\" }".to_string()),
        1 => Just("{ strategy = \"hmac\", key_env = \"NOPE\" }".to_string()),
        1 => Just("1".to_string()),
    ];
    prop::collection::vec((key, val), 0..4)
        .prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", body.join(", "))
        })
        .boxed()
}

/// Text pasted anywhere: TOML's structure, odd characters, anything.
fn insertion() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "[", "]", "[[rules]]\n", "\n[[rules]]\n", "\n[stores.x]\n", "\n[audit]\n",
            "\n[defaults]\n", "[[guards]]\n", "[[holds]]\n", "=", " = ", "\"", "'", "'''",
            "\"\"\"", "#", "\n", "\r\n", "\r", "\t", "{", "}", ",", ".", "\\", "\\u", "$",
            "${", "\u{feff}", "é", "\u{0}", "\u{1b}", "\u{7f}", "\u{2028}", "🦀", "\u{301}",
            "\u{200b}", "\u{fffd}", "keep = \"1d\"\n", "version = 2\n", "name = \"tmp\"\n",
        ])
        .prop_map(str::to_string),
        2 => "\\PC{1,8}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// Keys grouped by what their values mean, for targeted replacements.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration,
    Cron,
    Where,
    Name,
    Number,
    Table,
}

impl Kind {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Duration => &[
                "keep",
                "min_keep",
                "max_clock_skew",
                "lock_timeout",
                "statement_timeout",
                "jitter",
            ],
            Kind::Cron => &["schedule"],
            Kind::Where => &["where"],
            Kind::Name => &[
                "store",
                "type",
                "action",
                "versions",
                "on_unparsable",
                "name",
                "signing_key",
                "url",
                "bucket",
                "account",
                "container",
                "root",
            ],
            Kind::Number => &[
                "version",
                "batch_size",
                "max_fraction",
                "max_connections",
                "group_by_prefix_depth",
            ],
            Kind::Table => &[
                "table",
                "age",
                "prefix",
                "columns",
                "blobs",
                "match_metadata",
                "age_metadata",
            ],
        }
    }
}

fn targeted() -> BoxedStrategy<(Kind, String)> {
    prop_oneof![
        (
            Just(Kind::Duration),
            duration_text().prop_map(|s| basic_string(&s))
        ),
        (Just(Kind::Cron), cron_text().prop_map(|s| basic_string(&s))),
        (Just(Kind::Where), sql_text().prop_map(|s| basic_string(&s))),
        (
            Just(Kind::Name),
            meaningful().prop_map(|s| basic_string(&s))
        ),
        (Just(Kind::Number), value()),
        (
            Just(Kind::Table),
            prop_oneof![meaningful().prop_map(|s| basic_string(&s)), inline_table()]
        ),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value on a line (or append to a line without `=`).
    Value(Index, String),
    /// Replace the value of one key of a kind.
    Targeted(Kind, Index, String),
    DeleteLine(Index),
    DuplicateLine(Index, Index),
    SwapLines(Index, Index),
    SwapKeys(Index, Index),
    Insert(Index, String),
    Truncate(Index),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Value(i, v)),
        5 => (targeted(), any::<Index>()).prop_map(|((k, v), i)| Mutation::Targeted(k, i, v)),
        2 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DuplicateLine(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapKeys(a, b)),
        2 => (any::<Index>(), insertion()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
    .boxed()
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(base: &str, mutations: &[Mutation]) -> String {
    let mut text = base.to_string();
    for m in mutations {
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let n = lines.len();
        match m {
            Mutation::Value(i, v) => {
                let line = &mut lines[i.index(n)];
                *line = match line.split_once('=') {
                    Some((k, _)) => format!("{k}= {v}"),
                    None => format!("{line}{v}"),
                };
            }
            Mutation::Targeted(kind, i, v) => {
                let matching: Vec<usize> = (0..n)
                    .filter(|&l| {
                        lines[l]
                            .split_once('=')
                            .is_some_and(|(k, _)| kind.keys().contains(&k.trim()))
                    })
                    .collect();
                if !matching.is_empty() {
                    let line = &mut lines[matching[i.index(matching.len())]];
                    let (k, _) = line.split_once('=').unwrap();
                    *line = format!("{k}= {v}");
                }
            }
            Mutation::DeleteLine(i) => {
                lines.remove(i.index(n));
            }
            Mutation::DuplicateLine(a, b) => {
                let line = lines[a.index(n)].clone();
                lines.insert(b.index(n + 1), line);
            }
            Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
            Mutation::SwapKeys(a, b) => {
                let (a, b) = (a.index(n), b.index(n));
                if let (Some((ka, va)), Some((kb, vb))) =
                    (lines[a].split_once('='), lines[b].split_once('='))
                {
                    let (na, nb) = (format!("{kb}={va}"), format!("{ka}={vb}"));
                    lines[a] = na;
                    lines[b] = nb;
                }
            }
            Mutation::Insert(i, s) => {
                let mut t = lines.join("\n");
                let at = floor_boundary(&t, i.index(t.len() + 1));
                t.insert_str(at, s);
                lines = vec![t];
            }
            Mutation::Truncate(i) => {
                let mut t = lines.join("\n");
                let at = floor_boundary(&t, i.index(t.len() + 1));
                t.truncate(at);
                lines = vec![t];
            }
        }
        text = lines.join("\n");
    }
    text
}

fn mutant() -> BoxedStrategy<String> {
    prop::collection::vec(mutation(), 1..=4)
        .prop_map(|ms| apply(BASE, &ms))
        .boxed()
}

/// Mutants that stay valid TOML of the right shape, mostly: values of the
/// right type with wrong content, lines moved or dropped. These reach the
/// semantic checks rather than stopping at a syntax error.
fn well_typed_mutant() -> BoxedStrategy<String> {
    let m = prop_oneof![
        8 => (targeted(), any::<Index>()).prop_map(|((k, v), i)| Mutation::Targeted(k, i, v)),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ];
    prop::collection::vec(m, 1..=6)
        .prop_map(|ms| apply(BASE, &ms))
        .boxed()
}

/// Every problem points inside the text, on character boundaries, and is
/// rendered with `file:line:col` and its snippet.
fn check_located(e: &ConfigError, text: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&e.text, text);
    prop_assert!(!e.problems.is_empty(), "an error without a problem");
    let rendered = e.render(false);
    let _ = e.render(true);
    let _ = e.to_string();
    let mut last = 0;
    for p in &e.problems {
        let (start, len) = (p.span.offset(), p.span.len());
        prop_assert!(
            start + len <= text.len(),
            "problem `{}` at {}..{} is outside the text ({} bytes)",
            p.message,
            start,
            start + len,
            text.len()
        );
        prop_assert!(
            text.is_char_boundary(start) && text.is_char_boundary(start + len),
            "problem `{}` at {}..{} splits a character",
            p.message,
            start,
            start + len
        );
        prop_assert!(start >= last, "problems are not in file order");
        last = start;
        prop_assert!(!p.message.trim().is_empty());
        let (line, col) = e.line_col(start);
        prop_assert_eq!((line, col), line_col(text, start));
        prop_assert!(line <= text.split('\n').count());
        let at = format!("{}:{line}:{col}: ", e.path);
        prop_assert!(
            rendered.contains(&at),
            "`{}` not in the rendering:\n{}",
            at,
            rendered
        );
        // The snippet is rendered too (miette drops it silently on a bad span).
        let alone = ConfigError {
            path: e.path.clone(),
            text: e.text.clone(),
            problems: vec![p.clone()],
        }
        .render(false);
        let header = format!("error: {at}{}\n", p.message);
        prop_assert!(
            alone.len() > header.len() + 1,
            "no snippet for `{}`:\n{}",
            p.message,
            alone
        );
    }
    Ok(())
}

/// A validated config resolves every name, and its spans are in the text.
fn check_valid(config: &Config, text: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&config.source.text, text);
    let inside = |r: &std::ops::Range<usize>| {
        r.start <= r.end
            && r.end <= text.len()
            && text.is_char_boundary(r.start)
            && text.is_char_boundary(r.end)
    };
    for span in config.store_spans.values() {
        prop_assert!(inside(span));
    }
    let store = |name: &str| config.stores.get(name);
    if let Some(a) = &config.audit {
        prop_assert_eq!(store(&a.store).map(|s| s.kind()), Some("postgres"));
        prop_assert!(a.signing_key.is_file());
    }
    let mut names = std::collections::BTreeSet::new();
    for r in &config.rules {
        prop_assert!(names.insert(r.name.clone()), "duplicate rule {}", r.name);
        let kind = store(&r.store).map(|s| s.is_blob());
        prop_assert_eq!(
            kind,
            Some(r.is_blob()),
            "rule {} on store {}",
            r.name,
            r.store
        );
        prop_assert!(inside(&r.spans.rule));
        prop_assert!(inside(&r.spans.table) && inside(&r.spans.age));
        prop_assert!(r.spans.filter.as_ref().is_none_or(inside));
        prop_assert!(r.spans.columns.values().all(inside));
        prop_assert!(RuleSchedule::new(&r.name, &r.settings.schedule, r.settings.jitter).is_ok());
        if let retentiond::config::Target::Table(t) = &r.target {
            if let Some(f) = &t.filter {
                prop_assert!(sql_expr::check(f).is_ok());
            }
            if let Some(b) = &t.blobs {
                prop_assert_eq!(store(&b.store).map(|s| s.is_blob()), Some(true));
            }
            if matches!(t.action, retentiond::config::TableAction::Delete) {
                for g in config.guards_on(&r.store, &t.table) {
                    prop_assert!(!r.keep.is_shorter_than(&g.min_keep));
                }
            }
        }
    }
    for g in &config.guards {
        prop_assert!(inside(&g.span));
        prop_assert_eq!(store(&g.store).map(|s| s.is_blob()), Some(false));
    }
    for h in &config.holds {
        prop_assert!(inside(&h.span));
        prop_assert!(store(&h.store).is_some());
    }
    Ok(())
}

#[test]
fn fuzz_config_base_is_valid() {
    let f = Fixture::new();
    let config = Config::from_text(&f.path(), BASE.to_string(), &|n| f.env(n))
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    assert_eq!(config.rules.len(), 5);
    assert_eq!((config.guards.len(), config.holds.len()), (1, 2));
    assert_eq!(config.stores.len(), 4);
    check_valid(&config, BASE).unwrap();
}

proptest! {
    #![proptest_config(cfg(CASES))]

    /// Mutants of a valid config: no panic, and each is either a valid config
    /// or an error whose every problem is located in its text.
    #[test]
    fn fuzz_config_mutants_are_valid_or_located(text in mutant()) {
        let f = Fixture::new();
        f.check(&text)?;
    }

    /// The same for mutants that mostly pass the TOML parser.
    #[test]
    fn fuzz_config_well_typed_mutants_are_valid_or_located(text in well_typed_mutant()) {
        let f = Fixture::new();
        f.check(&text)?;
    }

    /// Arbitrary text, and arbitrary text after a valid prefix.
    #[test]
    fn fuzz_config_any_text_is_located(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]a-z_. =\"'#{},0-9\n\\\\$]{0,120}",
            (any::<Index>(), any::<String>()).prop_map(|(i, s)| {
                let at = floor_boundary(BASE, i.index(BASE.len() + 1));
                format!("{}{s}", &BASE[..at])
            }),
        ]
    ) {
        let f = Fixture::new();
        f.check(&text)?;
    }

    /// Bytes from disk, valid UTF-8 or not: `Config::load` locates the first
    /// invalid byte like any other problem.
    #[test]
    fn fuzz_config_load_any_bytes_is_located(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (
                prop::collection::vec((any::<Index>(), prop::collection::vec(any::<u8>(), 1..4)), 1..4),
            )
                .prop_map(|(edits,)| {
                    let mut b = BASE.as_bytes().to_vec();
                    for (i, ins) in edits {
                        let at = i.index(b.len() + 1);
                        b.splice(at..at, ins);
                    }
                    b
                }),
        ]
    ) {
        let f = Fixture::new();
        std::fs::write(f.path(), &bytes).unwrap();
        match Config::load(&f.path()) {
            Ok(config) => check_valid(&config, &config.source.text.clone())?,
            Err(retentiond::config::LoadError::Invalid(e)) => {
                prop_assert_eq!(&e.text, &String::from_utf8_lossy(&bytes));
                check_located(&e, &e.text)?;
            }
            Err(e) => prop_assert!(false, "not read: {}", e),
        }
    }
}

/// Checks one fixed text as the properties do, printing it on failure.
fn check_text(f: &Fixture, text: &str) {
    if let Err(e) = f.check(text) {
        panic!("{e}\n--- text\n{text}");
    }
}

#[test]
fn fuzz_config_regressions() {
    let f = Fixture::new();
    for text in [
        "",
        "\n",
        "\u{feff}",
        "[",
        "[[rules]]",
        "[[rules]]\nkeep = \"",
        "version = 2",
        "version = 99999999999999999999",
        "[defaults]\nbatch_size = -1\nmax_fraction = nan\n",
        "[defaults]\nmax_fraction = inf\n",
        "[defaults]\nlock_timeout = \"0s\"\nstatement_timeout = \"0s\"\n",
        "[audit]\nsigning_key = \"${\"\n",
        "[stores.a]\ntype = \"postgres\"\nurl = \"${EMPTY}\"\n",
        "[[rules]]\nname = \"é\"\nkeep = \"1é\"\n",
        "[[holds]]\nwhere = \"\\u0000\"\n",
        "[[rules]]\nschedule = \"\\u0000\"\n",
        "a = \"\u{301}\"\n\u{301}",
        "\t\u{1b}[31m = 1",
        "x = 1\r\ny = 2\r",
        "🦀🦀🦀 = 1",
        "[stores.\"\"]\n",
        "[[rules]]\ncolumns = { a = 1 }\n",
    ] {
        check_text(&f, text);
    }
}

#[test]
fn fuzz_config_located_problems_for_every_mutation_kind() {
    // One mutant per kind of mutation, fixed, so a failure is easy to read.
    let f = Fixture::new();
    for text in [
        BASE.replace("keep = \"30d\"", "keep = \"99999999999999999999y\""),
        BASE.replace("schedule = \"0 0 3 * * *\"", "schedule = \"0 0 0 30 2 *\""),
        BASE.replace("where = \"user_id = 42\"", "where = \"true) OR (true\""),
        BASE.replace(
            "[[rules]]\nname = \"tmp\"",
            "[[rules]]\nname = \"tmp\"\nname = \"x\"",
        ),
        BASE.replace("§", "\u{0}"),
        BASE[..BASE.len() / 2].to_string(),
    ] {
        check_text(&f, &text);
    }
}
