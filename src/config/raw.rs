//! The rules file exactly as written: every value a message may point at is
//! kept with its byte span. Nothing here validates or resolves; see
//! [`super::validate`] for that.
//!
//! Store sections are plain structs with a spanned `type` rather than a
//! `#[serde(tag = "type")]` enum: serde buffers tagged enums into untyped
//! content and the spans would be lost.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A spanned string value, the most common field type.
pub type SStr = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Option<Spanned<i64>>,
    pub defaults: Option<RawDefaults>,
    pub audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    pub stores: BTreeMap<String, Spanned<RawStore>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub guards: Vec<Spanned<RawGuard>>,
    #[serde(default)]
    pub holds: Vec<Spanned<RawHold>>,
    pub report: Option<RawReport>,
}

/// Settings every rule inherits and may override; the same keys appear on
/// [`RawRule`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub schedule: Option<SStr>,
    pub batch_size: Option<Spanned<i64>>,
    pub max_fraction: Option<Spanned<f64>>,
    pub max_clock_skew: Option<SStr>,
    pub lock_timeout: Option<SStr>,
    pub statement_timeout: Option<SStr>,
    pub jitter: Option<SStr>,
    pub parallelism: Option<Spanned<i64>>,
}

/// `[audit]`: where the signed records go and who signs them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub store: Option<SStr>,
    pub signing_key: Option<SStr>,
    pub jsonl: Option<SStr>,
    pub checkpoints: Option<SStr>,
}

/// `[report]`: who and what `retentiond report` names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    pub organisation: Option<SStr>,
    pub system: Option<SStr>,
}

/// `[stores.NAME]`: the union of every store type's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(rename = "type")]
    pub kind: Option<SStr>,
    // postgres
    pub url: Option<SStr>,
    pub max_connections: Option<Spanned<i64>>,
    // s3
    pub bucket: Option<SStr>,
    pub region: Option<SStr>,
    pub endpoint: Option<SStr>,
    pub force_path_style: Option<Spanned<bool>>,
    // azure_blob
    pub account: Option<SStr>,
    pub container: Option<SStr>,
    pub sas_token: Option<SStr>,
    pub access_key: Option<SStr>,
    // s3 + azure
    pub expected_account: Option<SStr>,
    // filesystem
    pub root: Option<SStr>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<SStr>,
    pub description: Option<SStr>,
    pub policy_ref: Option<SStr>,
    pub store: Option<SStr>,
    pub keep: Option<SStr>,
    pub keep_expr: Option<SStr>,
    pub keep_min: Option<SStr>,
    pub keep_max: Option<SStr>,
    pub action: Option<SStr>,
    // SQL targets
    pub table: Option<SStr>,
    pub age: Option<SStr>,
    pub age_expr: Option<SStr>,
    pub age_unit: Option<SStr>,
    #[serde(rename = "where")]
    pub filter: Option<SStr>,
    pub columns: Option<Spanned<BTreeMap<String, Spanned<RawMask>>>>,
    pub on_unparsable: Option<SStr>,
    pub on_conflict: Option<SStr>,
    pub blobs: Option<Spanned<RawBlobLink>>,
    // blob targets
    pub prefix: Option<SStr>,
    pub versions: Option<SStr>,
    pub group_by_prefix_depth: Option<Spanned<i64>>,
    pub match_metadata: Option<Spanned<BTreeMap<String, String>>>,
    pub age_metadata: Option<SStr>,
    // [defaults] overrides
    pub schedule: Option<SStr>,
    pub batch_size: Option<Spanned<i64>>,
    pub max_fraction: Option<Spanned<f64>>,
    pub max_clock_skew: Option<SStr>,
    pub lock_timeout: Option<SStr>,
    pub statement_timeout: Option<SStr>,
    pub jitter: Option<SStr>,
    pub parallelism: Option<Spanned<i64>>,
}

/// A masking strategy: `"ip_prefix"` or `{ strategy = "hmac", key_env = "K" }`,
/// or for a JSON column, strategies by path: `{ "$.a.b" = "redact" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMask {
    Name(String),
    Full(RawMaskTable),
    Paths(BTreeMap<String, RawMaskLeaf>),
}

/// The strategy of one JSON path.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMaskLeaf {
    Name(String),
    Full(RawMaskTable),
}

/// The table form of a masking strategy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaskTable {
    pub strategy: String,
    pub keep_port: Option<bool>,
    pub key_env: Option<String>,
    pub key_file: Option<String>,
}

/// `blobs = { store, key_column | prefix_template }` on a SQL rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlobLink {
    pub store: Option<SStr>,
    pub key_column: Option<SStr>,
    pub prefix_template: Option<SStr>,
}

/// One `[[guards]]` entry: a must-keep floor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub store: Option<SStr>,
    pub table: Option<SStr>,
    pub age: Option<SStr>,
    pub age_expr: Option<SStr>,
    pub age_unit: Option<SStr>,
    pub min_keep: Option<SStr>,
    pub reason: Option<SStr>,
}

/// One `[[holds]]` entry: a legal hold over the rows a predicate selects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHold {
    pub name: Option<SStr>,
    pub store: Option<SStr>,
    pub table: Option<SStr>,
    #[serde(rename = "where")]
    pub filter: Option<SStr>,
    pub prefix: Option<SStr>,
    pub reason: Option<SStr>,
}
