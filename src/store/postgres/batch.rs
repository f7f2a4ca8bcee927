//! The statements a rule run executes: one counting scan for the plan, and
//! one statement per batch, in its own short transaction.
//!
//! A batch is one plain statement over a window of heap pages:
//! `DELETE ... WHERE ctid >= lo AND ctid < hi AND <eligible>` (an `UPDATE`
//! for masks), a TID range scan that visits each row once. Measured on 1M
//! rows this runs at about the speed of one big `DELETE` per row, where
//! selecting a batch first and deleting it by `ctid = ANY(array)` was 2.5×
//! slower (scripts/bench, README). The window is sized by the caller so it
//! holds about `batch_size` rows; a batch that changes more is rolled back and
//! retried smaller, so a committed batch never exceeds `batch_size`.
//!
//! Batches run in REPEATABLE READ. Then a row changed by someone else since
//! our snapshot is a serialization error (the batch is retried), never a
//! silent change; and PostgreSQL's `ON DELETE CASCADE` triggers check with a
//! crosscheck snapshot, so a child row committed after our guard check was
//! evaluated fails the batch instead of being deleted unseen.

use super::resolve::ResolvedRule;
use super::sql;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;

/// What a counting scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows in the table.
    pub total: i64,
    /// Rows the rule would change now.
    pub matched: i64,
    /// Due rows kept back by a guard, hold or cascade.
    pub protected: i64,
    /// Due rows with a text IP value that does not parse.
    pub unparsable: i64,
    /// The oldest age among matched rows (compliance lag).
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows inside the rule's `where` whose age is NULL: never expire.
    pub null_age: i64,
    /// Of `protected`, what each guard and hold keeps back (by label; a row
    /// two floors keep counts for both).
    pub protected_by: BTreeMap<String, i64>,
}

/// Counts in one scan. The protection and parse checks are wrapped in
/// `CASE WHEN due` so their subqueries run for due rows only. Partitions
/// the run will drop whole were counted when they were checked
/// ([`super::partition`]); only the other leaves are scanned then.
pub async fn count(conn: &mut PgConnection, rule: &ResolvedRule) -> Result<Counts, sqlx::Error> {
    let drops: Vec<_> = rule.drops.iter().filter(|c| c.droppable()).collect();
    if drops.is_empty() {
        return count_in(conn, rule, &rule.table.quoted).await;
    }
    let mut sum = Counts::default();
    for leaf in &rule.leaves {
        if !drops.iter().any(|c| c.quoted == *leaf) {
            sum.add(count_in(&mut *conn, rule, leaf).await?);
        }
    }
    for c in drops {
        // Every row of a droppable partition is due and unprotected.
        sum.add(Counts {
            total: c.rows,
            matched: c.rows,
            oldest: c.oldest,
            ..Counts::default()
        });
    }
    Ok(sum)
}

impl Counts {
    /// Adds the counts of another part of the table.
    fn add(&mut self, o: Counts) {
        self.total += o.total;
        self.matched += o.matched;
        self.protected += o.protected;
        self.unparsable += o.unparsable;
        self.null_age += o.null_age;
        self.oldest = match (self.oldest, o.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (k, v) in o.protected_by {
            *self.protected_by.entry(k).or_default() += v;
        }
    }
}

/// [`count`] over one relation: the table, or one of its leaves.
async fn count_in(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    relation: &str,
) -> Result<Counts, sqlx::Error> {
    let row = sqlx::query(&count_sql_in(rule, relation))
        .fetch_one(conn)
        .await?;
    let mut protected_by = BTreeMap::new();
    for (i, (label, _)) in rule.protected_by.iter().enumerate() {
        let n: i64 = row.try_get(format!("retentiond_by{i}").as_str())?;
        // Like `cascaded` and `skipped`: only what kept something.
        if n > 0 {
            protected_by.insert(label.clone(), n);
        }
    }
    Ok(Counts {
        total: row.try_get("total")?,
        matched: row.try_get("matched")?,
        protected: row.try_get("protected")?,
        unparsable: row.try_get("unparsable")?,
        oldest: row.try_get("oldest")?,
        null_age: row.try_get("null_age")?,
        protected_by,
    })
}

/// The counting query (also `EXPLAIN`ed by `check --online`).
pub fn count_sql(rule: &ResolvedRule) -> String {
    count_sql_in(rule, &rule.table.quoted)
}

/// The counting query over `relation` (the table or one of its leaves).
fn count_sql_in(rule: &ResolvedRule, relation: &str) -> String {
    if rule.mask.is_none() && rule.protected == "false" && rule.protected_by.is_empty() {
        // Nothing to evaluate per row but the age: three plain counts an
        // index on the age answers alone (an index-only scan of the due
        // rows, a probe for NULLs), where the general form below reads
        // every due row through a per-row subquery (0.17 s against
        // 0.63 s for 3.5M due rows).
        return format!(
            "SELECT (SELECT count(*) FROM {relation})::int8 AS total, d.matched, 0::int8 AS protected, \
                    0::int8 AS unparsable, d.oldest, \
                    (SELECT count(*) FROM {relation} AS t WHERE {null_age})::int8 AS null_age \
             FROM (SELECT count(*)::int8 AS matched, {oldest} AS oldest FROM {relation} AS t WHERE {due}) AS d",
            null_age = rule.null_age,
            due = rule.due,
            oldest = sql::age_as_timestamptz(&format!("min({})", rule.age.sql("t")), rule.age.ty),
        );
    }
    let (masked, unparsable) = match &rule.mask {
        Some(m) => (m.masked.as_str(), m.unparsable.as_str()),
        None => ("false", "false"),
    };
    // Each floor's own predicate runs only for rows already found protected
    // (an outer LATERAL level), so a rule with several guards and holds pays
    // for them on its protected rows, not on every due row.
    let (by_counts, by_columns): (String, String) = rule
        .protected_by
        .iter()
        .enumerate()
        .map(|(i, (_, p))| {
            (
                format!(", count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND x.retentiond_p AND x.retentiond_b{i})::int8 AS retentiond_by{i}"),
                format!(", CASE WHEN z.retentiond_p THEN {p} ELSE false END AS retentiond_b{i}"),
            )
        })
        .unzip();
    // Names inside the LATERAL are prefixed: a hold's bare column names must
    // resolve to the table, not to our helper columns. Only due and
    // NULL-age rows are read for the details (an index on the age can
    // serve them); the total is a plain count the planner answers the
    // cheapest way it knows, e.g. an index-only scan.
    format!(
        "SELECT (SELECT count(*) FROM {table})::int8 AS total, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND NOT x.retentiond_p)::int8 AS matched, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND x.retentiond_p)::int8 AS protected, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_p AND x.retentiond_u)::int8 AS unparsable, \
                {oldest} AS oldest, \
                count(*) FILTER (WHERE {null_age})::int8 AS null_age\
                {by_counts} \
         FROM {table} AS t, LATERAL ( \
           SELECT z.*{by_columns} FROM ( \
             SELECT y.retentiond_d, \
                    CASE WHEN y.retentiond_d THEN {masked} ELSE false END AS retentiond_m, \
                    CASE WHEN y.retentiond_d THEN {protected} ELSE false END AS retentiond_p, \
                    CASE WHEN y.retentiond_d THEN {unparsable} ELSE false END AS retentiond_u \
             FROM (SELECT {due} AS retentiond_d) AS y) AS z) AS x \
         WHERE ({due}) OR ({null_age})",
        protected = rule.protected,
        due = rule.due,
        oldest = sql::age_as_timestamptz(
            &format!(
                "min({}) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND NOT x.retentiond_p)",
                rule.age.sql("t")
            ),
            rule.age.ty
        ),
        null_age = rule.null_age,
        table = relation,
    )
}

/// Rows a mask would change that a unique key refuses: of the rows whose
/// masked keys coincide, all but the first in heap order, and every row
/// whose masked key equals another row's current key. Exact for unique
/// keys over plain columns (the others are named in the rule's notes);
/// `hmac` values never collide, so they count as they are.
pub async fn count_conflicts(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
) -> Result<i64, sqlx::Error> {
    let Some(sql) = conflicts_sql(rule) else {
        return Ok(0);
    };
    sqlx::query_scalar(&sql).fetch_one(conn).await
}

/// The statement behind [`count_conflicts`]; None when no unique key
/// covers a masked column.
pub fn conflicts_sql(rule: &ResolvedRule) -> Option<String> {
    let m = rule.mask.as_ref()?;
    if m.unique_keys.is_empty() {
        return None;
    }
    let table = &rule.table.quoted;
    let eligible = rule.eligible();
    let per_key: Vec<String> = m
        .unique_keys
        .iter()
        .map(|key| {
            let values: Vec<String> = key
                .iter()
                .map(|c| {
                    m.values
                        .iter()
                        .find(|(n, _)| n == c)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| format!("t.{}", sql::quote_ident(c)))
                })
                .collect();
            let names: Vec<String> = (0..key.len()).map(|i| format!("retentiond_k{i}")).collect();
            let select: Vec<String> = values
                .iter()
                .zip(&names)
                .map(|(v, n)| format!("{v} AS {n}"))
                .collect();
            // NULLs never collide in a unique index.
            let not_null: Vec<String> = names.iter().map(|n| format!("x.{n} IS NOT NULL")).collect();
            let current: Vec<String> = key
                .iter()
                .zip(&names)
                .map(|(c, n)| format!("s.{} = x.{n}", sql::quote_ident(c)))
                .collect();
            format!(
                "SELECT x.rel, x.tid FROM (SELECT t.tableoid AS rel, t.ctid AS tid, {}, \
                   row_number() OVER (PARTITION BY {} ORDER BY t.tableoid, t.ctid) AS retentiond_rn \
                   FROM {table} AS t WHERE {eligible}) AS x \
                 WHERE {} AND (x.retentiond_rn > 1 OR EXISTS (SELECT 1 FROM {table} AS s \
                   WHERE {} AND (s.tableoid, s.ctid) <> (x.rel, x.tid)))",
                select.join(", "),
                values.join(", "),
                not_null.join(" AND "),
                current.join(" AND ")
            )
        })
        .collect();
    Some(format!(
        "SELECT count(DISTINCT (c.rel, c.tid))::int8 FROM ({}) AS c",
        per_key.join(" UNION ALL ")
    ))
}

/// With `keep_expr`: how many rows inside the rule's `where` get each
/// period (clamped to `keep_min`..`keep_max`), shortest first.
pub async fn keep_distribution(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    filter: Option<&str>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let Some(iv) = &rule.keep_interval else {
        return Ok(Vec::new());
    };
    let inside = sql::and_where("true", filter);
    let rows: Vec<(sqlx::postgres::types::PgInterval, i64)> = sqlx::query_as(&format!(
        "SELECT {iv} AS k, count(*)::int8 FROM {} AS t WHERE {inside} GROUP BY 1 ORDER BY 1",
        rule.table.quoted
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, n)| (interval_text(&k), n))
        .collect())
}

/// An interval as a `keep` reads (`1h`, `7d`, `1mo`), or PostgreSQL's
/// parts when it has a fraction of a second.
fn interval_text(iv: &sqlx::postgres::types::PgInterval) -> String {
    let whole = iv.microseconds % 1_000_000 == 0;
    match (
        u32::try_from(iv.months),
        u32::try_from(iv.days),
        u64::try_from(iv.microseconds / 1_000_000),
    ) {
        (Ok(months), Ok(days), Ok(seconds)) if whole => crate::config::Keep {
            months,
            days,
            seconds,
        }
        .to_string(),
        _ => format!(
            "{} months {} days {} microseconds",
            iv.months, iv.days, iv.microseconds
        ),
    }
}

/// Rows each table would lose through `ON DELETE CASCADE` if the rule ran
/// now (`schema.table` → rows; tables that would lose none are left out).
pub async fn count_cascaded(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut out = BTreeMap::new();
    for c in &rule.cascaded {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*)::int8 FROM {} AS t WHERE {}",
            c.quoted, c.removed
        ))
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            out.insert(c.name.to_string(), n);
        }
    }
    Ok(out)
}

/// PostgreSQL's count of rows deleted from each leaf of each table the
/// rule cascades into (`pg_stat_get_xact_tuples_deleted`). Read at the start
/// and the end of a batch's transaction: the difference is what the batch
/// removed. Only the difference means anything: the counter also holds
/// earlier transactions of the session not yet flushed to the statistics.
pub async fn deleted_counters(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
) -> Result<Vec<i64>, sqlx::Error> {
    if rule.cascaded.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<i64> = rule
        .cascaded
        .iter()
        .flat_map(|c| c.leaves.iter().map(|o| i64::from(*o)))
        .collect();
    sqlx::query_scalar(
        "SELECT pg_stat_get_xact_tuples_deleted(o::oid)::int8 \
         FROM unnest($1::int8[]) WITH ORDINALITY u(o, i) ORDER BY i",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
}

/// Rows each cascaded table lost between two [`deleted_counters`]
/// readings (`schema.table` → rows; none left out). `direct` rows the
/// statement itself deleted are subtracted from the rule's own table, which
/// appears only when a cascade cycles back to it.
pub fn cascaded_between(
    rule: &ResolvedRule,
    before: &[i64],
    after: &[i64],
    direct: i64,
) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut deltas = after.iter().zip(before).map(|(a, b)| a - b);
    for c in &rule.cascaded {
        let mut n: i64 = deltas.by_ref().take(c.leaves.len()).sum();
        if c.oid == rule.table.oid {
            n -= direct;
        }
        if n > 0 {
            out.insert(c.name.to_string(), n);
        }
    }
    out
}

/// Opens a batch's transaction in one round trip: REPEATABLE READ, the
/// rule's lock and statement timeouts and, when `relaxed`, asynchronous
/// commit.
///
/// A relaxed batch does not wait for its WAL flush (about a millisecond a
/// batch on a durable disk). That is safe because the batch's rows and its
/// count in `run_progress` commit in one transaction: a server crash loses
/// both or neither, and the next run records what survived. The run makes
/// its last progress write synchronous (outside such a transaction) before
/// its outcome record, and one synchronous commit flushes all WAL before it.
pub async fn begin<'c>(
    conn: &'c mut PgConnection,
    lock_timeout: std::time::Duration,
    statement_timeout: std::time::Duration,
    relaxed: bool,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, sqlx::Error> {
    use sqlx::Connection;
    // Integers only: nothing here comes from text a user wrote.
    let mut sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
        lock_timeout.as_millis(),
        statement_timeout.as_millis()
    );
    if relaxed {
        sql.push_str("; SET LOCAL synchronous_commit = off");
    }
    conn.begin_with(sql).await
}

/// Fewer changed rows than this never call for an ANALYZE: the planner's
/// estimate is then off by less than autovacuum's own base threshold
/// (`autovacuum_analyze_threshold`, 50), and a run of many small rules would
/// otherwise pay one ANALYZE and one commit per rule.
pub const ANALYZE_MIN_ROWS: i64 = 50;

/// ANALYZEs each table (quoted name) whose `changed` rows are more than a
/// tenth of its rows (`total` when known, else the statistics' own
/// estimate) and at least [`ANALYZE_MIN_ROWS`], so the planner does not go
/// on believing a purged table is full. Returns the tables analyzed. Each ANALYZE waits at most
/// `lock_timeout` for its lock (a running VACUUM holds it): statistics are
/// worth a retry later, never a stuck run.
pub async fn analyze_changed(
    conn: &mut PgConnection,
    changed: &[(String, i64, Option<i64>)],
    lock_timeout: std::time::Duration,
) -> Result<Vec<String>, sqlx::Error> {
    use sqlx::Connection;
    let mut analyzed = Vec::new();
    for (table, n, total) in changed {
        if *n < ANALYZE_MIN_ROWS {
            continue;
        }
        // Only an owner may ANALYZE (others get a warning and nothing).
        let (estimate, owner): (f32, bool) = sqlx::query_as(
            "SELECT reltuples, pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        let rows = total.unwrap_or(estimate as i64);
        if !owner || *n <= 0 || n.saturating_mul(10) <= rows {
            continue;
        }
        let mut tx = conn
            .begin_with(format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                lock_timeout.as_millis().max(1)
            ))
            .await?;
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        analyzed.push(table.clone());
    }
    Ok(analyzed)
}

/// The tid of a page's first line pointer, `(block,0)`: window bounds.
fn page_start(block: u32) -> String {
    format!("({block},0)")
}

/// Deletes (or masks) the eligible rows of `leaf` in the page window
/// `[lo, hi)`; returns how many changed.
pub async fn change(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    lo: u32,
    hi: u32,
) -> Result<i64, sqlx::Error> {
    let window = "t.ctid >= $1::text::tid AND t.ctid < $2::text::tid";
    change_in(conn, rule, leaf, window, &page_start(lo), &page_start(hi)).await
}

/// Masks (or deletes) the row at `tid` if it is still eligible: the
/// fallback when one row's new value breaks a constraint, so the others of
/// its window are not held up.
pub async fn change_one(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    tid: &str,
) -> Result<i64, sqlx::Error> {
    let window = "t.ctid >= $1::text::tid AND t.ctid <= $2::text::tid";
    change_in(conn, rule, leaf, window, tid, tid).await
}

/// The batch statement over `window` (bound as `$1`, `$2`; HMAC pads
/// follow from `$3`).
async fn change_in(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    window: &str,
    lo: &str,
    hi: &str,
) -> Result<i64, sqlx::Error> {
    let query = match &rule.mask {
        Some(m) => format!(
            "UPDATE {leaf} AS t SET {} WHERE {window} AND {}",
            m.set_list,
            rule.eligible()
        ),
        None => format!(
            "DELETE FROM {leaf} AS t WHERE {window} AND {}",
            rule.eligible()
        ),
    };
    let mut q = sqlx::query(&query).bind(lo).bind(hi);
    for p in rule.mask.iter().flat_map(|m| m.params.iter()) {
        q = q.bind(p.as_slice());
    }
    Ok(q.execute(conn).await?.rows_affected() as i64)
}

/// Deletes the row `tid` of `leaf` unless `protected` (alias `t`) keeps it:
/// a mask's conflict under `on_conflict = "delete"`. 1 when it went.
pub async fn delete_conflict(
    conn: &mut PgConnection,
    leaf: &str,
    tid: &str,
    protected: &str,
) -> Result<i64, sqlx::Error> {
    let query = format!("DELETE FROM {leaf} AS t WHERE t.ctid = $1::text::tid AND NOT {protected}");
    Ok(sqlx::query(&query)
        .bind(tid)
        .execute(conn)
        .await?
        .rows_affected() as i64)
}

/// Runs `sql` (a SAVEPOINT command) in the current transaction.
pub async fn savepoint(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(|_| ())
}

/// A row a blob-linked delete would take: its tid, and the text of the
/// columns that name its objects (in the order asked for).
pub type LinkedRow = (String, Vec<Option<String>>);

/// The eligible rows of `leaf` in the page window `[lo, hi)` with the text
/// of `columns`, for a delete that removes their objects first.
pub async fn select_linked(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    (lo, hi): (u32, u32),
    columns: &[String],
) -> Result<Vec<LinkedRow>, sqlx::Error> {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| format!("t.{}::text", super::sql::quote_ident(c)))
        .collect();
    let query = format!(
        "SELECT t.ctid::text, ARRAY[{}]::text[] FROM {leaf} AS t \
         WHERE t.ctid >= $1::text::tid AND t.ctid < $2::text::tid AND {} \
         ORDER BY t.ctid",
        cols.join(", "),
        rule.eligible()
    );
    // Heap order: of rows whose masked keys coincide, the first is masked
    // and the others are conflicts, as `count_conflicts` predicts.
    sqlx::query_as::<_, (String, Vec<Option<String>>)>(&query)
        .bind(page_start(lo))
        .bind(page_start(hi))
        .fetch_all(conn)
        .await
}

/// Deletes the rows at `tids` that are still eligible (same snapshot: the
/// rows `select_linked` returned).
pub async fn delete_tids(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    tids: &[String],
) -> Result<i64, sqlx::Error> {
    let query = format!(
        "DELETE FROM {leaf} AS t WHERE t.ctid = ANY($1::text[]::tid[]) AND {}",
        rule.eligible()
    );
    Ok(sqlx::query(&query)
        .bind(tids)
        .execute(conn)
        .await?
        .rows_affected() as i64)
}

/// Tuples per page from the statistics (50 when unknown), to size the first
/// window.
pub async fn tuples_per_page(conn: &mut PgConnection, leaf: &str) -> Result<f64, sqlx::Error> {
    let row = sqlx::query("SELECT reltuples::float8 AS t, relpages::float8 AS p FROM pg_class WHERE oid = $1::regclass")
        .bind(leaf)
        .fetch_one(conn)
        .await?;
    let (t, p): (f64, f64) = (row.try_get("t")?, row.try_get("p")?);
    Ok(if t > 0.0 && p > 0.0 {
        (t / p).max(1.0)
    } else {
        50.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_start_is_a_tid_literal() {
        assert_eq!(page_start(0), "(0,0)");
        assert_eq!(page_start(4_294_967_295), "(4294967295,0)");
    }
}
