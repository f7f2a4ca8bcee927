//! What the database says about a rule's tables: kind, columns and their
//! types, partitions, privileges, and the `ON DELETE CASCADE` foreign keys a
//! delete would follow. Read from the catalogs; nothing is assumed.

use super::sql::quote_table;
use crate::config::TableName;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;

/// A resolved table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Catalog oid.
    pub oid: u32,
    /// `schema.table`, both parts quoted.
    pub quoted: String,
    /// True for a partitioned parent.
    pub partitioned: bool,
    /// Column name → column facts.
    pub columns: BTreeMap<String, ColumnInfo>,
}

/// A column's type and nullability.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// `format_type` of the column, e.g. `timestamp without time zone`.
    pub sql_type: String,
    /// The base type's name, e.g. `timestamptz`, `inet`, `text`.
    pub type_name: String,
    /// NOT NULL.
    pub not_null: bool,
}

/// The kinds of age column a rule can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeType {
    /// `timestamp with time zone`.
    Timestamptz,
    /// `timestamp without time zone`, read as UTC.
    Timestamp,
    /// `date`, read as midnight UTC.
    Date,
    /// An integer count of `unit`s since 1970-01-01 UTC (`age_unit`).
    Epoch(crate::config::EpochUnit),
}

impl AgeType {
    /// The time a value of type `type_name` (`pg_type.typname`) is, if it
    /// is one.
    pub fn of_time(type_name: &str) -> Option<AgeType> {
        match type_name {
            "timestamptz" => Some(AgeType::Timestamptz),
            "timestamp" => Some(AgeType::Timestamp),
            "date" => Some(AgeType::Date),
            _ => None,
        }
    }

    /// True for integer types (an age with `age_unit`).
    pub fn is_integer(type_name: &str) -> bool {
        matches!(type_name, "int2" | "int4" | "int8")
    }
}

impl ColumnInfo {
    /// The column as an age column, if its type is a time.
    pub fn age_type(&self) -> Option<AgeType> {
        AgeType::of_time(&self.type_name)
    }

    /// True for integer columns (an age with `age_unit`).
    pub fn is_integer(&self) -> bool {
        AgeType::is_integer(&self.type_name)
    }

    /// True for `text`/`varchar` columns.
    pub fn is_text(&self) -> bool {
        matches!(self.type_name.as_str(), "text" | "varchar")
    }
}

/// A problem that makes a rule's target doubtful: the run is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    /// What is wrong.
    pub message: String,
    /// Which of the rule's values it concerns (for `check --online`).
    pub field: Field,
}

/// The rule value a [`TargetError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `table`, or the rule as a whole.
    Table,
    /// `age` or `age_expr`.
    Age,
    /// `age_unit`.
    AgeUnit,
    /// `keep_expr`.
    KeepExpr,
    /// A masked column.
    Column(String),
}

impl TargetError {
    /// An error about the rule's table (or the rule as a whole).
    pub fn new(message: impl Into<String>) -> TargetError {
        TargetError {
            message: message.into(),
            field: Field::Table,
        }
    }

    /// The same error, about `field`.
    pub fn about(mut self, field: Field) -> TargetError {
        self.field = field;
        self
    }
}

/// `; did you mean \`a\` or \`b\`?` for the names closest to `wanted`, or
/// nothing when none is close.
pub fn did_you_mean<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> String {
    let wanted_lc = wanted.to_lowercase();
    let mut scored: Vec<(f64, &str)> = names
        .map(|n| (strsim::jaro_winkler(&wanted_lc, &n.to_lowercase()), n))
        .filter(|(score, _)| *score >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let best: Vec<String> = scored
        .iter()
        .take(3)
        .map(|(_, n)| format!("`{n}`"))
        .collect();
    match best.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        more => format!("; did you mean {}?", more.join(" or ")),
    }
}

/// Resolves `table` or explains why it is not a table retentiond may touch.
pub async fn table(conn: &mut PgConnection, table: &TableName) -> Result<TableInfo, SchemaError> {
    let row = sqlx::query(
        "SELECT c.oid::int8 AS oid, c.relkind::text AS relkind, \
                format('%I.%I', n.nspname, c.relname) AS quoted \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(quote_table(table))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CASE WHEN n.nspname = current_schema() THEN c.relname::text \
                         ELSE n.nspname || '.' || c.relname END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'retentiond') \
               AND n.nspname NOT LIKE 'pg_toast%'",
        )
        .fetch_all(&mut *conn)
        .await?;
        return Err(TargetError::new(format!(
            "table {table} does not exist (or the role cannot see it){}",
            did_you_mean(&table.to_string(), names.iter().map(String::as_str))
        ))
        .into());
    };
    let relkind: String = row.try_get("relkind")?;
    let partitioned = match relkind.as_str() {
        "r" => false,
        "p" => true,
        "v" => return Err(TargetError::new(format!("{table} is a view, not a table")).into()),
        "m" => {
            return Err(
                TargetError::new(format!("{table} is a materialized view, not a table")).into(),
            )
        }
        "f" => {
            return Err(TargetError::new(format!(
                "{table} is a foreign table; run retentiond against its own database"
            ))
            .into())
        }
        other => {
            return Err(
                TargetError::new(format!("{table} is not a table (relkind {other})")).into(),
            )
        }
    };
    let oid = u32::try_from(row.try_get::<i64, _>("oid")?).unwrap_or_default();
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, \
                t.typname::text AS type_name, a.attnotnull AS not_null \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(i64::from(oid))
    .fetch_all(&mut *conn)
    .await?;
    let mut columns = BTreeMap::new();
    for r in rows {
        columns.insert(
            r.try_get::<String, _>("name")?,
            ColumnInfo {
                sql_type: r.try_get("sql_type")?,
                type_name: r.try_get("type_name")?,
                not_null: r.try_get("not_null")?,
            },
        );
    }
    Ok(TableInfo {
        oid,
        quoted: row.try_get("quoted")?,
        partitioned,
        columns,
    })
}

/// The leaf partitions of a partitioned table (quoted), or the table itself.
/// Batches walk each leaf's heap: ctids are only unique within one relation.
pub async fn leaves(conn: &mut PgConnection, info: &TableInfo) -> Result<Vec<String>, SchemaError> {
    if !info.partitioned {
        return Ok(vec![info.quoted.clone()]);
    }
    let rows = sqlx::query(
        "SELECT format('%I.%I', n.nspname, c.relname) AS quoted \
         FROM pg_partition_tree($1::int8::regclass) p \
         JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE p.isleaf ORDER BY 1",
    )
    .bind(i64::from(info.oid))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| r.try_get("quoted").map_err(SchemaError::from))
        .collect()
}

/// The oids of the leaf relations of a table (its partitions, or itself):
/// where PostgreSQL counts the rows deleted from it.
pub async fn leaf_oids(conn: &mut PgConnection, info: &TableInfo) -> Result<Vec<u32>, SchemaError> {
    if !info.partitioned {
        return Ok(vec![info.oid]);
    }
    let oids: Vec<i64> = sqlx::query_scalar(
        "SELECT p.relid::oid::int8 FROM pg_partition_tree($1::int8::regclass) p WHERE p.isleaf ORDER BY 1",
    )
    .bind(i64::from(info.oid))
    .fetch_all(&mut *conn)
    .await?;
    Ok(oids
        .into_iter()
        .filter_map(|o| u32::try_from(o).ok())
        .collect())
}

/// Heap size in pages (at least 1), for walking the table in ctid windows.
pub async fn relpages(conn: &mut PgConnection, quoted: &str) -> Result<u32, SchemaError> {
    let pages: i64 = sqlx::query_scalar(
        "SELECT (pg_relation_size($1::regclass) / current_setting('block_size')::int8)::int8",
    )
    .bind(quoted)
    .fetch_one(&mut *conn)
    .await?;
    Ok(u32::try_from(pages.max(1)).unwrap_or(u32::MAX))
}

/// Whether the current role holds `privilege` (`DELETE`, `UPDATE`) on a table.
pub async fn has_privilege(
    conn: &mut PgConnection,
    info: &TableInfo,
    privilege: &str,
) -> Result<bool, SchemaError> {
    Ok(
        sqlx::query_scalar("SELECT has_table_privilege($1::int8::oid, $2)")
            .bind(i64::from(info.oid))
            .bind(privilege)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// A foreign key whose `ON DELETE CASCADE` deletes `child` rows with a parent.
#[derive(Debug, Clone)]
pub struct CascadeEdge {
    /// Constraint name.
    pub constraint: String,
    /// Referencing table.
    pub child: TableInfo,
    /// Referencing table as named in guards (`schema.table`).
    pub child_name: TableName,
    /// (child column, parent column) pairs.
    pub columns: Vec<(String, String)>,
}

/// A unique index (or constraint) of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The index's name.
    pub name: String,
    /// Its columns, in order (empty when it has an expression).
    pub columns: Vec<String>,
    /// True for a partial index or one over expressions: which rows
    /// collide is then not a matter of column values alone.
    pub partial: bool,
}

/// The unique indexes of a table (those declared on a partitioned table,
/// not their per-partition copies).
pub async fn unique_keys(
    conn: &mut PgConnection,
    info: &TableInfo,
) -> Result<Vec<UniqueKey>, SchemaError> {
    let rows: Vec<(String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT ic.relname::text, \
                ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(num, ord) \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num ORDER BY k.ord), \
                i.indpred IS NOT NULL OR i.indexprs IS NOT NULL \
         FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
         WHERE i.indrelid = $1::int8::oid AND i.indisunique ORDER BY 1",
    )
    .bind(i64::from(info.oid))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, columns, partial)| UniqueKey {
            name,
            columns,
            partial,
        })
        .collect())
}

/// Foreign keys whose `ON DELETE` changes other tables' rows without
/// removing them (`SET NULL`, `SET DEFAULT`), as `child (constraint)`.
pub async fn delete_setters(
    conn: &mut PgConnection,
    parent: &TableInfo,
) -> Result<Vec<String>, SchemaError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s.%s (%s)', n.nspname, c.relname, con.conname) \
         FROM pg_constraint con \
         JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE con.contype = 'f' AND con.confdeltype IN ('n', 'd') AND con.conparentid = 0 \
           AND con.confrelid = $1::int8::oid ORDER BY 1",
    )
    .bind(i64::from(parent.oid))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// Foreign keys that cascade deletes from `parent` into other tables.
pub async fn cascades_from(
    conn: &mut PgConnection,
    parent: &TableInfo,
) -> Result<Vec<CascadeEdge>, SchemaError> {
    // conparentid = 0 keeps the constraint declared on a partitioned parent and
    // drops its per-partition clones.
    let rows = sqlx::query(
        "SELECT con.conname::text AS name, n.nspname::text AS schema, c.relname::text AS rel, \
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, i) \
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.i) AS child_cols, \
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, i) \
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.i) AS parent_cols \
         FROM pg_constraint con \
         JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE con.contype = 'f' AND con.confdeltype = 'c' AND con.conparentid = 0 \
           AND con.confrelid = $1::int8::oid \
         ORDER BY 1",
    )
    .bind(i64::from(parent.oid))
    .fetch_all(&mut *conn)
    .await?;
    let mut edges = Vec::new();
    for r in rows {
        let child_name = TableName {
            schema: Some(r.try_get("schema")?),
            name: r.try_get("rel")?,
        };
        let child = table(conn, &child_name).await?;
        let child_cols: Vec<String> = r.try_get("child_cols")?;
        let parent_cols: Vec<String> = r.try_get("parent_cols")?;
        edges.push(CascadeEdge {
            constraint: r.try_get("name")?,
            child,
            child_name,
            columns: child_cols.into_iter().zip(parent_cols).collect(),
        });
    }
    Ok(edges)
}

/// The schema search path's first schema, to match unqualified guard tables.
pub async fn resolve_name(
    conn: &mut PgConnection,
    name: &TableName,
) -> Result<Option<u32>, SchemaError> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(quote_table(name))
        .fetch_one(&mut *conn)
        .await?;
    Ok(oid.and_then(|o| u32::try_from(o).ok()))
}

/// Introspection failed: a doubtful target, or the database itself.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The target is missing or not a table.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The catalog query failed.
    #[error("reading the catalog: {0}")]
    Db(#[from] sqlx::Error),
}
