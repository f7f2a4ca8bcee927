//! Signed checkpoints: `{"seq", "head", "ts", "key_id", "sig"}` outside the
//! chain. An auditor who keeps one can later prove the log still reaches
//! `seq` with the same head, which a hash chain alone cannot (its tail can
//! be cut off without breaking it).

use super::key::Signer;
use super::record::{canonical, format_ts, RecordError};
use chrono::Utc;
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::Path;

/// A signed checkpoint for record `seq` whose hash is `head`, as one line of
/// canonical JSON.
pub fn make(signer: &Signer, seq: i64, head: &str) -> Result<String, RecordError> {
    let mut cp =
        json!({ "seq": seq, "head": head, "ts": format_ts(Utc::now()), "key_id": signer.key_id() });
    let sig = signer.sign(canonical(&cp)?.as_bytes());
    cp["sig"] = Value::String(sig);
    canonical(&cp)
}

/// Appends a checkpoint line to `path` and syncs it.
pub fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_data()
}

/// The last JSON object in a checkpoint file.
pub fn read_last(path: &Path) -> std::io::Result<Option<Value>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut last = None;
    for line in file.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not JSON: {e}", path.display()),
            )
        })?;
        last = Some(value);
    }
    Ok(last)
}
