//! Offline verification of an audit log: signatures, the hash chain, gapless
//! `seq`, and (with a checkpoint) truncation of the tail.
//!
//! Records are checked in chunks: parsing, canonical form, hashing and
//! Ed25519 batch verification run in parallel (rayon) within a chunk; the
//! chain is then walked in order. Memory is bounded by the chunk size. The
//! first problem stops the walk and is reported with its `seq` and one reason
//! of [`Reason`]. `docs/audit-format.md` states the same rules for
//! third-party verifiers.

use super::record::{canonical, sha256_hex, GENESIS};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rayon::prelude::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// Public keys by key id.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: HashMap<String, VerifyingKey>,
}

impl Keyring {
    /// Adds a key.
    pub fn add(&mut self, key: VerifyingKey) {
        self.keys.insert(super::key::key_id(&key), key);
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a log does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The record (or a stored column) differs from what was signed and chained.
    Edited,
    /// Records are missing before this seq.
    Removed,
    /// Records are out of order.
    Reordered,
    /// The log ends before a checkpoint's seq.
    Truncated,
    /// Signed by a key not in the keyring.
    UnknownKey,
    /// The signature does not verify under the named key.
    BadSignature,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Edited => "edited",
            Reason::Removed => "removed",
            Reason::Reordered => "reordered",
            Reason::Truncated => "truncated",
            Reason::UnknownKey => "unknown key",
            Reason::BadSignature => "bad signature",
        })
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {reason}: {detail}")]
pub struct Invalid {
    /// The first bad seq.
    pub seq: i64,
    /// What is wrong.
    pub reason: Reason,
    /// Details for a person.
    pub detail: String,
}

/// What a successful verification proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// First and last seq verified (None when empty).
    pub range: Option<(i64, i64)>,
    /// Records verified.
    pub count: u64,
    /// `prev` of the first record: ties a sub-range to earlier records.
    pub first_prev: String,
    /// Hash of the last record.
    pub head: String,
    /// Keys that signed the records.
    pub key_ids: BTreeSet<String>,
    /// The checkpoint's seq, when one was checked.
    pub checkpoint: Option<i64>,
}

/// A stored record: its line, plus the database columns when read from one.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The canonical line.
    pub line: String,
    /// Columns that must agree with the line (`seq`, `ts`, ...), if any.
    pub columns: Option<Columns>,
    /// Why the line could not even be read as text (invalid UTF-8).
    pub malformed: Option<String>,
}

/// `retentiond.audit_log` columns besides `record`.
#[derive(Debug, Clone)]
pub struct Columns {
    /// `seq`.
    pub seq: i64,
    /// `ts`, formatted as records format it.
    pub ts: String,
    /// `kind`.
    pub kind: String,
    /// `rule`.
    pub rule: Option<String>,
    /// `run_id`.
    pub run_id: Option<String>,
    /// `prev`.
    pub prev: String,
    /// `key_id`.
    pub key_id: String,
    /// `hash`.
    pub hash: String,
}

/// A parsed, hashed, signature-checked record, before the chain walk.
struct Checked {
    seq: i64,
    hash: String,
    prev: String,
    key_id: String,
    /// Ok, or the per-record problem (edited, unknown key, bad signature).
    problem: Option<(Reason, String)>,
}

/// A problem whose reason depends on the record after it.
enum Pending {
    /// This record's signature failed: `edited` if the next record does not
    /// chain to it (it changed after being chained), else `bad signature`.
    Signature {
        seq: i64,
        hash: String,
        key_id: String,
    },
    /// The log jumps forward from `last` to `seq`: `reordered` if the next
    /// record brings a missing seq back, else `removed`.
    Jump { last: i64, seq: i64 },
}

/// Walks a log in order; feed it chunks, then [`LogVerifier::finish`].
pub struct LogVerifier<'k> {
    keys: &'k Keyring,
    proof: Proof,
    last: Option<(i64, String)>,
    /// A decision that needs the next record (see [`Pending`]).
    pending: Option<Pending>,

    /// The checkpoint to check, and the hash of the record at its seq.
    checkpoint: Option<(Value, i64)>,
    at_checkpoint: Option<String>,
}

/// Records per parallel chunk.
pub const CHUNK: usize = 8192;

/// Signatures per batch verification.
const SIG_BATCH: usize = 256;

/// What a record's signature check needs.
struct Signed {
    message: Vec<u8>,
    sig: Signature,
    key: VerifyingKey,
}

impl<'k> LogVerifier<'k> {
    /// A verifier over `keys`, checking the log against `checkpoint` too.
    pub fn new(keys: &'k Keyring, checkpoint: Option<Value>) -> LogVerifier<'k> {
        let checkpoint = checkpoint.map(|cp| {
            let seq = cp.get("seq").and_then(Value::as_i64).unwrap_or_default();
            (cp, seq)
        });
        LogVerifier {
            keys,
            proof: Proof::default(),
            last: None,
            pending: None,
            checkpoint,
            at_checkpoint: None,
        }
    }

    /// Checks the next records, in log order.
    pub fn feed(&mut self, chunk: &[Stored]) -> Result<(), Invalid> {
        let mut checked: Vec<(Checked, Option<Signed>)> =
            chunk.par_iter().map(|s| check_one(s, self.keys)).collect();
        // Ed25519 batch verification is about twice as fast per signature as
        // one at a time; a failing batch is re-checked one by one to find
        // the record.
        checked.par_chunks_mut(SIG_BATCH).for_each(|part| {
            let signed: Vec<&Signed> = part.iter().filter_map(|(_, s)| s.as_ref()).collect();
            let messages: Vec<&[u8]> = signed.iter().map(|s| s.message.as_slice()).collect();
            let sigs: Vec<Signature> = signed.iter().map(|s| s.sig).collect();
            let keys: Vec<VerifyingKey> = signed.iter().map(|s| s.key).collect();
            if ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok() {
                return;
            }
            for (c, s) in part.iter_mut() {
                if let Some(s) = s {
                    if s.key.verify(&s.message, &s.sig).is_err() {
                        c.problem = Some((Reason::BadSignature, String::new()));
                    }
                }
            }
        });
        for (c, _) in checked {
            self.walk(c)?;
        }
        Ok(())
    }

    /// Checks one record against the chain so far. The order of checks is
    /// docs/audit-format.md's: form, key, signature, seq, prev.
    fn walk(&mut self, c: Checked) -> Result<(), Invalid> {
        if let Some(pending) = self.pending.take() {
            return Err(resolve(pending, Some(&c)));
        }
        let invalid = |seq, reason, detail: String| {
            Err(Invalid {
                seq,
                reason,
                detail,
            })
        };
        match &c.problem {
            Some((Reason::BadSignature, _)) => {
                self.pending = Some(Pending::Signature {
                    seq: c.seq,
                    hash: c.hash,
                    key_id: c.key_id,
                });
                return Ok(());
            }
            Some((reason, detail)) => {
                let seq = if c.seq > 0 {
                    c.seq
                } else {
                    self.last.as_ref().map_or(0, |(s, _)| s + 1)
                };
                return invalid(seq, *reason, detail.clone());
            }
            None => {}
        }
        match &self.last {
            None => {
                if c.seq == 1 && c.prev != GENESIS {
                    return invalid(c.seq, Reason::Edited, "seq 1's prev is not 64 zeros".into());
                }
                self.proof.first_prev = c.prev.clone();
            }
            Some((last_seq, last_hash)) => {
                if c.seq <= *last_seq {
                    return invalid(
                        c.seq,
                        Reason::Reordered,
                        format!("seq {} follows seq {last_seq}", c.seq),
                    );
                }
                if c.seq > last_seq + 1 {
                    self.pending = Some(Pending::Jump {
                        last: *last_seq,
                        seq: c.seq,
                    });
                    return Ok(());
                }
                if &c.prev != last_hash {
                    return invalid(
                        c.seq,
                        Reason::Edited,
                        format!(
                            "prev {} is not the hash of the record before, {last_hash}",
                            c.prev
                        ),
                    );
                }
            }
        }
        self.proof.range = Some((self.proof.range.map_or(c.seq, |r| r.0), c.seq));
        self.proof.count += 1;
        self.proof.key_ids.insert(c.key_id);
        self.proof.head = c.hash.clone();
        if self
            .checkpoint
            .as_ref()
            .is_some_and(|(_, seq)| *seq == c.seq)
        {
            self.at_checkpoint = Some(c.hash.clone());
        }
        self.last = Some((c.seq, c.hash));
        Ok(())
    }

    /// Ends the walk; checks the checkpoint when given.
    pub fn finish(mut self) -> Result<Proof, Invalid> {
        if let Some(pending) = self.pending.take() {
            return Err(resolve(pending, None));
        }
        if let Some((cp, _)) = &self.checkpoint {
            let seq = check_checkpoint(cp, self.keys, &self.proof, self.at_checkpoint.as_deref())?;
            self.proof.checkpoint = Some(seq);
        }
        Ok(self.proof)
    }
}

/// Decides a pending problem now that the next record (or the end) is known.
fn resolve(pending: Pending, next: Option<&Checked>) -> Invalid {
    match pending {
        Pending::Signature { seq, hash, key_id } => match next {
            Some(n) if n.prev != hash => Invalid {
                seq,
                reason: Reason::Edited,
                detail: "its signature does not verify, and the next record's prev is not its hash"
                    .into(),
            },
            _ => Invalid {
                seq,
                reason: Reason::BadSignature,
                detail: format!("its signature does not verify with key id {key_id}"),
            },
        },
        Pending::Jump { last, seq } => match next {
            Some(n) if n.seq < seq => Invalid {
                seq,
                reason: Reason::Reordered,
                detail: format!("seq {seq} follows seq {last} and precedes seq {}", n.seq),
            },
            _ => Invalid {
                seq: last + 1,
                reason: Reason::Removed,
                detail: format!("the log jumps from seq {last} to seq {seq}"),
            },
        },
    }
}

/// Parses, checks form, columns and key; returns what the signature check
/// needs (None when an earlier check already failed).
fn check_one(stored: &Stored, keys: &Keyring) -> (Checked, Option<Signed>) {
    let hash = sha256_hex(stored.line.as_bytes());
    let mut c = Checked {
        seq: 0,
        hash,
        prev: String::new(),
        key_id: String::new(),
        problem: None,
    };
    let value: Value = match serde_json::from_str(&stored.line) {
        Ok(v) => v,
        Err(e) => {
            c.seq = stored.columns.as_ref().map_or(0, |col| col.seq);
            c.problem = Some((Reason::Edited, format!("not JSON: {e}")));
            return (c, None);
        }
    };
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    c.seq = value.get("seq").and_then(Value::as_i64).unwrap_or_default();
    c.prev = text(&value, "prev");
    c.key_id = text(&value, "key_id");
    if let Some(col) = &stored.columns {
        if col.seq != c.seq {
            c.seq = col.seq;
            c.problem = Some((
                Reason::Reordered,
                format!(
                    "stored at seq {} but the record says seq {}",
                    col.seq, value["seq"]
                ),
            ));
            return (c, None);
        }
        if let Some(which) = column_mismatch(col, &value, &c.hash) {
            c.problem = Some((
                Reason::Edited,
                format!("column `{which}` differs from the signed record"),
            ));
            return (c, None);
        }
    }
    if let Some(why) = stored.malformed.clone().or_else(|| malformed(&value)) {
        c.problem = Some((Reason::Edited, why));
        return (c, None);
    }
    if !is_canonical(&value, &stored.line) {
        c.problem = Some((Reason::Edited, "the record is not in canonical form".into()));
        return (c, None);
    }
    let Some(key) = keys.get(&c.key_id) else {
        c.problem = Some((
            Reason::UnknownKey,
            format!("key_id {} is not among the given public keys", c.key_id),
        ));
        return (c, None);
    };
    // The line is canonical (checked above), so its canonical form without
    // `sig` is the line with that member cut out: JCS sorts keys, and `sig`
    // is never the first (`key_id`, `kind`, `prev`, `seq` sort before it).
    let sig_hex = value.get("sig").and_then(Value::as_str).unwrap_or_default();
    let member = format!(",\"sig\":\"{sig_hex}\"");
    let sig = hex::decode(sig_hex)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok());
    match (sig, stored.line.find(&member)) {
        (Some(sig), Some(at)) => {
            let mut message = Vec::with_capacity(stored.line.len() - member.len());
            message.extend_from_slice(&stored.line.as_bytes()[..at]);
            message.extend_from_slice(&stored.line.as_bytes()[at + member.len()..]);
            (
                c,
                Some(Signed {
                    message,
                    sig,
                    key: *key,
                }),
            )
        }
        _ => {
            c.problem = Some((
                Reason::Edited,
                "sig is not a 64-byte signature in hex".into(),
            ));
            (c, None)
        }
    }
}

/// True when `line` is the RFC 8785 form of `value`. serde_json's compact
/// output with sorted keys (its maps are BTreeMaps) is the JCS form for
/// ASCII keys and integers, which `malformed` already required, and is much
/// faster; only when it differs is the full canonicalizer asked (keys
/// outside the BMP sort differently in UTF-16).
fn is_canonical(value: &Value, line: &str) -> bool {
    match serde_json::to_string(value) {
        Ok(fast) if fast == line => true,
        _ => canonical(value).is_ok_and(|c| c == line),
    }
}

/// The envelope's fields must have their types, and every number must be an
/// integer within ±2^53 (what RFC 8785 round-trips exactly).
fn malformed(v: &Value) -> Option<String> {
    fn numbers_ok(v: &Value) -> bool {
        const LIMIT: i64 = 1 << 53;
        match v {
            Value::Number(n) => n.as_i64().is_some_and(|i| (-LIMIT..=LIMIT).contains(&i)),
            Value::Array(a) => a.iter().all(numbers_ok),
            Value::Object(o) => o.values().all(numbers_ok),
            _ => true,
        }
    }
    let Some(o) = v.as_object() else {
        return Some("not a JSON object".into());
    };
    let is_hex = |k: &str, len: usize| {
        o.get(k).and_then(Value::as_str).is_some_and(|s| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    if o.get("v").and_then(Value::as_i64) != Some(1) {
        return Some("`v` is not 1".into());
    }
    if o.get("seq").and_then(Value::as_i64).is_none_or(|s| s < 1) {
        return Some("`seq` is not a positive integer".into());
    }
    if !(is_hex("prev", 64) && is_hex("key_id", 16) && is_hex("sig", 128)) {
        return Some("`prev`, `key_id` or `sig` is not lowercase hex of the right length".into());
    }
    if !o.get("ts").is_some_and(Value::is_string) || !o.get("kind").is_some_and(Value::is_string) {
        return Some("`ts` or `kind` is missing".into());
    }
    (!numbers_ok(v)).then(|| "a number is not an integer within ±2^53".into())
}

fn column_mismatch(col: &Columns, v: &Value, hash: &str) -> Option<&'static str> {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    if col.hash != hash {
        return Some("hash");
    }
    if Some(col.ts.as_str()) != s("ts") {
        return Some("ts");
    }
    if Some(col.kind.as_str()) != s("kind") {
        return Some("kind");
    }
    if col.rule.as_deref() != s("rule") {
        return Some("rule");
    }
    if col.run_id.as_deref() != s("run_id") {
        return Some("run_id");
    }
    if Some(col.prev.as_str()) != s("prev") {
        return Some("prev");
    }
    if Some(col.key_id.as_str()) != s("key_id") {
        return Some("key_id");
    }
    None
}

/// Verifies a checkpoint's signature and that the log reaches and matches
/// it. `at_seq` is the hash of the record at the checkpoint's seq, if seen.
fn check_checkpoint(
    cp: &Value,
    keys: &Keyring,
    proof: &Proof,
    at_seq: Option<&str>,
) -> Result<i64, Invalid> {
    let seq = cp.get("seq").and_then(Value::as_i64).unwrap_or_default();
    let bad = |reason, detail: String| {
        Err(Invalid {
            seq,
            reason,
            detail,
        })
    };
    let key_id = cp.get("key_id").and_then(Value::as_str).unwrap_or_default();
    let Some(key) = keys.get(key_id) else {
        return bad(
            Reason::UnknownKey,
            format!("the checkpoint is signed by key_id {key_id}, not among the given public keys"),
        );
    };
    if !signature_ok(cp, key) {
        return bad(
            Reason::BadSignature,
            "the checkpoint's signature does not verify".into(),
        );
    }
    let head = cp.get("head").and_then(Value::as_str).unwrap_or_default();
    match (proof.range, at_seq) {
        (_, Some(hash)) if hash == head => Ok(seq),
        (_, Some(_)) => bad(Reason::Edited, "the record at the checkpoint's seq does not hash to the checkpoint's head".into()),
        (Some((_, end)), None) if seq > end => {
            bad(Reason::Truncated, format!("the log ends at seq {end}, the checkpoint proves it reached seq {seq}"))
        }
        (None, None) => bad(Reason::Truncated, "the log is empty, the checkpoint proves it had records".into()),
        (Some((first, _)), None) => bad(
            Reason::Truncated,
            format!("the checkpoint's seq {seq} lies before this range, which starts at seq {first}; verify the export that holds it"),
        ),
    }
}

/// True when `value`'s `sig` is `key`'s signature over its canonical bytes
/// without `sig`.
pub fn signature_ok(value: &Value, key: &VerifyingKey) -> bool {
    let mut unsigned = value.clone();
    let sig = unsigned.as_object_mut().and_then(|o| o.remove("sig"));
    let sig = sig
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| Signature::from_slice(&b).ok());
    match (sig, canonical(&unsigned)) {
        (Some(sig), Ok(bytes)) => key.verify(bytes.as_bytes(), &sig).is_ok(),
        _ => false,
    }
}
