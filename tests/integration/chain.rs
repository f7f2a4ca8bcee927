//! An independent check of the audit chain in a database, used by tests:
//! gapless seq, prev links, hashes, canonical form, signatures.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use retentiond::audit::record::{canonical, sha256_hex, GENESIS};
use serde_json::Value;
use sqlx::PgPool;

/// Panics unless the whole log is one valid chain signed by `key`.
pub async fn assert_valid(pool: &PgPool, key: &VerifyingKey) -> Vec<Value> {
    let rows: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT seq, prev, hash, record FROM retentiond.audit_log ORDER BY seq")
            .fetch_all(pool)
            .await
            .expect("read audit_log");
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for (i, (seq, prev_col, hash, line)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "seq is gapless");
        let mut v: Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(&canonical(&v).unwrap(), line, "stored record is canonical");
        assert_eq!(v["seq"], *seq);
        assert_eq!(
            v["prev"],
            prev.as_str(),
            "record {seq} links to its predecessor"
        );
        assert_eq!(prev_col, &prev);
        assert_eq!(hash, &sha256_hex(line.as_bytes()));
        let sig = v.as_object_mut().unwrap().remove("sig").expect("sig");
        let sig = Signature::from_slice(&hex::decode(sig.as_str().unwrap()).unwrap()).unwrap();
        key.verify(canonical(&v).unwrap().as_bytes(), &sig)
            .unwrap_or_else(|e| panic!("record {seq}: bad signature: {e}"));
        prev = hash.clone();
        out.push(serde_json::from_str(line).unwrap());
    }
    out
}

/// Records of `kind` for `rule`.
pub fn of<'a>(records: &'a [Value], kind: &str, rule: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind && r["rule"] == rule)
        .collect()
}
