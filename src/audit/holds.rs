//! Legal holds in the audit log: when a loaded config adds or removes a hold,
//! `hold_added` / `hold_released` records say so, so the log shows which
//! holds were in force when.

use super::{AuditError, AuditLog, Event};
use crate::config::{Config, Hold, HoldTarget};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A hold as recorded: its name and definition.
fn fields(hold: &Hold, config_sha256: &str) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("hold".into(), hold.name.clone().into());
    f.insert("store".into(), hold.store.clone().into());
    match &hold.target {
        HoldTarget::Rows { table, filter } => {
            f.insert("target".into(), table.to_string().into());
            f.insert("where".into(), filter.clone().into());
        }
        HoldTarget::Prefix(p) => {
            f.insert("target".into(), p.clone().into());
        }
    }
    f.insert("reason".into(), hold.reason.clone().into());
    f.insert("config_sha256".into(), config_sha256.into());
    f
}

/// The definition part of a hold's fields (what makes two versions differ).
fn definition(f: &Map<String, Value>) -> Vec<Option<&Value>> {
    ["store", "target", "where", "reason"]
        .iter()
        .map(|k| f.get(*k))
        .collect()
}

/// Records the holds `config` adds and the ones it no longer has, compared
/// with the holds in force according to the log. A hold whose definition
/// changed is released and added again.
pub async fn record_changes(log: &AuditLog, config: &Config) -> Result<usize, AuditError> {
    // One writer at a time, so replicas starting together record a change once.
    let Some(claim) = log.claim("retentiond holds").await? else {
        return Ok(0);
    };
    let result = record_under_claim(log, config).await;
    claim.release().await;
    result
}

async fn record_under_claim(log: &AuditLog, config: &Config) -> Result<usize, AuditError> {
    let lines: Vec<String> = sqlx::query_scalar(
        "SELECT record FROM retentiond.audit_log WHERE kind IN ('hold_added', 'hold_released') ORDER BY seq",
    )
    .fetch_all(log.pool())
    .await?;
    let mut in_force: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for line in lines {
        let Ok(Value::Object(r)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(name) = r.get("hold").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        match r.get("kind").and_then(Value::as_str) {
            Some("hold_added") => {
                in_force.insert(name, r);
            }
            _ => {
                in_force.remove(&name);
            }
        }
    }
    let sha = &config.source.sha256;
    let mut written = 0;
    let now: BTreeMap<&str, Map<String, Value>> = config
        .holds
        .iter()
        .map(|h| (h.name.as_str(), fields(h, sha)))
        .collect();
    for (name, old) in &in_force {
        let changed = now
            .get(name.as_str())
            .is_some_and(|new| definition(new) != definition(old));
        if !now.contains_key(name.as_str()) || changed {
            let mut f = old.clone();
            for k in ["v", "seq", "ts", "kind", "prev", "key_id", "sig"] {
                f.remove(k);
            }
            f.insert("config_sha256".into(), sha.clone().into());
            log.append(&Event {
                kind: "hold_released",
                fields: f,
            })
            .await?;
            written += 1;
        }
    }
    for (name, new) in now {
        let changed = in_force
            .get(name)
            .is_some_and(|old| definition(&new) != definition(old));
        if !in_force.contains_key(name) || changed {
            log.append(&Event {
                kind: "hold_added",
                fields: new,
            })
            .await?;
            written += 1;
        }
    }
    Ok(written)
}
