//! One audit record and its canonical, signed form.
//!
//! A record is a flat JSON object: `v`, `seq`, `ts`, `kind`, the event's
//! fields, `prev`, `key_id`, `sig`. Its canonical bytes are RFC 8785 (JSON
//! Canonicalization Scheme) of the object without `sig`; `sig` is Ed25519
//! over those bytes; the record's hash is the SHA-256 of the canonical bytes
//! of the whole object, `sig` included, and is the next record's `prev`.
//! `docs/audit-format.md` specifies this for third-party verifiers.

use super::key::Signer;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Keys every record has; event fields may not use them.
pub const RESERVED: [&str; 7] = ["v", "seq", "ts", "kind", "prev", "key_id", "sig"];

/// The record format version.
pub const FORMAT_VERSION: i64 = 1;

/// An event to record: a kind and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `run_intent`, `run_outcome`, `config_loaded`, ...
    pub kind: &'static str,
    /// The event's fields (no reserved keys).
    pub fields: Map<String, Value>,
}

/// A record sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    /// Position in the log.
    pub seq: i64,
    /// When it was written.
    pub ts: DateTime<Utc>,
    /// Canonical JSON including `sig`: what is stored and exported.
    pub line: String,
    /// SHA-256 of `line`, lowercase hex.
    pub hash: String,
}

/// A record could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// An event field used a reserved key.
    #[error("event field `{0}` collides with a record key")]
    Reserved(String),
    /// Canonicalization failed (a non-integer or out-of-range number).
    #[error("cannot canonicalize record: {0}")]
    Canonical(String),
}

/// Formats a timestamp as records do: RFC 3339, microseconds, `Z`.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// RFC 8785 canonical JSON.
pub fn canonical(value: &Value) -> Result<String, RecordError> {
    serde_json_canonicalizer::to_string(value).map_err(|e| RecordError::Canonical(e.to_string()))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds, signs and hashes the record at `seq` after `prev`.
pub fn seal(
    event: &Event,
    seq: i64,
    ts: DateTime<Utc>,
    prev: &str,
    signer: &Signer,
) -> Result<Sealed, RecordError> {
    let mut object = Map::new();
    for (k, v) in &event.fields {
        if RESERVED.contains(&k.as_str()) {
            return Err(RecordError::Reserved(k.clone()));
        }
        check_numbers(v)?;
        object.insert(k.clone(), v.clone());
    }
    object.insert("v".into(), FORMAT_VERSION.into());
    object.insert("seq".into(), seq.into());
    object.insert("ts".into(), format_ts(ts).into());
    object.insert("kind".into(), event.kind.into());
    object.insert("prev".into(), prev.into());
    object.insert("key_id".into(), signer.key_id().into());
    let mut value = Value::Object(object);
    let unsigned = canonical(&value)?;
    let sig = signer.sign(unsigned.as_bytes());
    if let Value::Object(o) = &mut value {
        o.insert("sig".into(), sig.into());
    }
    let line = canonical(&value)?;
    let hash = sha256_hex(line.as_bytes());
    Ok(Sealed {
        seq,
        ts,
        line,
        hash,
    })
}

/// Only integers within ±2^53 are allowed: JCS serialises numbers as IEEE
/// doubles, and other languages' verifiers must read them back exactly.
fn check_numbers(v: &Value) -> Result<(), RecordError> {
    const LIMIT: i64 = 1 << 53;
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if (-LIMIT..=LIMIT).contains(&i) => Ok(()),
            _ => Err(RecordError::Canonical(format!(
                "number {n} is not an integer within ±2^53"
            ))),
        },
        Value::Array(a) => a.iter().try_for_each(check_numbers),
        Value::Object(o) => o.values().try_for_each(check_numbers),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, SigningKey, Verifier};
    use serde_json::json;

    fn signer() -> Signer {
        Signer::new(SigningKey::from_bytes(&[7u8; 32]))
    }

    #[test]
    fn seal_signs_canonical_bytes_without_sig() {
        let s = signer();
        let mut fields = Map::new();
        fields.insert("rule".into(), json!("session-logs-30d"));
        fields.insert("counts".into(), json!({"matched": 3, "affected": 3}));
        let event = Event {
            kind: "run_outcome",
            fields,
        };
        let ts = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sealed = seal(&event, 1, ts, GENESIS, &s).unwrap();
        let mut parsed: Value = serde_json::from_str(&sealed.line).unwrap();
        assert_eq!(
            canonical(&parsed).unwrap(),
            sealed.line,
            "stored line is canonical"
        );
        let sig = parsed.as_object_mut().unwrap().remove("sig").unwrap();
        let sig = Signature::from_slice(&hex::decode(sig.as_str().unwrap()).unwrap()).unwrap();
        let unsigned = canonical(&parsed).unwrap();
        s.verifying_key().verify(unsigned.as_bytes(), &sig).unwrap();
        assert_eq!(sealed.hash, sha256_hex(sealed.line.as_bytes()));
        assert!(sealed
            .line
            .starts_with("{\"counts\":{\"affected\":3,\"matched\":3},\"key_id\":"));
    }

    #[test]
    fn seal_rejects_reserved_keys_and_floats() {
        let s = signer();
        let mut fields = Map::new();
        fields.insert("seq".into(), json!(9));
        assert!(matches!(
            seal(&Event { kind: "x", fields }, 1, Utc::now(), GENESIS, &s),
            Err(RecordError::Reserved(_))
        ));
        let mut fields = Map::new();
        fields.insert("fraction".into(), json!(0.5));
        assert!(matches!(
            seal(&Event { kind: "x", fields }, 1, Utc::now(), GENESIS, &s),
            Err(RecordError::Canonical(_))
        ));
    }
}
