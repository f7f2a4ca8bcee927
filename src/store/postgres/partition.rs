//! Dropping whole expired partitions instead of deleting their rows.
//!
//! A delete rule on a partitioned table drops a leaf partition when both
//! its bounds and its content say every row it can ever hold is due:
//!
//! - **Bounds.** PostgreSQL's own partition pruning decides: the leaves
//!   left in the plan of `SELECT … WHERE NOT <due> OR <age> IS NULL` may
//!   hold a row that is not due, now or after a later insert; every other
//!   leaf's range lies wholly at or before the cutoff. Pruning needs a
//!   partition key on the age column itself; a key PostgreSQL cannot prune
//!   on (an expression, another column) leaves every leaf in the plan, and
//!   the rule purges in batches. A default partition is never dropped (its
//!   range is "everything else", and future rows would have nowhere to go).
//! - **Content.** Inside the transaction that drops it, under an ACCESS
//!   EXCLUSIVE lock on the leaf, every row must be eligible: due, and kept
//!   by no guard, hold or cascade. One row that is not, and the leaf is
//!   purged in batches instead.
//!
//! Only rules without `where`, `keep_expr`, objects (`blobs`) or tables
//! that cascade from them qualify: their rows each need a decision or a
//! side effect that a drop would skip. A drop that PostgreSQL refuses (a
//! foreign key pointing into the leaf, a view on it, a lock not granted
//! within `lock_timeout`) leaves the leaf to the batches too. The drop is
//! never `CASCADE`.

use super::progress::Totals;
use super::resolve::ResolvedRule;
use sqlx::{Connection, PgConnection, Row};
use std::time::Duration;

/// A leaf partition whose bounds lie wholly at or before the cutoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `schema.table`, both parts quoted.
    pub quoted: String,
    /// `schema.table` as records name it.
    pub name: String,
    /// Its direct parent (quoted), which it is detached from.
    pub parent: String,
    /// Rows in it when counted.
    pub rows: i64,
    /// The oldest age in it (compliance lag).
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it holds a row the rule keeps (not due, or protected): then
    /// it is purged in batches.
    pub keeps_rows: bool,
}

impl Candidate {
    /// Whether the content allows dropping it.
    pub fn droppable(&self) -> bool {
        !self.keeps_rows
    }
}

/// Why drops are not considered for a rule, or None when they are.
pub fn excluded(
    rule: &ResolvedRule,
    has_filter: bool,
    links_objects: bool,
) -> Option<&'static str> {
    if !rule.table.partitioned {
        Some("not partitioned")
    } else if rule.mask.is_some() {
        Some("a mask rule changes rows, it does not remove them")
    } else if has_filter {
        Some("`where` selects rows inside partitions")
    } else if rule.keep_interval.is_some() {
        Some("`keep_expr` gives each row its own period")
    } else if links_objects {
        Some("`blobs` deletes each row's objects first")
    } else if !rule.cascaded.is_empty() {
        Some("other tables cascade from it")
    } else {
        None
    }
}

/// The leaves whose bounds lie wholly at or before the cutoff (see the
/// module docs), with their content counted in the caller's snapshot.
pub async fn candidates(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let may_keep = scans(
        conn,
        &format!("NOT ({}) OR {} IS NULL", rule.due, rule.age.sql("t")),
        rule,
    )
    .await?;
    // Absence from the plan is what makes a leaf a candidate: first make
    // sure a plan without pruning names every leaf, so a plan this code
    // cannot read (another server's format) drops nothing.
    let all = scans(conn, "true", rule).await?;
    let rows = sqlx::query(
        "SELECT format('%I.%I', n.nspname, c.relname) AS quoted, n.nspname || '.' || c.relname AS name, \
                n.nspname AS schema, c.relname AS rel, \
                (SELECT format('%I.%I', pn.nspname, pc.relname) FROM pg_inherits i \
                   JOIN pg_class pc ON pc.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
                  WHERE i.inhrelid = c.oid) AS parent, \
                pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default \
         FROM pg_partition_tree($1::int8::regclass) p \
         JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE p.isleaf AND p.level > 0 ORDER BY 1",
    )
    .bind(i64::from(rule.table.oid))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, rel): (String, String) = (r.try_get("schema")?, r.try_get("rel")?);
        let is_default: bool = r.try_get("is_default")?;
        let named = |set: &[(String, String)]| set.iter().any(|(s, n)| *s == schema && *n == rel);
        if !named(&all) {
            tracing::warn!(partition = %rel, "A plan over the whole table does not name this partition; dropping none.");
            return Ok(Vec::new());
        }
        if is_default || named(&may_keep) {
            continue;
        }
        let quoted: String = r.try_get("quoted")?;
        let (rows, oldest, keeps_rows) = content(conn, rule, &quoted).await?;
        out.push(Candidate {
            name: r.try_get("name")?,
            parent: r.try_get("parent")?,
            quoted,
            rows,
            oldest,
            keeps_rows,
        });
    }
    Ok(out)
}

/// The relations (schema, name) PostgreSQL's plan would scan to find the
/// rows of the rule's table matching `filter` (alias `t`).
async fn scans(
    conn: &mut PgConnection,
    filter: &str,
    rule: &ResolvedRule,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    // VERBOSE: only then does a JSON plan name each relation's schema.
    let plan: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(&format!(
        "EXPLAIN (FORMAT JSON, VERBOSE, COSTS OFF) SELECT 1 FROM {} AS t WHERE {filter}",
        rule.table.quoted
    ))
    .fetch_one(&mut *conn)
    .await?;
    let mut out = Vec::new();
    scanned(&plan.0, &mut out);
    Ok(out)
}

/// Relations a JSON plan scans, as (schema, name).
fn scanned(plan: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match plan {
        serde_json::Value::Array(items) => items.iter().for_each(|i| scanned(i, out)),
        serde_json::Value::Object(map) => {
            if let (Some(rel), Some(schema)) = (
                map.get("Relation Name").and_then(|v| v.as_str()),
                map.get("Schema").and_then(|v| v.as_str()),
            ) {
                out.push((schema.to_string(), rel.to_string()));
            }
            map.values().for_each(|v| scanned(v, out));
        }
        _ => {}
    }
}

/// Rows in `leaf`, their oldest age, and whether one of them is a row the
/// rule keeps. Two statements an index on the age can answer alone (an
/// index-only count, a probe for a young or NULL age) when no guard or
/// hold applies; with one, the second reads every row, as it must.
async fn content(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>, bool), sqlx::Error> {
    let age = rule.age.sql("t");
    let (rows, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(&format!(
        "SELECT count(*)::int8, {} FROM {leaf} AS t",
        super::sql::age_as_timestamptz(&format!("min({age})"), rule.age.ty)
    ))
    .fetch_one(&mut *conn)
    .await?;
    // Kept: not due (a NULL age never is), or protected (in doubt: kept).
    let keeps: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {leaf} AS t WHERE NOT ({}) OR {age} IS NULL OR ({}) IS NOT FALSE)",
        rule.due, rule.protected
    ))
    .fetch_one(conn)
    .await?;
    Ok((rows, oldest, keeps))
}

/// How one drop attempt ended.
#[derive(Debug)]
pub enum Dropped {
    /// Detached and dropped, with this many rows, committed with `record`.
    Dropped(i64),
    /// Kept for the batches: its content or PostgreSQL said no (why).
    Kept(String),
    /// Not done: dropping would pass the run's cap (rows it holds).
    OverCap(i64),
}

/// Detaches and drops `leaf` in one short transaction, after checking its
/// content under an ACCESS EXCLUSIVE lock; `remaining` is how many more rows
/// the run may remove. With `run` (run id, rule, totals so far), the run's
/// progress row is written in the same transaction, so the drop and its
/// count commit together.
pub async fn drop_leaf(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &Candidate,
    (lock_timeout, statement_timeout): (Duration, Duration),
    remaining: Option<i64>,
    run: Option<(&str, &str, &Totals)>,
) -> Result<Dropped, sqlx::Error> {
    let mut tx = conn
        .begin_with(format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
            lock_timeout.as_millis().max(1),
            statement_timeout.as_millis()
        ))
        .await?;
    let attempt = async {
        sqlx::query(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            leaf.quoted
        ))
        .execute(&mut *tx)
        .await?;
        let (rows, _, keeps) = content(&mut tx, rule, &leaf.quoted).await?;
        if keeps {
            return Ok(Dropped::Kept(
                "it now holds a row that is not due or is protected".into(),
            ));
        }
        if remaining.is_some_and(|r| rows > r) {
            return Ok(Dropped::OverCap(rows));
        }
        sqlx::query(&format!(
            "ALTER TABLE {} DETACH PARTITION {}",
            leaf.parent, leaf.quoted
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DROP TABLE {}", leaf.quoted))
            .execute(&mut *tx)
            .await?;
        if let Some((run_id, rule_name, so_far)) = run {
            let mut next = so_far.clone();
            next.affected += rows;
            next.batches += 1;
            next.partitions_dropped.insert(leaf.name.clone(), rows);
            super::progress::record(&mut tx, run_id, rule_name, &next).await?;
        }
        Ok::<_, sqlx::Error>(Dropped::Dropped(rows))
    }
    .await;
    match attempt {
        Ok(Dropped::Dropped(rows)) => {
            tx.commit().await?;
            Ok(Dropped::Dropped(rows))
        }
        Ok(other) => {
            tx.rollback().await?;
            Ok(other)
        }
        Err(e) if refusal(&e) => {
            tx.rollback().await?;
            let why = e
                .as_database_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            Ok(Dropped::Kept(why))
        }
        Err(e) => Err(e),
    }
}

/// Errors that mean "not this way", not "something is broken": the leaf is
/// purged in batches instead.
fn refusal(e: &sqlx::Error) -> bool {
    matches!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        // foreign_key_violation, dependent_objects_still_exist,
        // lock_not_available, deadlock_detected, query_canceled
        // (statement_timeout), object_in_use, insufficient_privilege
        Some("23503" | "2BP01" | "55P03" | "40P01" | "57014" | "55006" | "42501")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanned_finds_every_relation_of_a_plan() {
        let plan: serde_json::Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Append", "Plans": [
                 {"Node Type": "Seq Scan", "Relation Name": "ev_p3", "Schema": "public", "Alias": "t_1"},
                 {"Node Type": "Index Scan", "Relation Name": "ev default", "Schema": "my schema", "Alias": "t_2"}]}}]"#,
        )
        .expect("json");
        let mut out = Vec::new();
        scanned(&plan, &mut out);
        assert_eq!(
            out,
            [
                ("public".to_string(), "ev_p3".to_string()),
                ("my schema".to_string(), "ev default".to_string())
            ]
        );
    }

    #[test]
    fn a_plan_that_scans_nothing_names_nothing() {
        let plan: serde_json::Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Result", "One-Time Filter": "false"}}]"#,
        )
        .expect("json");
        let mut out = Vec::new();
        scanned(&plan, &mut out);
        assert!(out.is_empty());
    }
}
