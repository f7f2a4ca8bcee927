//! Turns a table rule into the SQL that selects its rows, against what the
//! catalog says now: the age column's type, guards and holds on the table,
//! and guarded or held rows that an `ON DELETE CASCADE` would take along.
//!
//! Anything doubtful (missing table or column, wrong type, no privilege, a
//! guard whose column does not exist) is a [`TargetError`]: the run is
//! refused rather than guessed.

use super::age::{self, ResolvedAge};
use super::protect::{self, CascadeTree, Cascaded};
use super::schema::{self, Field, SchemaError, TableInfo, TargetError};
use super::sql::{self, ColumnKind};
use crate::config::{
    Config, KeepExpr, MaskSpec, MaskStrategy, OnConflict, TableAction, TableName, TableRule,
};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A table rule bound to one cutoff and one database.
#[derive(Debug, Clone)]
pub struct ResolvedRule {
    /// The table.
    pub table: TableInfo,
    /// Relations whose heaps are walked (leaf partitions, or the table).
    pub leaves: Vec<String>,
    /// The rule's age (column or `age_expr`, time or integer).
    pub age: ResolvedAge,
    /// Expired and inside `where` (alias `t`).
    pub due: String,
    /// With `keep_expr`: each row's period, clamped (alias `t`).
    pub keep_interval: Option<String>,
    /// Inside `where` with a NULL age: kept forever by the contract, and
    /// counted so that it is seen (alias `t`).
    pub null_age: String,
    /// Kept back by a guard, a hold, or a cascade into either (alias `t`).
    pub protected: String,
    /// Per guard and hold (label, predicate): what each one keeps back.
    pub protected_by: Vec<(String, String)>,
    /// For mask rules: the masking SQL.
    pub mask: Option<ResolvedMask>,
    /// Human-readable notes on what protects rows (for `check --online`).
    pub notes: Vec<String>,
    /// For delete rules: the tables the delete cascades into.
    pub tree: Option<CascadeTree>,
    /// For delete rules: every table that loses rows through cascades.
    pub cascaded: Vec<Cascaded>,
    /// Partitioned tables: leaves whose bounds lie at or before the cutoff
    /// (set by the plan; [`super::partition`]).
    pub drops: Vec<super::partition::Candidate>,
}

/// The masking half of a mask rule.
#[derive(Debug, Clone)]
pub struct ResolvedMask {
    /// Every masked column already holds its masked value (alias `t`).
    pub masked: String,
    /// Some text IP column does not parse (alias `t`).
    pub unparsable: String,
    /// The UPDATE's SET list.
    pub set_list: String,
    /// HMAC pads, bound as `$3, $4, ...` after the batch window.
    pub params: Vec<Vec<u8>>,
    /// Each masked column's new value (alias `t`; an `hmac` column as it
    /// is: distinct values never share a pseudonym), for conflicts.
    pub values: Vec<(String, String)>,
    /// Unique keys over a masked column whose collisions can be predicted
    /// from column values.
    pub unique_keys: Vec<Vec<String>>,
    /// With `on_conflict = "delete"`: rows a delete must not take (guards
    /// and holds, alias `t`); None keeps every conflicting row.
    pub delete_conflicts: Option<String>,
}

impl ResolvedRule {
    /// Rows the rule would change now: due, not yet masked, not protected.
    pub fn eligible(&self) -> String {
        match &self.mask {
            Some(m) => format!(
                "({} AND NOT {} AND NOT {})",
                self.due, m.masked, self.protected
            ),
            None => format!("({} AND NOT {})", self.due, self.protected),
        }
    }
}

/// Resolves `rule` (on store `store`) with cutoff `cutoff`, guards and holds
/// evaluated at `at`.
pub async fn resolve(
    conn: &mut PgConnection,
    config: &Config,
    store: &str,
    rule: &TableRule,
    keep_expr: Option<&KeepExpr>,
    cutoff: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<ResolvedRule, SchemaError> {
    let table = schema::table(conn, &rule.table).await?;
    let age = age::resolve(conn, &table, &rule.table, &rule.age).await?;
    let privilege = match rule.action {
        TableAction::Delete => "DELETE",
        TableAction::Mask(_) => "UPDATE",
    };
    if !schema::has_privilege(conn, &table, privilege).await?
        || !schema::has_privilege(conn, &table, "SELECT").await?
    {
        return Err(TargetError::new(format!(
            "the database role lacks SELECT or {privilege} on {}",
            rule.table
        ))
        .into());
    }
    let leaves = schema::leaves(conn, &table).await?;
    let (row_cutoff, keep_interval) = match keep_expr {
        None => (sql::cutoff_literal(cutoff, age.ty), None),
        Some(k) => {
            let (type_name, sql_type) =
                age::expr_type(conn, &table, &rule.table, "keep_expr", &k.expr).await?;
            if type_name != "interval" {
                return Err(TargetError::new(format!(
                    "`keep_expr` yields {sql_type}, not an interval: write an expression yielding each row's period, e.g. (SELECT p.upload_ttl FROM plans p WHERE p.id = t.plan_id) or make_interval(days => t.retention_days)"
                ))
                .about(Field::KeepExpr)
                .into());
            }
            let iv = sql::clamped_interval(
                &k.expr,
                &sql::interval_literal(&k.min),
                &sql::interval_literal(&k.max),
            );
            (sql::row_cutoff(at, &iv, age.ty), Some(iv))
        }
    };
    let due = sql::due(&age.sql("t"), &row_cutoff, rule.filter.as_deref());
    let null_age = sql::and_where(&format!("{} IS NULL", age.sql("t")), rule.filter.as_deref());
    let (protected, protected_by, mut notes, cascaded) = match &rule.action {
        TableAction::Delete => {
            let tree = CascadeTree::load(conn, config, store, &table, &rule.table, at).await?;
            (
                protect::protected(&tree),
                protect::protected_by(&tree),
                protect::notes(&tree),
                Some(tree),
            )
        }
        // Guards are deletion floors; masking keeps the row. Holds preserve
        // evidence as it is, so they apply to masking too.
        TableAction::Mask(_) => {
            let holds = protect::holds_on(conn, config, store, &table).await?;
            (
                protect::held(&holds),
                protect::held_by(&holds),
                Vec::new(),
                None,
            )
        }
    };
    let mask = match &rule.action {
        TableAction::Mask(spec) => {
            let mut m = mask_sql(&table, &rule.table, spec)?;
            let masked: Vec<&str> = spec.columns.iter().map(|(c, _)| c.as_str()).collect();
            for key in schema::unique_keys(conn, &table).await? {
                if !key.columns.iter().any(|c| masked.contains(&c.as_str())) {
                    continue;
                }
                if key.partial {
                    notes.push(format!(
                        "unique index {} is partial or over expressions: its conflicts are not predicted (a row it refuses is kept and counted as a conflict)",
                        key.name
                    ));
                    continue;
                }
                m.unique_keys.push(key.columns);
            }
            if spec.on_conflict == OnConflict::Delete {
                let tree = CascadeTree::load(conn, config, store, &table, &rule.table, at).await?;
                if let Some(edge) = tree.root.cascades.first() {
                    return Err(TargetError::new(format!(
                        "on_conflict = \"delete\" on {}: deleting a row would cascade into {} ({}), which masking does not promise; use on_conflict = \"skip\"",
                        rule.table, edge.child.name, edge.constraint
                    ))
                    .into());
                }
                if let Some(setter) = schema::delete_setters(conn, &table).await?.first() {
                    return Err(TargetError::new(format!(
                        "on_conflict = \"delete\" on {}: deleting a row would change {} (ON DELETE SET NULL or SET DEFAULT), which masking does not promise; use on_conflict = \"skip\"",
                        rule.table, setter
                    ))
                    .into());
                }
                m.delete_conflicts = Some(protect::protected(&tree));
            }
            Some(m)
        }
        TableAction::Delete => None,
    };
    let mut resolved = ResolvedRule {
        age,
        null_age,
        keep_interval,
        table,
        leaves,
        due,
        protected,
        protected_by,
        mask,
        notes,
        tree: cascaded,
        cascaded: Vec::new(),
        drops: Vec::new(),
    };
    if let Some(tree) = &resolved.tree {
        resolved.cascaded = protect::cascaded(tree, &resolved.eligible());
    }
    Ok(resolved)
}

fn mask_sql(
    table: &TableInfo,
    name: &TableName,
    spec: &MaskSpec,
) -> Result<ResolvedMask, TargetError> {
    let (mut masked, mut unparsable, mut sets, mut params, mut values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (column, strategy) in &spec.columns {
        let col = table.columns.get(column).ok_or_else(|| {
            TargetError::new(format!(
                "column {name}.{column} does not exist{}",
                schema::did_you_mean(column, table.columns.keys().map(String::as_str))
            ))
            .about(Field::Column(column.clone()))
        })?;
        let kind = match col.type_name.as_str() {
            "inet" => ColumnKind::Inet,
            "cidr" => ColumnKind::Cidr,
            "json" => ColumnKind::Json,
            "jsonb" => ColumnKind::Jsonb,
            _ if col.is_text() => ColumnKind::Text,
            _ => ColumnKind::Other,
        };
        let bad_type = |what: &str| {
            TargetError::new(format!(
                "column {name}.{column} is {}; `{}` masks {what}",
                col.sql_type,
                strategy.name()
            ))
            .about(Field::Column(column.clone()))
        };
        match strategy {
            MaskStrategy::IpPrefix { .. } | MaskStrategy::Hmac { .. }
                if matches!(
                    kind,
                    ColumnKind::Other | ColumnKind::Json | ColumnKind::Jsonb
                ) =>
            {
                return Err(bad_type(
                    "inet, cidr or text columns (in a json column, name the paths: { \"$.ip\" = \"ip_prefix\" })",
                ))
            }
            MaskStrategy::Json(_) if !matches!(kind, ColumnKind::Json | ColumnKind::Jsonb) => {
                return Err(bad_type("json or jsonb columns"))
            }
            MaskStrategy::Redact if kind != ColumnKind::Text => {
                return Err(bad_type("text or varchar columns"))
            }
            MaskStrategy::Null if col.not_null => {
                return Err(TargetError::new(format!(
                    "column {name}.{column} is NOT NULL; `null` cannot mask it (use `redact`)"
                ))
                .about(Field::Column(column.clone())))
            }
            _ => {}
        }
        // The HMAC keys of this column (one per hmac path of a JSON
        // column), bound as parameters: $1, $2 are the batch window, the
        // pads follow.
        let keys: Vec<&Vec<u8>> = match strategy {
            MaskStrategy::Hmac { key } => vec![key],
            MaskStrategy::Json(paths) => paths
                .iter()
                .filter_map(|(_, s)| match s {
                    MaskStrategy::Hmac { key } => Some(key),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut placeholders = Vec::new();
        for key in keys {
            let (ipad, opad) = sql::hmac_pads(key);
            let first = params.len() + 3;
            params.push(ipad);
            params.push(opad);
            placeholders.push((format!("${first}::bytea"), format!("${}::bytea", first + 1)));
        }
        let m = sql::column_mask(
            column,
            kind,
            col.not_null,
            strategy,
            spec.on_unparsable,
            &placeholders,
        );
        masked.push(m.masked);
        unparsable.push(m.unparsable);
        sets.push(m.assignment);
        let value = match strategy {
            MaskStrategy::Hmac { .. } => format!("t.{}", sql::quote_ident(column)),
            _ => m.value,
        };
        values.push((column.clone(), value));
    }
    Ok(ResolvedMask {
        masked: sql::all_of(&masked),
        unparsable: sql::any_of(&unparsable),
        set_list: sets.join(", "),
        params,
        values,
        unique_keys: Vec::new(),
        delete_conflicts: None,
    })
}
