//! SQL text for rule statements: quoting, cutoff literals and masking
//! expressions. Pure functions, unit-tested here and executed in the
//! integration tests.
//!
//! Identifiers from the config are always quoted. Cutoffs are computed by us,
//! never user text, and are inlined as typed literals so the planner can prune
//! partitions and estimate with them. Secret material (HMAC keys) is only ever
//! a bound parameter: SQL text shows up in `pg_stat_activity` and server logs.

use super::schema::AgeType;
use crate::config::{MaskStrategy, OnUnparsable, TableName};
use chrono::{DateTime, Utc};

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"` (or `"table"`).
pub fn quote_table(table: &TableName) -> String {
    match &table.schema {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&table.name)),
        None => quote_ident(&table.name),
    }
}

/// A cutoff as a literal of the age column's type. A `timestamp without time
/// zone` column is compared with the UTC wall time, as the contract says.
pub fn cutoff_literal(cutoff: DateTime<Utc>, ty: AgeType) -> String {
    let text = cutoff.format("%Y-%m-%d %H:%M:%S%.6f");
    match ty {
        // An integer age `v` is at or before the cutoff exactly when
        // `v <= floor(cutoff / unit)`: one integer, so the column is
        // compared as it is stored (its index and heap order still serve).
        AgeType::Epoch(unit) => format!(
            "'{}'::int8",
            cutoff.timestamp_micros().div_euclid(unit.micros())
        ),
        AgeType::Timestamptz => format!("'{text}+00'::timestamptz"),
        // date <= timestamp compares the date's midnight with the cutoff.
        AgeType::Timestamp | AgeType::Date => format!("'{text}'::timestamp"),
    }
}

/// A user's `where` as one parenthesised expression. The config loader has
/// checked with PostgreSQL's own parser that the text is exactly one
/// expression (`config::sql_expr`); the newline ends a trailing `--`
/// comment, so the closing parenthesis is always SQL.
pub fn user_expr(filter: &str) -> String {
    format!("(\n{filter}\n)")
}

/// Each row's own cutoff for a per-row period (`keep_expr`): `at -
/// interval`, as a value of the age's type, computed from `at` (one instant
/// per run, so `plan --at` is exact). Months first, then days, then time,
/// in UTC: the same arithmetic as `Keep::cutoff`.
pub fn row_cutoff(at: DateTime<Utc>, interval: &str, ty: AgeType) -> String {
    let text = at.format("%Y-%m-%d %H:%M:%S%.6f");
    match ty {
        AgeType::Timestamptz => format!("('{text}+00'::timestamptz - {interval})"),
        AgeType::Timestamp | AgeType::Date => format!("('{text}'::timestamp - {interval})"),
        // extract(epoch) is numeric (exact microseconds); floor as for a
        // fixed cutoff.
        AgeType::Epoch(unit) => format!(
            "floor(extract(epoch FROM ('{text}+00'::timestamptz - {interval})) * {})::int8",
            1_000_000 / unit.micros()
        ),
    }
}

/// `keep_expr` clamped to `[min, max]`, NULL read as `max`.
pub fn clamped_interval(expr: &str, min: &str, max: &str) -> String {
    format!(
        "LEAST(GREATEST(coalesce(({})::interval, {max}), {min}), {max})",
        user_expr(expr)
    )
}

/// A period as an interval literal.
pub fn interval_literal(keep: &crate::config::Keep) -> String {
    format!("'{}'::interval", keep.as_interval())
}

/// An age as `timestamptz` (for the oldest due row, the compliance lag).
pub fn age_as_timestamptz(age: &str, ty: AgeType) -> String {
    match ty {
        AgeType::Epoch(unit) => format!(
            "('epoch'::timestamptz + ({age}) * '{} microseconds'::interval)",
            unit.micros()
        ),
        // Wall times are UTC (sessions run with TimeZone = UTC).
        _ => format!("({age})::timestamptz"),
    }
}

/// Rows at or before the cutoff (NULL never is) and inside `where`; `age`
/// is the row's age as SQL (see `age::ResolvedAge::sql`).
pub fn due(age: &str, cutoff: &str, filter: Option<&str>) -> String {
    and_where(&format!("{age} <= {cutoff}"), filter)
}

/// `base` for the rows inside the rule's `where` (a NULL `where` is
/// outside, as for deletion).
pub fn and_where(base: &str, filter: Option<&str>) -> String {
    match filter {
        Some(f) => format!("({base} AND {} IS TRUE)", user_expr(f)),
        None => format!("({base})"),
    }
}

/// A guard protects rows younger than its cutoff, and rows whose age is
/// unknown: a floor that cannot be evaluated is not crossed.
pub fn guard_protects(age: &str, cutoff: &str) -> String {
    format!("({age} IS NULL OR {age} > {cutoff})")
}

/// `EXISTS` over the rows a cascade would delete with a parent row, that are
/// themselves protected (`child_protected`, written against `child_alias`).
pub fn cascade_exists(
    child_table: &str,
    child_alias: &str,
    parent_alias: &str,
    columns: &[(String, String)],
    child_protected: &str,
) -> String {
    let join: Vec<String> = columns
        .iter()
        .map(|(c, p)| {
            format!(
                "{child_alias}.{} = {parent_alias}.{}",
                quote_ident(c),
                quote_ident(p)
            )
        })
        .collect();
    format!(
        "EXISTS (SELECT 1 FROM {child_table} AS {child_alias} WHERE {} AND {child_protected})",
        join.join(" AND ")
    )
}

/// OR of predicates, `false` when there are none.
pub fn any_of(parts: &[String]) -> String {
    if parts.is_empty() {
        "false".to_string()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

/// AND of predicates, `true` when there are none.
pub fn all_of(parts: &[String]) -> String {
    if parts.is_empty() {
        "true".to_string()
    } else {
        format!("({})", parts.join(" AND "))
    }
}

/// The pseudonym network for `hmac` masking: ULA space, so a pseudonym is a
/// valid IPv6 address any downstream parser accepts, and a value inside it is
/// recognisably masked (idempotence).
pub const HMAC_NETWORK: &str = "fd72:6574::/32";

/// Name of the session-local function that parses text as `inet`, NULL when
/// it does not parse. Created per connection; see [`PARSE_INET_FUNCTION`].
pub const PARSE_INET: &str = "pg_temp.retentiond_inet";

/// PostgreSQL 15 has no `pg_input_is_valid`; a cast in an exception block is
/// the only way to test a text value without failing the statement. `pg_temp`
/// needs no DDL rights on any schema.
pub const PARSE_INET_FUNCTION: &str = "CREATE OR REPLACE FUNCTION pg_temp.retentiond_inet(v text) \
     RETURNS inet LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS \
     $$BEGIN RETURN v::inet; EXCEPTION WHEN others THEN RETURN NULL; END$$";

/// How a masked column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `inet`.
    Inet,
    /// `cidr`.
    Cidr,
    /// `text` or `varchar`.
    Text,
    /// `json` (key order and duplicates kept when a path is masked).
    Json,
    /// `jsonb`.
    Jsonb,
    /// Anything else (only `null` masking applies).
    Other,
}

/// The SQL for masking one column.
#[derive(Debug, Clone)]
pub struct ColumnMask {
    /// True when the column already holds its masked value (or NULL).
    pub masked: String,
    /// True when the value is text that is not an IP address.
    pub unparsable: String,
    /// `"col" = <new value>` for the UPDATE's SET list.
    pub assignment: String,
    /// The new value (alias `t`), for predicting unique-key conflicts.
    pub value: String,
}

/// HMAC-SHA-256 pads of `key` (RFC 2104), bound as `bytea` parameters so the
/// key never appears in SQL text.
pub fn hmac_pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad = block.iter().map(|b| b ^ 0x36).collect();
    let opad = block.iter().map(|b| b ^ 0x5c).collect();
    (ipad, opad)
}

/// IPv4 keeps /24, IPv6 /48; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// is IPv4 and keeps its /24 (96 + 24 bits), not the `::/48` all such
/// addresses share.
fn prefix_len(v: &str) -> String {
    format!("(CASE WHEN family({v}) = 4 THEN 24 WHEN {v} <<= '::ffff:0.0.0.0/96'::inet THEN 120 ELSE 48 END)")
}

/// Name of the session-local function that sets one path of a `json`
/// document, keeping its key order; see [`JSON_SET_FUNCTION`].
pub const JSON_SET: &str = "pg_temp.retentiond_json_set";

/// `jsonb_set` for `json`: a `json` value keeps its keys in their order
/// (and duplicates), which a round trip through `jsonb` would not. A path
/// that is not there, or a NULL `val` (nothing to change), leaves the
/// document as it is.
pub const JSON_SET_FUNCTION: &str = "CREATE OR REPLACE FUNCTION pg_temp.retentiond_json_set(doc json, path text[], val json) \
     RETURNS json LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$ \
     BEGIN \
       IF val IS NULL OR json_typeof(doc) IS DISTINCT FROM 'object' OR cardinality(path) = 0 THEN RETURN doc; END IF; \
       RETURN coalesce((SELECT json_object_agg(e.key, CASE WHEN e.key = path[1] THEN \
                  CASE WHEN cardinality(path) = 1 THEN val ELSE pg_temp.retentiond_json_set(e.value, path[2:], val) END \
                ELSE e.value END ORDER BY e.ord) \
              FROM json_each(doc) WITH ORDINALITY AS e(key, value, ord)), doc); \
     END $f$";

/// Name of the `jsonb` twin of [`JSON_SET`].
pub const JSONB_SET: &str = "pg_temp.retentiond_jsonb_set";

/// `jsonb_set` without creating a missing path, and leaving the document
/// as it is for a NULL `val`, so that each masked path refers to the
/// document once (nested CASEs would double the SQL text per path).
pub const JSONB_SET_FUNCTION: &str = "CREATE OR REPLACE FUNCTION pg_temp.retentiond_jsonb_set(doc jsonb, path text[], val jsonb) \
     RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$ \
     BEGIN IF val IS NULL THEN RETURN doc; END IF; RETURN jsonb_set(doc, path, val, false); END $f$";

/// Name of the session-local function that masks IP text as real columns
/// hold it; see [`mask_ip_function`].
pub const MASK_IP: &str = "pg_temp.retentiond_mask_ip";

/// The session-local function behind `ip_prefix` on text: each element of
/// a forwarded-for list (`a, b`) masked; `ip:port` and `[v6]:port` lose
/// the port (or keep it, `keep_port`); `[v6]` loses its brackets. NULL
/// when any element is not an address (the value is then unparsable).
/// Idempotent: a masked value masks to itself.
pub fn mask_ip_function() -> String {
    let masked = inet_text(&prefix_inet("a"));
    format!(
        "CREATE OR REPLACE FUNCTION {MASK_IP}(v text, keep_port boolean) \
         RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$ \
         DECLARE item text; out_items text[] := ARRAY[]::text[]; m text[]; addr text; port text; a inet; masked text; \
         BEGIN \
           IF v IS NULL THEN RETURN NULL; END IF; \
           FOREACH item IN ARRAY regexp_split_to_array(btrim(v), '\\s*,\\s*') LOOP \
             port := NULL; \
             m := regexp_match(item, '^\\[([^]]+)\\]:([0-9]{{1,5}})$'); \
             IF m IS NOT NULL THEN addr := m[1]; port := m[2]; \
             ELSE \
               m := regexp_match(item, '^([0-9.]+):([0-9]{{1,5}})$'); \
               IF m IS NOT NULL THEN addr := m[1]; port := m[2]; \
               ELSE m := regexp_match(item, '^\\[([^]]+)\\]$'); addr := coalesce(m[1], item); \
               END IF; \
             END IF; \
             BEGIN a := addr::inet; EXCEPTION WHEN others THEN RETURN NULL; END; \
             masked := {masked}; \
             IF port IS NOT NULL AND keep_port THEN \
               masked := CASE family(a) WHEN 6 THEN '[' || masked || ']:' || port ELSE masked || ':' || port END; \
             END IF; \
             out_items := out_items || masked; \
           END LOOP; \
           RETURN array_to_string(out_items, ', '); \
         END $f$"
    )
}

/// `inet` with host bits past /24 (IPv4) or /48 (IPv6) zeroed; a value that
/// is already a wider network is left as it is. Idempotent.
fn prefix_inet(v: &str) -> String {
    format!(
        "set_masklen(network(set_masklen({v}, LEAST(masklen({v}), {})))::inet, masklen({v}))",
        prefix_len(v)
    )
}

fn prefix_cidr(v: &str) -> String {
    format!(
        "set_masklen(set_masklen({v}, LEAST(masklen({v}), {})), masklen({v}))",
        prefix_len(v)
    )
}

/// An `inet` as text: a bare address for host values, CIDR notation otherwise.
fn inet_text(v: &str) -> String {
    format!("(CASE WHEN masklen({v}) = (CASE family({v}) WHEN 4 THEN 32 ELSE 128 END) THEN host({v}) ELSE text({v}) END)")
}

/// HMAC-SHA-256 of `bytes` (a `bytea` expression) with the bound pads.
fn hmac(bytes: &str, ipad: &str, opad: &str) -> String {
    format!("sha256({opad} || sha256({ipad} || {bytes}))")
}

/// The HMAC pseudonym of an `inet` as an address in [`HMAC_NETWORK`]:
/// 96 bits of HMAC-SHA-256 over the canonical address text.
fn hmac_inet(v: &str, ipad: &str, opad: &str) -> String {
    let h = hmac(&format!("convert_to(host({v}), 'UTF8')"), ipad, opad);
    format!(
        "('fd72:6574:' || regexp_replace(encode(substring({h} FROM 1 FOR 12), 'hex'), '(.{{4}})(?!$)', '\\1:', 'g'))::inet"
    )
}

/// The HMAC pseudonym of any other text: `hmac:` and 128 bits in hex.
fn hmac_text(v: &str, ipad: &str, opad: &str) -> String {
    let h = hmac(&format!("convert_to({v}, 'UTF8')"), ipad, opad);
    format!("('hmac:' || encode(substring({h} FROM 1 FOR 16), 'hex'))")
}

/// HMAC of text `v`: an IP address gets an address pseudonym (still an IP
/// to downstream parsers), any other text (an email) a text one. Returns
/// (already a pseudonym or NULL, the pseudonym).
fn hmac_any_text(v: &str, ipad: &str, opad: &str) -> (String, String) {
    let p = format!("{PARSE_INET}({v})");
    (
        format!("({v} IS NULL OR coalesce({p} <<= '{HMAC_NETWORK}'::inet, false) OR {v} ~ '{HMAC_TEXT_PATTERN}')"),
        format!(
            "(CASE WHEN {p} IS NOT NULL THEN host({}) ELSE {} END)",
            hmac_inet(&p, ipad, opad),
            hmac_text(v, ipad, opad)
        ),
    )
}

/// A value [`hmac_text`] produced.
const HMAC_TEXT_PATTERN: &str = "^hmac:[0-9a-f]{32}$";

/// Builds the SQL for one masked column of alias `t`. `params` are the
/// placeholders (`$n`) of the HMAC pads when the strategy is `hmac`.
pub fn column_mask(
    column: &str,
    kind: ColumnKind,
    not_null: bool,
    strategy: &MaskStrategy,
    on_unparsable: OnUnparsable,
    params: &[(String, String)],
) -> ColumnMask {
    let c = format!("t.{}", quote_ident(column));
    // A row is updated when any of its masked columns is not masked yet;
    // its other columns must not change. ip_prefix, null and redact give a
    // masked value back unchanged, so they need no guard (one evaluation
    // less per row); an HMAC of a pseudonym is another pseudonym, so hmac is
    // guarded.
    let guarded = matches!(strategy, MaskStrategy::Hmac { .. });
    let assign = |expr: String, masked: &str| {
        if guarded {
            format!(
                "{} = CASE WHEN {masked} THEN {c} ELSE {expr} END",
                quote_ident(column)
            )
        } else {
            format!("{} = {expr}", quote_ident(column))
        }
    };
    let (ipad, opad) = params
        .first()
        .map_or(("NULL::bytea", "NULL::bytea"), |(i, o)| {
            (i.as_str(), o.as_str())
        });
    let simple = |masked: String, expr: String| ColumnMask {
        assignment: assign(expr.clone(), &masked),
        value: expr,
        masked,
        unparsable: "false".to_string(),
    };
    match (strategy, kind) {
        (MaskStrategy::Null, _) => simple(format!("{c} IS NULL"), "NULL".to_string()),
        (MaskStrategy::Redact, _) => simple(
            format!("({c} IS NULL OR {c} = 'redacted')"),
            "'redacted'".to_string(),
        ),
        (MaskStrategy::IpPrefix { .. }, ColumnKind::Inet) => simple(
            format!("({c} IS NULL OR {c} = {})", prefix_inet(&c)),
            prefix_inet(&c),
        ),
        (MaskStrategy::IpPrefix { .. }, ColumnKind::Cidr) => simple(
            format!("({c} IS NULL OR {c} = {})", prefix_cidr(&c)),
            prefix_cidr(&c),
        ),
        (MaskStrategy::Hmac { .. }, ColumnKind::Inet) => simple(
            format!("({c} IS NULL OR {c} <<= '{HMAC_NETWORK}'::inet)"),
            hmac_inet(&c, ipad, opad),
        ),
        (MaskStrategy::Hmac { .. }, ColumnKind::Cidr) => simple(
            format!("({c} IS NULL OR {c} <<= '{HMAC_NETWORK}'::cidr)"),
            format!("({})::cidr", hmac_inet(&format!("{c}::inet"), ipad, opad)),
        ),
        (MaskStrategy::Hmac { .. }, _) => {
            let (masked, value) = hmac_any_text(&c, ipad, opad);
            simple(masked, value)
        }
        (MaskStrategy::Json(paths), _) => {
            json_mask(&quote_ident(column), &c, kind, paths, on_unparsable, params)
        }
        (MaskStrategy::IpPrefix { keep_port }, _) => {
            // ip_prefix on text holding IP addresses, in the forms real
            // columns hold them (see `mask_ip_function`); other kinds were
            // refused when the rule was resolved. An empty string holds
            // nothing to mask: it stays, and is not unparsable.
            let m = format!("{MASK_IP}({c}, {keep_port})");
            // Keep mode leaves text that is not an IP as it is, also when
            // another column of the row is being masked.
            let replacement = match (on_unparsable, not_null) {
                (OnUnparsable::Keep, _) => c.clone(),
                (OnUnparsable::Replace, true) => "'redacted'".to_string(),
                (OnUnparsable::Replace, false) => "NULL".to_string(),
            };
            let has_text = format!("{c} IS NOT NULL AND {c} <> ''");
            let (masked_unparsable, unparsable) = match (on_unparsable, not_null) {
                (OnUnparsable::Keep, _) => (
                    format!(" OR {m} IS NULL"),
                    format!("({has_text} AND {m} IS NULL)"),
                ),
                (OnUnparsable::Replace, true) => (
                    format!(" OR {c} = 'redacted'"),
                    format!("({has_text} AND {c} <> 'redacted' AND {m} IS NULL)"),
                ),
                (OnUnparsable::Replace, false) => {
                    (String::new(), format!("({has_text} AND {m} IS NULL)"))
                }
            };
            let masked = format!(
                "({c} IS NULL OR {c} = '' OR coalesce({c} = {m}, false){masked_unparsable})"
            );
            let expr = format!(
                "(CASE WHEN {c} = '' THEN {c} WHEN {m} IS NULL THEN {replacement} ELSE {m} END)"
            );
            ColumnMask {
                assignment: assign(expr.clone(), &masked),
                value: expr,
                masked,
                unparsable,
            }
        }
    }
}

/// Masks the named paths of a `json`/`jsonb` column `c`; the rest of the
/// document stays as it is. A path that is missing or JSON `null` holds
/// nothing to mask.
fn json_mask(
    column: &str,
    c: &str,
    kind: ColumnKind,
    paths: &[(Vec<String>, MaskStrategy)],
    on_unparsable: OnUnparsable,
    params: &[(String, String)],
) -> ColumnMask {
    let (mut masked, mut unparsable) = (Vec::new(), Vec::new());
    // One pair of pads per hmac path, in path order.
    let mut pads = params.iter();
    let mut value = c.to_string();
    for (keys, strategy) in paths {
        let path = format!(
            "ARRAY[{}]::text[]",
            keys.iter()
                .map(|k| format!("'{}'", k.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let text = format!("({c} #>> {path})");
        let current = format!("({c} #> {path})::jsonb");
        let (done, new) = match strategy {
            MaskStrategy::Null => (format!("{text} IS NULL"), "'null'::jsonb".to_string()),
            MaskStrategy::Redact => (
                format!("({text} IS NULL OR {current} = '\"redacted\"'::jsonb)"),
                "'\"redacted\"'::jsonb".to_string(),
            ),
            MaskStrategy::IpPrefix { keep_port } => {
                let m = format!("{MASK_IP}({text}, {keep_port})");
                let (kept, replacement) = match on_unparsable {
                    OnUnparsable::Keep => (format!(" OR {m} IS NULL"), current.clone()),
                    OnUnparsable::Replace => (String::new(), "'null'::jsonb".to_string()),
                };
                unparsable.push(format!(
                    "({text} IS NOT NULL AND {text} <> '' AND {m} IS NULL)"
                ));
                (
                    format!(
                        "({text} IS NULL OR {text} = '' OR coalesce({text} = {m}, false){kept})"
                    ),
                    format!("(CASE WHEN {m} IS NULL THEN {replacement} ELSE to_jsonb({m}) END)"),
                )
            }
            MaskStrategy::Hmac { .. } => {
                let (ipad, opad) = pads
                    .next()
                    .map_or(("NULL::bytea", "NULL::bytea"), |(i, o)| {
                        (i.as_str(), o.as_str())
                    });
                let (done, pseudonym) = hmac_any_text(&text, ipad, opad);
                (done, format!("to_jsonb({pseudonym})"))
            }
            // A path's strategy is never a set of paths (the config
            // cannot say it).
            MaskStrategy::Json(_) => ("true".to_string(), current.clone()),
        };
        let new = format!("(CASE WHEN {done} THEN NULL ELSE {new} END)");
        value = match kind {
            ColumnKind::Json => format!("{JSON_SET}({value}, {path}, ({new})::json)"),
            _ => format!("{JSONB_SET}({value}, {path}, {new})"),
        };
        masked.push(done);
    }
    let masked = format!("({c} IS NULL OR {})", all_of(&masked));
    ColumnMask {
        assignment: format!("{column} = {value}"),
        value: value.clone(),
        masked,
        unparsable: any_of(&unparsable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(
            quote_ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        let t = TableName {
            schema: Some("My Schema".into()),
            name: "t\"x".into(),
        };
        assert_eq!(quote_table(&t), "\"My Schema\".\"t\"\"x\"");
    }

    #[test]
    fn cutoff_literal_matches_column_type() {
        let at = Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap();
        assert_eq!(
            cutoff_literal(at, AgeType::Timestamptz),
            "'2026-02-28 12:00:00.000000+00'::timestamptz"
        );
        assert_eq!(
            cutoff_literal(at, AgeType::Timestamp),
            "'2026-02-28 12:00:00.000000'::timestamp"
        );
    }

    #[test]
    fn due_wraps_filter_as_is_true() {
        assert_eq!(
            due("t.\"created_at\"", "X", None),
            "(t.\"created_at\" <= X)"
        );
        assert_eq!(
            due("t.\"a\"", "X", Some("tier = 'free'")),
            "(t.\"a\" <= X AND (\ntier = 'free'\n) IS TRUE)"
        );
    }

    #[test]
    fn an_integer_cutoff_is_the_last_unit_at_or_before_it() {
        use crate::config::EpochUnit;
        let at = Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(1_999);
        assert_eq!(
            cutoff_literal(at, AgeType::Epoch(EpochUnit::Millis)),
            "'1772280000001'::int8",
            "1.999 ms past: the row at ms 1 is due, the row at ms 2 is not"
        );
        assert_eq!(
            cutoff_literal(at, AgeType::Epoch(EpochUnit::Seconds)),
            "'1772280000'::int8"
        );
        assert_eq!(
            cutoff_literal(at, AgeType::Epoch(EpochUnit::Micros)),
            "'1772280000001999'::int8"
        );
        let before_1970 = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(500);
        assert_eq!(
            cutoff_literal(before_1970, AgeType::Epoch(EpochUnit::Seconds)),
            "'-1'::int8",
            "floor, not truncation toward zero"
        );
    }

    #[test]
    fn hmac_pads_follow_rfc2104() {
        let (ipad, opad) = hmac_pads(b"Jefe");
        assert_eq!(ipad.len(), 64);
        assert_eq!(ipad[0], b'J' ^ 0x36);
        assert_eq!(opad[4], 0x5c);
        let long = vec![7u8; 100];
        let (ipad, _) = hmac_pads(&long);
        assert_eq!(ipad[40], 0x36);
    }

    #[test]
    fn column_mask_never_inlines_key() {
        let m = column_mask(
            "ip",
            ColumnKind::Inet,
            false,
            &MaskStrategy::Hmac {
                key: b"s3cret".to_vec(),
            },
            OnUnparsable::Replace,
            &[("$2".to_string(), "$3".to_string())],
        );
        assert!(!m.assignment.contains("s3cret"));
        assert!(m.assignment.contains("$2") && m.assignment.contains("$3"));
    }
}
