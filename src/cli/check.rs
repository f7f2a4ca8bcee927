//! `retentiond check`: validate the file; with `--online`, also ask the
//! databases whether every table, column, type, `where` and guard is real.

use super::{exit, load};
use crate::config::validate::template_columns;
use crate::config::{BlobLocator, Config, ConfigError, Problem, Target};
use crate::store::postgres::schema::{self, Field, SchemaError};
use crate::store::postgres::{batch, resolve};
use crate::store::Stores;
use sqlx::{Connection, Executor, PgConnection};
use std::io::IsTerminal;
use std::path::Path;

pub async fn run(path: &Path, online: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let summary = format!(
        "{}: {} rule(s), {} guard(s), {} hold(s), {} store(s)",
        path.display(),
        config.rules.len(),
        config.guards.len(),
        config.holds.len(),
        config.stores.len()
    );
    print_keeps(&config);
    if !online {
        super::output::say(&format!("ok  {summary}"));
        return exit::OK;
    }
    let stores = match Stores::open(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut unreachable = false;
    for name in config.stores.keys() {
        let Some(pg) = stores.postgres(name) else {
            if let Some(blob) = stores.blob(name) {
                check_blob_store(&config, name, blob, &mut problems, &mut unreachable).await;
            }
            continue;
        };
        let mut conn = match pg.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: store `{name}`: cannot connect: {e}");
                unreachable = true;
                continue;
            }
        };
        check_store(&config, name, &mut conn, &mut problems, &mut notes).await;
        if config.audit.as_ref().is_some_and(|a| &a.store == name) {
            notes.push(audit_rights_note(name, &pg.pool).await);
        }
    }
    stores.close().await;
    for note in &notes {
        super::output::say(&format!("note: {note}"));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p: &Problem| p.span.offset());
        let err = ConfigError {
            path: path.display().to_string(),
            text: config.source.text.clone(),
            problems,
        };
        eprint!("{}", err.render(std::io::stderr().is_terminal()));
        eprintln!(
            "{} problem(s) found online in {}",
            err.problems.len(),
            err.path
        );
        return exit::USAGE;
    }
    if unreachable {
        return exit::FAILED;
    }
    super::output::say(&format!("ok  {summary} (checked online)"));
    exit::OK
}

/// Each rule's promise in words, and a warning where `m` (minutes) was
/// probably meant as months: `max_fraction` is then all that stands between
/// the rule and most of the table.
fn print_keeps(config: &Config) {
    for rule in &config.rules {
        super::output::say(&format!(
            "  {}: {} {} after {}",
            rule.name,
            rule.action_name(),
            rule.target_name(),
            rule.keep_in_words()
        ));
        if rule.action_name() == "delete"
            && rule.keep_expr.is_none()
            && rule.keep.is_minutes_under_an_hour()
        {
            super::output::say(&format!(
                "warning: rule `{}`: keep = \"{}\" is {}; a month is \"1mo\"",
                rule.name,
                rule.keep,
                rule.keep.in_words()
            ));
        }
    }
}

/// What the configured role could do to the audit log beyond appending.
async fn audit_rights_note(store: &str, pool: &sqlx::PgPool) -> String {
    match crate::audit::log::audit_rights(pool).await {
        Ok(None) => format!("audit store `{store}`: schema `retentiond` does not exist yet; run `retentiond migrate` as an admin role"),
        Ok(Some(r)) if !r.any() => format!(
            "audit store `{store}`: this role can append to the audit log but cannot update, delete, truncate it or disable its triggers"
        ),
        Ok(Some(r)) => {
            let mut can = Vec::new();
            for (yes, what) in [
                (r.update, "update"),
                (r.delete, "delete"),
                (r.truncate, "truncate"),
                (r.disable_triggers, "disable the append-only triggers (owner or superuser)"),
            ] {
                if yes {
                    can.push(what);
                }
            }
            format!(
                "audit store `{store}`: WARNING this role could {} the audit log; run with a role that has only docs/runtime-grants.sql (signatures still reveal any rewrite)",
                can.join(", ")
            )
        }
        Err(e) => format!("audit store `{store}`: could not read this role's rights on the audit log: {e}"),
    }
}

/// The bucket, container or directory exists and is the expected account's:
/// the identity check every `plan` and `run` makes first.
async fn check_blob_store(
    config: &Config,
    name: &str,
    store: &dyn crate::store::blob::BlobStore,
    problems: &mut Vec<Problem>,
    unreachable: &mut bool,
) {
    use crate::store::blob::StoreError;
    let span = config.store_spans.get(name).cloned().unwrap_or(0..0);
    match store.check_identity().await {
        Ok(()) => {}
        Err(e @ StoreError::Missing(_)) => problems.push(Problem::new(
            span.clone(),
            format!("{store}: {e}"),
            "create it, or fix the store's bucket, container or root (retentiond never creates one)",
        )),
        Err(e @ StoreError::WrongTarget(_)) => problems.push(Problem::new(
            span,
            format!("{store}: {e}"),
            "point the store at the expected account's bucket or container, or fix `expected_account`",
        )),
        Err(e) => {
            eprintln!("error: {store}: {e}");
            *unreachable = true;
        }
    }
}

async fn check_store(
    config: &Config,
    store: &str,
    conn: &mut PgConnection,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) {
    let now = chrono::Utc::now();
    for g in config.guards_in(store) {
        let found = schema::table(conn, &g.table).await;
        match found {
            Ok(t) => {
                let checked = async {
                    let mut tx = conn.begin().await?;
                    let r =
                        crate::store::postgres::age::resolve(&mut tx, &t, &g.table, &g.age).await;
                    tx.rollback().await?;
                    Ok::<_, sqlx::Error>(r)
                };
                let problem = match checked.await {
                    Ok(Ok(_)) => None,
                    Ok(Err(SchemaError::Target(e))) => Some(e.message),
                    Ok(Err(SchemaError::Db(e))) | Err(e) => Some(e.to_string()),
                };
                if let Some(message) = problem {
                    problems.push(Problem::new(
                        g.span.clone(),
                        format!("guard: {message}"),
                        "point `age` at a timestamptz, timestamp or date column (or `age_expr` at an expression yielding one; an integer age needs `age_unit`)",
                    ));
                }
            }
            Err(e) => problems.push(Problem::new(
                g.span.clone(),
                format!("guard: {e}"),
                "fix `table` to name an existing table",
            )),
        }
    }
    for h in config.holds.iter().filter(|h| h.store == store) {
        if let crate::config::HoldTarget::Rows { table, filter } = &h.target {
            let sql = format!(
                "EXPLAIN SELECT 1 FROM {} AS t WHERE ({filter}) IS NOT FALSE",
                crate::store::postgres::sql::quote_table(table)
            );
            if let Err(e) = explain(conn, &sql).await {
                problems.push(Problem::new(
                    h.span.clone(),
                    format!("hold `{}`: {e}", h.name),
                    "fix `table` or `where` so the hold compiles",
                ));
            }
        }
    }
    for rule in config.rules.iter().filter(|r| r.store == store) {
        let Target::Table(t) = &rule.target else {
            continue;
        };
        let cutoff = rule.keep.cutoff(now).unwrap_or(now);
        let resolved = {
            let result = async {
                let mut tx = conn.begin().await?;
                tx.execute("SET TRANSACTION READ ONLY").await?;
                let r = resolve::resolve(
                    &mut tx,
                    config,
                    store,
                    t,
                    rule.keep_expr.as_ref(),
                    cutoff,
                    now,
                )
                .await;
                tx.rollback().await?;
                Ok::<_, sqlx::Error>(r)
            };
            match result.await {
                Ok(r) => r,
                Err(e) => Err(SchemaError::Db(e)),
            }
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(SchemaError::Target(e)) => {
                let (span, help) = match &e.field {
                    Field::Age => (
                        rule.spans.age.clone(),
                        "name a timestamptz, timestamp or date column, or an integer one with `age_unit`; an `age_expr` must yield one of these",
                    ),
                    Field::KeepExpr => (
                        rule.spans.keep_expr.clone().unwrap_or(rule.spans.rule.clone()),
                        "`keep_expr` must yield an interval per row (NULL reads as keep_max)",
                    ),
                    Field::AgeUnit => (
                        rule.spans.age_unit.clone().unwrap_or(rule.spans.age.clone()),
                        "`age_unit` (\"s\", \"ms\", \"us\") goes with an integer age, and only there",
                    ),
                    Field::Column(c) => (
                        rule.spans
                            .columns
                            .get(c)
                            .cloned()
                            .unwrap_or(rule.spans.rule.clone()),
                        "name an existing column of a type the strategy can mask",
                    ),
                    Field::Table => (
                        if rule.spans.table.is_empty() {
                            rule.spans.rule.clone()
                        } else {
                            rule.spans.table.clone()
                        },
                        "check the table name, the role's privileges, and the guards on this store",
                    ),
                };
                problems.push(Problem::new(
                    span,
                    format!("rule `{}`: {}", rule.name, e.message),
                    help,
                ));
                continue;
            }
            Err(SchemaError::Db(e)) => {
                problems.push(Problem::new(
                    rule.spans.rule.clone(),
                    format!("rule `{}`: {e}", rule.name),
                    "the catalog could not be read",
                ));
                continue;
            }
        };
        if let (Some(filter), Some(span)) = (&t.filter, &rule.spans.filter) {
            let sql = format!(
                "EXPLAIN SELECT 1 FROM {} AS t WHERE ({filter}) IS TRUE",
                resolved.table.quoted
            );
            if let Err(e) = explain(conn, &sql).await {
                problems.push(Problem::new(
                    span.clone(),
                    format!("rule `{}`: `where` does not compile: {e}", rule.name),
                    "write an SQL boolean expression over the rule's table",
                ));
                continue;
            }
        }
        if let Err(e) = explain(conn, &format!("EXPLAIN {}", batch::count_sql(&resolved))).await {
            problems.push(Problem::new(
                rule.spans.rule.clone(),
                format!("rule `{}`: its statement does not compile: {e}", rule.name),
                "check the holds and guards on this table",
            ));
        }
        if let Some(link) = &t.blobs {
            let columns = match &link.locator {
                BlobLocator::KeyColumn(c) => vec![c.clone()],
                BlobLocator::PrefixTemplate(tpl) => template_columns(tpl).unwrap_or_default(),
            };
            for c in columns
                .iter()
                .filter(|c| !resolved.table.columns.contains_key(*c))
            {
                problems.push(Problem::new(
                    rule.spans.rule.clone(),
                    format!(
                        "rule `{}`: `blobs` names column {}.{c}, which does not exist",
                        rule.name, t.table
                    ),
                    "fix `key_column` or the {column} in `prefix_template`",
                ));
            }
        }
        for n in &resolved.notes {
            notes.push(format!("rule `{}`: {n}", rule.name));
        }
        if let (Some(column), true) = (t.age.column(), resolved.age.nullable) {
            let others: Vec<&str> = resolved
                .table
                .columns
                .iter()
                .filter(|(n, c)| n.as_str() != column && c.age_type().is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            let fallback = others.first().copied().unwrap_or("created_at");
            notes.push(format!(
                "rule `{}`: {}.{column} is nullable, and a row whose age is NULL never expires (plan and run count them as `null_age`). \
                 That is right when NULL means \"not yet\" (an account still open); only if such rows should age by another column, \
                 use age_expr = \"coalesce(t.{column}, t.{fallback})\"",
                rule.name, t.table
            ));
        }
    }
}

/// Plans (never runs) a statement in a read-only transaction.
async fn explain(conn: &mut PgConnection, sql: &str) -> Result<(), String> {
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    tx.execute("SET TRANSACTION READ ONLY")
        .await
        .map_err(|e| e.to_string())?;
    let result = tx
        .execute(sql)
        .await
        .map(|_| ())
        .map_err(|e| match e.as_database_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        });
    let _ = tx.rollback().await;
    result
}
