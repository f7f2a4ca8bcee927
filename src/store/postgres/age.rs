//! A row's age as SQL, for rules and guards alike: a column or an
//! `age_expr`, holding a time or an integer count of `age_unit`s since the
//! Unix epoch.
//!
//! The cutoff is computed once per run (`Keep::cutoff`) and written as one
//! literal of the age's own type ([`sql::cutoff_literal`]): an integer
//! column is compared with an integer, never converted row by row, so its
//! index and the batches' heap order still serve.
//!
//! An `age_expr` is written against the row as alias `t`. Wherever the age
//! is used on another alias (a guard on a table a cascade reaches), it is
//! evaluated in its own scope, like a hold's `where`:
//! `(SELECT (<expr>) FROM (SELECT <row>.*) AS t)`.

use super::schema::{self, AgeType, Field, SchemaError, TableInfo, TargetError};
use super::sql;
use crate::config::{Age, AgeSource, TableName};
use sqlx::{Executor, PgConnection};

/// An [`Age`] checked against its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAge {
    /// What the age is.
    pub ty: AgeType,
    source: AgeSource,
    /// True when the age can be NULL (a nullable column, or any
    /// expression): such rows never expire, and plans count them.
    pub nullable: bool,
}

impl ResolvedAge {
    /// A column already known to be `ty`.
    pub fn column(name: &str, ty: AgeType, nullable: bool) -> ResolvedAge {
        ResolvedAge {
            ty,
            source: AgeSource::Column(name.to_string()),
            nullable,
        }
    }

    /// The age of the row `alias`.
    pub fn sql(&self, alias: &str) -> String {
        match &self.source {
            AgeSource::Column(c) => format!("{alias}.{}", sql::quote_ident(c)),
            AgeSource::Expr(e) if alias == "t" => sql::user_expr(e),
            AgeSource::Expr(e) => format!(
                "(SELECT {} FROM (SELECT {alias}.*) AS t)",
                sql::user_expr(e)
            ),
        }
    }
}

/// Checks `age` on `table`: the column exists and is a time (or an integer
/// with `age_unit`), or the expression compiles on the table and yields
/// one. Anything else is refused, pointing at `age`/`age_expr` or
/// `age_unit`.
pub async fn resolve(
    conn: &mut PgConnection,
    table: &TableInfo,
    name: &TableName,
    age: &Age,
) -> Result<ResolvedAge, SchemaError> {
    match &age.source {
        AgeSource::Column(column) => {
            let col = table.columns.get(column).ok_or_else(|| {
                TargetError::new(format!(
                    "column {name}.{column} does not exist{}{}",
                    schema::did_you_mean(column, table.columns.keys().map(String::as_str)),
                    time_columns(table, name)
                ))
                .about(Field::Age)
            })?;
            let what = format!("column {name}.{column} is {}", col.sql_type);
            let ty = checked(col.age_type(), col.is_integer(), age, &what, || {
                time_columns(table, name)
            })?;
            Ok(ResolvedAge {
                ty,
                source: age.source.clone(),
                nullable: !col.not_null,
            })
        }
        AgeSource::Expr(expr) => {
            let (type_name, sql_type) = expr_type(conn, table, name, "age_expr", expr).await?;
            let what = format!("`age_expr` yields {sql_type}");
            let ty = checked(
                AgeType::of_time(&type_name),
                AgeType::is_integer(&type_name),
                age,
                &what,
                String::new,
            )?;
            Ok(ResolvedAge {
                ty,
                source: age.source.clone(),
                nullable: true,
            })
        }
    }
}

/// The age's type from what the column or expression holds and the unit
/// the config gives.
fn checked(
    time: Option<AgeType>,
    integer: bool,
    age: &Age,
    what: &str,
    alternatives: impl Fn() -> String,
) -> Result<AgeType, TargetError> {
    match (time, integer, age.unit) {
        (Some(ty), _, None) => Ok(ty),
        (Some(_), _, Some(unit)) => Err(TargetError::new(format!(
            "{what}, a time: `age_unit = \"{}\"` applies to integer ages only",
            unit.as_str()
        ))
        .about(Field::AgeUnit)),
        (None, true, Some(unit)) => Ok(AgeType::Epoch(unit)),
        (None, true, None) => Err(TargetError::new(format!(
            "{what}: an integer age needs its unit, `age_unit = \"s\"`, \"ms\" or \"us\" (since 1970-01-01 UTC)"
        ))
        .about(Field::AgeUnit)),
        (None, false, _) => Err(TargetError::new(format!(
            "{what}, not a timestamp: an age must be timestamptz, timestamp or date, or an integer with `age_unit`{}",
            alternatives()
        ))
        .about(Field::Age)),
    }
}

/// `; its timestamp columns: ...` (what an age column could be instead).
fn time_columns(table: &TableInfo, name: &TableName) -> String {
    let cols: Vec<String> = table
        .columns
        .iter()
        .filter(|(_, c)| c.age_type().is_some())
        .map(|(n, _)| format!("`{n}`"))
        .collect();
    if cols.is_empty() {
        format!("; {name} has no timestamp or date column")
    } else {
        format!("; its timestamp columns: {}", cols.join(", "))
    }
}

/// The type an expression (`key`: `age_expr`, `keep_expr`) yields on
/// `table`, as (`typname`, `format_type`).
/// A scalar subquery that returns no row is NULL of the expression's type,
/// so nothing is read. Inside a savepoint: the caller's transaction
/// survives an expression that does not compile.
pub async fn expr_type(
    conn: &mut PgConnection,
    table: &TableInfo,
    name: &TableName,
    key: &str,
    expr: &str,
) -> Result<(String, String), SchemaError> {
    let probe = format!(
        "SELECT ty.typname::text, format_type(ty.oid, NULL) \
         FROM pg_type ty \
         WHERE ty.oid = pg_typeof((SELECT {} FROM {} AS t LIMIT 0))",
        sql::user_expr(expr),
        table.quoted
    );
    conn.execute("SAVEPOINT retentiond_age").await?;
    match sqlx::query_as::<_, (String, String)>(&probe)
        .fetch_one(&mut *conn)
        .await
    {
        Ok(found) => {
            conn.execute("RELEASE SAVEPOINT retentiond_age").await?;
            Ok(found)
        }
        Err(sqlx::Error::Database(e)) => {
            conn.execute("ROLLBACK TO SAVEPOINT retentiond_age").await?;
            Err(TargetError::new(format!(
                "`{key}` does not compile on {name}: {}",
                e.message()
            ))
            .about(Field::Age)
            .into())
        }
        Err(e) => Err(e.into()),
    }
}
