//! The statements a rule run executes: one counting scan for the plan, and
//! one statement per batch, in its own short transaction.
//!
//! A batch walks the heap in ctid order inside a window of pages
//! (`ctid >= lo AND ctid < hi`, a TID range scan), which the measurements in
//! `shared/notes` show runs at 0.8–0.95× the speed of one big `DELETE` while
//! keeping each transaction to milliseconds. It selects at most `batch_size`
//! eligible rows and deletes or masks exactly those tuples.
//!
//! Batches run in REPEATABLE READ. Then a row changed by someone else since
//! our snapshot is a serialization error (the batch is retried), never a
//! silent change; and PostgreSQL's `ON DELETE CASCADE` triggers check with a
//! crosscheck snapshot, so a child row committed after our guard check was
//! evaluated fails the batch instead of being deleted unseen.

use super::resolve::ResolvedRule;
use sqlx::{PgConnection, Row};
use std::fmt;

/// What a counting scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

/// Counts in one scan. The protection and parse checks are wrapped in
/// `CASE WHEN due` so their subqueries run for due rows only.
pub async fn count(conn: &mut PgConnection, rule: &ResolvedRule) -> Result<Counts, sqlx::Error> {
    let row = sqlx::query(&count_sql(rule)).fetch_one(conn).await?;
    Ok(Counts {
        total: row.try_get("total")?,
        matched: row.try_get("matched")?,
        protected: row.try_get("protected")?,
        unparsable: row.try_get("unparsable")?,
        oldest: row.try_get("oldest")?,
    })
}

/// The counting query (also `EXPLAIN`ed by `check --online`).
pub fn count_sql(rule: &ResolvedRule) -> String {
    let (masked, unparsable) = match &rule.mask {
        Some(m) => (m.masked.as_str(), m.unparsable.as_str()),
        None => ("false", "false"),
    };
    // Names inside the LATERAL are prefixed: a hold's bare column names must
    // resolve to the table, not to our helper columns.
    format!(
        "SELECT count(*)::int8 AS total, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND NOT x.retentiond_p)::int8 AS matched, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND x.retentiond_p)::int8 AS protected, \
                count(*) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_p AND x.retentiond_u)::int8 AS unparsable, \
                (min(t.{age}) FILTER (WHERE x.retentiond_d AND NOT x.retentiond_m AND NOT x.retentiond_p))::timestamptz AS oldest \
         FROM {table} AS t, LATERAL ( \
             SELECT y.retentiond_d, \
                    CASE WHEN y.retentiond_d THEN {masked} ELSE false END AS retentiond_m, \
                    CASE WHEN y.retentiond_d THEN {protected} ELSE false END AS retentiond_p, \
                    CASE WHEN y.retentiond_d THEN {unparsable} ELSE false END AS retentiond_u \
             FROM (SELECT {due} AS retentiond_d) AS y) AS x",
        protected = rule.protected,
        due = rule.due,
        age = rule.age_column,
        table = rule.table.quoted,
    )
}

/// A tuple id `(block, offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tid {
    /// Heap page.
    pub block: u32,
    /// Line pointer within the page.
    pub offset: u16,
}

impl Tid {
    /// The first tuple of a page.
    pub fn page(block: u32) -> Tid {
        Tid { block, offset: 0 }
    }

    /// The tid right after this one (offsets past a page's last are valid
    /// bounds: they match nothing).
    pub fn next(self) -> Tid {
        match self.offset.checked_add(1) {
            Some(offset) => Tid {
                block: self.block,
                offset,
            },
            None => Tid::page(self.block.saturating_add(1)),
        }
    }

    /// Parses PostgreSQL's `(block,offset)` text form.
    pub fn parse(text: &str) -> Option<Tid> {
        let inner = text.strip_prefix('(')?.strip_suffix(')')?;
        let (b, o) = inner.split_once(',')?;
        Some(Tid {
            block: b.trim().parse().ok()?,
            offset: o.trim().parse().ok()?,
        })
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.block, self.offset)
    }
}

/// What one batch statement did.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchResult {
    /// Eligible rows the batch selected (at most the batch size).
    pub selected: i64,
    /// Rows deleted or masked.
    pub changed: i64,
    /// The largest tid selected (the cursor advances past it).
    pub last: Option<Tid>,
}

/// Deletes (or masks) up to `limit` eligible rows of `leaf` in `[lo, hi)`.
pub async fn change(
    conn: &mut PgConnection,
    rule: &ResolvedRule,
    leaf: &str,
    lo: Tid,
    hi: Tid,
    limit: u32,
) -> Result<BatchResult, sqlx::Error> {
    // $1..$3 are the window and limit; HMAC pads follow from $4.
    let change = match &rule.mask {
        Some(m) => format!(
            "UPDATE {leaf} AS t SET {} WHERE t.ctid = ANY(ARRAY(SELECT tid FROM batch)) RETURNING 1",
            m.set_list
        ),
        None => format!("DELETE FROM {leaf} AS t WHERE t.ctid = ANY(ARRAY(SELECT tid FROM batch)) RETURNING 1"),
    };
    let query = format!(
        "WITH batch AS MATERIALIZED ( \
             SELECT t.ctid AS tid FROM {leaf} AS t \
             WHERE t.ctid >= $1::text::tid AND t.ctid < $2::text::tid AND {eligible} \
             LIMIT $3), \
         changed AS ({change}) \
         SELECT (SELECT count(*) FROM batch)::int8 AS selected, \
                (SELECT count(*) FROM changed)::int8 AS changed, \
                (SELECT tid::text FROM batch ORDER BY tid DESC LIMIT 1) AS last",
        eligible = rule.eligible(),
    );
    let mut q = sqlx::query(&query)
        .bind(lo.to_string())
        .bind(hi.to_string())
        .bind(i64::from(limit));
    for p in rule.mask.iter().flat_map(|m| m.params.iter()) {
        q = q.bind(p.as_slice());
    }
    let row = q.fetch_one(conn).await?;
    let last: Option<String> = row.try_get("last")?;
    Ok(BatchResult {
        selected: row.try_get("selected")?,
        changed: row.try_get("changed")?,
        last: last.as_deref().and_then(Tid::parse),
    })
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
    fn tid_parses_and_orders() {
        assert_eq!(
            Tid::parse("(12,5)"),
            Some(Tid {
                block: 12,
                offset: 5
            })
        );
        assert_eq!(Tid::parse("12,5"), None);
        assert!(Tid::parse("(1,2)") < Tid::parse("(2,1)"));
        assert_eq!(
            Tid {
                block: 3,
                offset: 7
            }
            .next()
            .to_string(),
            "(3,8)"
        );
        assert_eq!(
            Tid {
                block: 3,
                offset: u16::MAX
            }
            .next(),
            Tid::page(4)
        );
    }
}
