//! What a delete must not take: guards, legal holds, and the rows an
//! `ON DELETE CASCADE` would take along, as one SQL predicate on the rule's
//! table (alias `t`).
//!
//! The cascade tree is read from the catalog once ([`CascadeTree::load`]);
//! the predicate is then a pure function of it ([`protected`]), unit-tested
//! here with aliases and subqueries.
//!
//! **Every user predicate is evaluated in its own scope.** A hold's `where`
//! is written against its table as alias `t` (or with bare column names).
//! Pasted into a cascade check, `t` would mean the *parent* and the hold
//! would silently test the wrong rows. So a hold is always wrapped as
//! `EXISTS (SELECT 1 FROM (SELECT <row>.*) AS t WHERE (<where>) IS NOT FALSE)`:
//! inside, `t` and every bare column name are the held table's row, at any
//! depth, whatever aliases or subqueries the text contains. The derived
//! table reads the row already at hand, so it costs no extra scan. Cascade
//! levels use aliases no user writes (`retentiond_c1`, ...).

use super::age::{self, ResolvedAge};
use super::schema::{self, SchemaError, TableInfo, TargetError};
use super::sql;
use crate::audit::events::{guard_label, hold_label};
use crate::config::{Config, Guard, TableName};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// How deep cascades are followed; deeper chains are refused as doubtful.
pub const MAX_CASCADE_DEPTH: usize = 8;

/// Something that keeps rows of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Floor {
    /// A guard: rows younger than `cutoff` (a typed literal), or of unknown
    /// age, stay.
    Guard {
        /// What it is called in counts and reports:
        /// `guard <table>.<age> min_keep <keep>`.
        label: String,
        /// The guard's age.
        age: ResolvedAge,
        /// The cutoff as a literal of the column's type.
        cutoff: String,
        /// For notes: `min_keep` and reason.
        about: String,
    },
    /// A legal hold: rows for which `filter` is true or NULL stay.
    Hold {
        /// The hold's name.
        name: String,
        /// Its `where`, written against alias `t`.
        filter: String,
    },
}

/// A table reached from the rule's table, with what protects its rows and
/// the tables its deletes cascade into.
#[derive(Debug, Clone)]
pub struct Node {
    /// The table, quoted.
    pub quoted: String,
    /// The table as named in messages.
    pub name: TableName,
    /// Its oid.
    pub oid: u32,
    /// Its leaf relations (itself, or its partitions): where PostgreSQL
    /// counts deleted rows.
    pub leaves: Vec<u32>,
    /// Its guards and holds.
    pub floors: Vec<Floor>,
    /// Foreign keys that cascade deletes from it.
    pub cascades: Vec<Cascade>,
}

/// An `ON DELETE CASCADE` foreign key from a parent node into `child`.
#[derive(Debug, Clone)]
pub struct Cascade {
    /// Constraint name.
    pub constraint: String,
    /// (child column, parent column) pairs.
    pub columns: Vec<(String, String)>,
    /// True when `child` is already on the path from the rule's table:
    /// the edge closes a cycle and `child` is not descended into.
    pub cycle: bool,
    /// The referencing table.
    pub child: Node,
}

/// The rule's table and every table its deletes cascade into.
#[derive(Debug, Clone)]
pub struct CascadeTree {
    /// The rule's table.
    pub root: Node,
}

/// A hold's `where` in its own scope: `row` is the alias of the held
/// table's row where the predicate is used.
pub fn hold_in_scope(row: &str, filter: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM (SELECT {row}.*) AS t WHERE {} IS NOT FALSE)",
        sql::user_expr(filter)
    )
}

impl Floor {
    /// What this floor is called in `protected_by` counts (plan, records,
    /// reports): `guard <table>.<age> min_keep <keep>` or `hold <name>`.
    pub fn label(&self) -> String {
        match self {
            Floor::Guard { label, .. } => label.clone(),
            Floor::Hold { name, .. } => hold_label(name),
        }
    }
}

fn floor_predicate(alias: &str, floor: &Floor) -> String {
    match floor {
        Floor::Guard { age, cutoff, .. } => sql::guard_protects(&age.sql(alias), cutoff),
        Floor::Hold { filter, .. } => hold_in_scope(alias, filter),
    }
}

fn cascade_alias(depth: usize) -> String {
    format!("retentiond_c{depth}")
}

/// `only`: the label of the one floor to test, or None for all of them.
fn node_protected(node: &Node, alias: &str, depth: usize, only: Option<&str>) -> String {
    let mut parts: Vec<String> = node
        .floors
        .iter()
        .filter(|f| only.is_none_or(|l| f.label() == l))
        .map(|f| floor_predicate(alias, f))
        .collect();
    for edge in node.cascades.iter().filter(|e| !e.cycle) {
        let child_alias = cascade_alias(depth + 1);
        let inner = node_protected(&edge.child, &child_alias, depth + 1, only);
        if inner != "false" {
            parts.push(sql::cascade_exists(
                &edge.child.quoted,
                &child_alias,
                alias,
                &edge.columns,
                &inner,
            ));
        }
    }
    sql::any_of(&parts)
}

/// The predicate for rows of the rule's table (alias `t`) that must not be
/// deleted: guarded or held themselves, or cascading into such rows.
pub fn protected(tree: &CascadeTree) -> String {
    node_protected(&tree.root, "t", 0, None)
}

/// Per guard and hold in the tree (by label, first seen first): the rows
/// of the rule's table (alias `t`) that this one floor keeps, on the table
/// itself or through any cascade path. A row kept by two floors counts for
/// both, so these are what each floor protects, not a partition of
/// [`protected`].
pub fn protected_by(tree: &CascadeTree) -> Vec<(String, String)> {
    fn labels(node: &Node, out: &mut Vec<String>) {
        for f in &node.floors {
            let l = f.label();
            if !out.contains(&l) {
                out.push(l);
            }
        }
        for edge in node.cascades.iter().filter(|e| !e.cycle) {
            labels(&edge.child, out);
        }
    }
    let mut all = Vec::new();
    labels(&tree.root, &mut all);
    all.into_iter()
        .map(|l| {
            let p = node_protected(&tree.root, "t", 0, Some(&l));
            (l, p)
        })
        .collect()
}

/// [`protected_by`] for a mask rule: each hold on the table.
pub fn held_by(floors: &[Floor]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for f in floors.iter().filter(|f| matches!(f, Floor::Hold { .. })) {
        let label = f.label();
        if !out.iter().any(|(l, _)| *l == label) {
            let only: Vec<Floor> = floors
                .iter()
                .filter(|g| g.label() == label)
                .cloned()
                .collect();
            out.push((label, held(&only)));
        }
    }
    out
}

/// The predicate for rows a mask rule must leave alone: held rows (guards
/// are deletion floors; masking keeps the row).
pub fn held(floors: &[Floor]) -> String {
    let parts: Vec<String> = floors
        .iter()
        .filter(|f| matches!(f, Floor::Hold { .. }))
        .map(|f| floor_predicate("t", f))
        .collect();
    sql::any_of(&parts)
}

/// What `check --online` and `plan` say protects rows through cascades.
pub fn notes(tree: &CascadeTree) -> Vec<String> {
    fn walk(node: &Node, out: &mut Vec<String>) -> bool {
        let mut protects = !node.floors.is_empty();
        for edge in node.cascades.iter().filter(|e| !e.cycle) {
            if walk(&edge.child, out) {
                protects = true;
                out.push(format!(
                    "{} → {} via ON DELETE CASCADE ({})",
                    node.name, edge.child.name, edge.constraint
                ));
                for floor in &edge.child.floors {
                    out.push(match floor {
                        Floor::Guard { about, .. } => format!(
                            "cascade into {} is checked against its guard ({about})",
                            edge.child.name
                        ),
                        Floor::Hold { name, .. } => format!(
                            "cascade into {} is checked against legal hold `{name}`",
                            edge.child.name
                        ),
                    });
                }
            }
        }
        protects
    }
    let mut out = Vec::new();
    walk(&tree.root, &mut out);
    out
}

/// A table that loses rows through cascades when the rule deletes.
#[derive(Debug, Clone)]
pub struct Cascaded {
    /// The table, `schema.table`.
    pub name: TableName,
    /// Its oid.
    pub oid: u32,
    /// Its leaf relations, where deleted rows are counted.
    pub leaves: Vec<u32>,
    /// Its quoted name.
    pub quoted: String,
    /// Its rows that go (alias `t`), for the plan's prediction.
    pub removed: String,
}

/// Every table a delete on the rule's table removes rows from through
/// cascades, given `eligible`, the rule's own predicate on its table (alias
/// `t`). A table reached by several paths is listed once, with the OR of
/// its paths, so a row is counted once. The rule's table itself appears
/// when a cascade cycles back to it; its predicate then leaves out the rows
/// the rule deletes directly.
pub fn cascaded(tree: &CascadeTree, eligible: &str) -> Vec<Cascaded> {
    // `removed(row)`: the condition that the row `row` of this node goes.
    fn walk(
        node: &Node,
        removed: &dyn Fn(&str) -> String,
        depth: usize,
        out: &mut Vec<(Cascaded, Vec<String>)>,
    ) {
        for edge in &node.cascades {
            let parent = node.quoted.clone();
            let columns = edge.columns.clone();
            let child_removed = move |row: &str| -> String {
                let p = format!("retentiond_p{depth}");
                let join: Vec<String> = columns
                    .iter()
                    .map(|(c, pc)| {
                        format!(
                            "{p}.{} = {row}.{}",
                            sql::quote_ident(pc),
                            sql::quote_ident(c)
                        )
                    })
                    .collect();
                format!(
                    "EXISTS (SELECT 1 FROM {parent} AS {p} WHERE {} AND {})",
                    join.join(" AND "),
                    removed(&p)
                )
            };
            let pred = child_removed("t");
            match out.iter_mut().find(|(c, _)| c.oid == edge.child.oid) {
                Some((_, preds)) => preds.push(pred),
                None => out.push((
                    Cascaded {
                        name: edge.child.name.clone(),
                        oid: edge.child.oid,
                        leaves: edge.child.leaves.clone(),
                        quoted: edge.child.quoted.clone(),
                        removed: String::new(),
                    },
                    vec![pred],
                )),
            }
            if !edge.cycle {
                walk(&edge.child, &child_removed, depth + 1, out);
            }
        }
    }
    let root_removed = |row: &str| -> String {
        format!("EXISTS (SELECT 1 FROM (SELECT {row}.*) AS t WHERE {eligible})")
    };
    let mut out = Vec::new();
    walk(&tree.root, &root_removed, 0, &mut out);
    out.into_iter()
        .map(|(mut c, preds)| {
            c.removed = sql::any_of(&preds);
            if c.oid == tree.root.oid {
                c.removed = format!("({} AND NOT {})", c.removed, root_removed("t"));
            }
            c
        })
        .collect()
}

impl CascadeTree {
    /// Reads the cascade tree under `table` from the catalog, with the
    /// guards and holds of `store` on each table (guards evaluated at `at`).
    /// Refused as doubtful: a chain deeper than [`MAX_CASCADE_DEPTH`], a
    /// guard that cannot be evaluated on a table the delete reaches, and a
    /// cascade cycle (a self-referencing foreign key, say) through which a
    /// guarded or held row could be reached: how deep such a chain goes is
    /// data, not schema.
    pub async fn load(
        conn: &mut PgConnection,
        config: &Config,
        store: &str,
        table: &TableInfo,
        name: &TableName,
        at: DateTime<Utc>,
    ) -> Result<CascadeTree, SchemaError> {
        let floors = Floors::load(conn, config, store, at).await?;
        let mut path = vec![table.oid];
        let root = load_node(conn, &floors, table, name, &mut path).await?;
        refuse_protected_cycles(&root, &[])?;
        Ok(CascadeTree { root })
    }
}

fn has_floors(node: &Node) -> bool {
    !node.floors.is_empty()
        || node
            .cascades
            .iter()
            .any(|e| !e.cycle && has_floors(&e.child))
}

fn refuse_protected_cycles<'a>(node: &'a Node, ancestors: &[&'a Node]) -> Result<(), TargetError> {
    let mut path: Vec<&Node> = ancestors.to_vec();
    path.push(node);
    for edge in &node.cascades {
        if edge.cycle {
            if let Some(start) = path.iter().find(|n| n.oid == edge.child.oid) {
                if has_floors(start) {
                    return Err(TargetError::new(format!(
                        "{} cascades back into {} ({}), and a guard or hold protects rows that chain can reach: \
                         how far such a cascade goes depends on the data, so retentiond cannot prove a delete keeps them; \
                         delete the rows bottom-up with a rule on the leaf rows, or drop ON DELETE CASCADE",
                        node.name, edge.child.name, edge.constraint
                    )));
                }
            }
        } else {
            refuse_protected_cycles(&edge.child, &path)?;
        }
    }
    Ok(())
}

/// Guards and holds of one store, matched to tables by oid. A guard that
/// cannot be evaluated is an error only where a delete reaches its table.
struct Floors {
    by_oid: Vec<(u32, Result<Floor, TargetError>)>,
}

impl Floors {
    async fn load(
        conn: &mut PgConnection,
        config: &Config,
        store: &str,
        at: DateTime<Utc>,
    ) -> Result<Floors, SchemaError> {
        let mut by_oid = Vec::new();
        for g in config.guards_in(store) {
            let oid = schema::resolve_name(conn, &g.table).await?.ok_or_else(|| {
                TargetError::new(format!("guarded table {} does not exist", g.table))
            })?;
            let info = schema::table(conn, &g.table).await?;
            let floor = guard_floor(conn, g, &info, at).await?;
            by_oid.push((oid, floor));
        }
        for (h, table, filter) in config.row_holds_in(store) {
            let oid = schema::resolve_name(conn, table).await?.ok_or_else(|| {
                TargetError::new(format!("table {table} of hold `{}` does not exist", h.name))
            })?;
            by_oid.push((
                oid,
                Ok(Floor::Hold {
                    name: h.name.clone(),
                    filter: filter.to_string(),
                }),
            ));
        }
        Ok(Floors { by_oid })
    }

    fn of(&self, oid: u32) -> Result<Vec<Floor>, TargetError> {
        self.by_oid
            .iter()
            .filter(|(o, _)| *o == oid)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// A guard as a floor, or why it cannot be evaluated (an error only where
/// a delete reaches its table).
async fn guard_floor(
    conn: &mut PgConnection,
    g: &Guard,
    info: &TableInfo,
    at: DateTime<Utc>,
) -> Result<Result<Floor, TargetError>, sqlx::Error> {
    let Some(cutoff) = g.min_keep.cutoff(at) else {
        return Ok(Err(TargetError::new(format!(
            "guard on {}: min_keep {} reaches before year 0",
            g.table, g.min_keep
        ))));
    };
    let age = match age::resolve(conn, info, &g.table, &g.age).await {
        Ok(age) => age,
        Err(SchemaError::Target(e)) => {
            return Ok(Err(TargetError::new(format!(
                "guard on {}: {}",
                g.table, e.message
            ))))
        }
        Err(SchemaError::Db(e)) => return Err(e),
    };
    Ok(Ok(Floor::Guard {
        label: guard_label(g),
        cutoff: sql::cutoff_literal(cutoff, age.ty),
        age,
        about: format!("min_keep {}: {}", g.min_keep, g.reason),
    }))
}

/// The holds (never guards: masking keeps the row) on `table`, for a mask
/// rule.
pub async fn holds_on(
    conn: &mut PgConnection,
    config: &Config,
    store: &str,
    table: &TableInfo,
) -> Result<Vec<Floor>, SchemaError> {
    let mut out = Vec::new();
    for (h, name, filter) in config.row_holds_in(store) {
        if schema::resolve_name(conn, name).await? == Some(table.oid) {
            out.push(Floor::Hold {
                name: h.name.clone(),
                filter: filter.to_string(),
            });
        }
    }
    Ok(out)
}

async fn load_node(
    conn: &mut PgConnection,
    floors: &Floors,
    table: &TableInfo,
    name: &TableName,
    path: &mut Vec<u32>,
) -> Result<Node, SchemaError> {
    let mut cascades = Vec::new();
    for edge in schema::cascades_from(conn, table).await? {
        let cycle = path.contains(&edge.child.oid);
        if !cycle && path.len() > MAX_CASCADE_DEPTH {
            return Err(TargetError::new(format!(
                "cascade chain from {name} is deeper than {MAX_CASCADE_DEPTH} foreign keys; refusing to guess what a delete would take along"
            ))
            .into());
        }
        let child = if cycle {
            // Not descended: the table is already on the path. Kept as a
            // leaf so its rows are counted and the cycle can be checked.
            Node {
                quoted: edge.child.quoted.clone(),
                name: edge.child_name.clone(),
                oid: edge.child.oid,
                leaves: schema::leaf_oids(conn, &edge.child).await?,
                floors: Vec::new(),
                cascades: Vec::new(),
            }
        } else {
            path.push(edge.child.oid);
            let child =
                Box::pin(load_node(conn, floors, &edge.child, &edge.child_name, path)).await;
            path.pop();
            child?
        };
        cascades.push(Cascade {
            constraint: edge.constraint,
            columns: edge.columns,
            cycle,
            child,
        });
    }
    Ok(Node {
        quoted: table.quoted.clone(),
        name: name.clone(),
        oid: table.oid,
        leaves: schema::leaf_oids(conn, table).await?,
        floors: floors.of(table.oid)?,
        cascades,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, floors: Vec<Floor>, cascades: Vec<Cascade>) -> Node {
        Node {
            quoted: format!("\"{name}\""),
            name: TableName {
                schema: None,
                name: name.into(),
            },
            oid: name.len() as u32,
            leaves: vec![name.len() as u32],
            floors,
            cascades,
        }
    }

    fn edge(child: Node) -> Cascade {
        Cascade {
            constraint: format!("{}_fk", child.name.name),
            columns: vec![("parent_id".into(), "id".into())],
            cycle: false,
            child,
        }
    }

    fn hold(filter: &str) -> Floor {
        Floor::Hold {
            name: "h".into(),
            filter: filter.into(),
        }
    }

    #[test]
    fn a_hold_through_a_cascade_tests_the_child_row_not_the_parent() {
        let kid_hold = "EXISTS (SELECT 1 FROM kid_holds h WHERE h.kid_id = t.id)";
        let tree = CascadeTree {
            root: node(
                "parents",
                vec![],
                vec![edge(node("kids", vec![hold(kid_hold)], vec![]))],
            ),
        };
        let p = protected(&tree);
        // The hold's `t` is bound to the child's row by its own derived
        // table, inside the EXISTS over the child.
        assert_eq!(
            p,
            "(EXISTS (SELECT 1 FROM \"kids\" AS retentiond_c1 WHERE retentiond_c1.\"parent_id\" = t.\"id\" AND \
             (EXISTS (SELECT 1 FROM (SELECT retentiond_c1.*) AS t WHERE (\nEXISTS (SELECT 1 FROM kid_holds h WHERE h.kid_id = t.id)\n) IS NOT FALSE))))"
        );
    }

    #[test]
    fn a_hold_on_the_rules_own_table_is_scoped_too() {
        let tree = CascadeTree {
            root: node("t1", vec![hold("legal = true -- trailing comment")], vec![]),
        };
        assert_eq!(
            protected(&tree),
            "(EXISTS (SELECT 1 FROM (SELECT t.*) AS t WHERE (\nlegal = true -- trailing comment\n) IS NOT FALSE))"
        );
    }

    #[test]
    fn grandchildren_get_their_own_alias_and_unprotected_branches_are_pruned() {
        let guard = Floor::Guard {
            label: "guard ccc.created_at min_keep 10y".into(),
            age: ResolvedAge::column("created_at", schema::AgeType::Timestamptz, true),
            cutoff: "X".into(),
            about: "min_keep 10y: law".into(),
        };
        let tree = CascadeTree {
            root: node(
                "a",
                vec![],
                vec![
                    edge(node(
                        "b",
                        vec![],
                        vec![edge(node("ccc", vec![guard], vec![]))],
                    )),
                    edge(node("dd", vec![], vec![])),
                ],
            ),
        };
        let p = protected(&tree);
        assert!(
            p.contains("FROM \"b\" AS retentiond_c1 WHERE retentiond_c1.\"parent_id\" = t.\"id\"")
        );
        assert!(p.contains(
            "FROM \"ccc\" AS retentiond_c2 WHERE retentiond_c2.\"parent_id\" = retentiond_c1.\"id\""
        ));
        assert!(
            p.contains("retentiond_c2.\"created_at\" IS NULL OR retentiond_c2.\"created_at\" > X")
        );
        assert!(
            !p.contains("\"dd\""),
            "a branch with nothing to protect is left out"
        );
        let notes = notes(&tree);
        assert!(notes.iter().any(|n| n.contains("b → ccc")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("a → b")), "{notes:?}");
    }

    #[test]
    fn nothing_to_protect_is_false() {
        let tree = CascadeTree {
            root: node("a", vec![], vec![edge(node("b", vec![], vec![]))]),
        };
        assert_eq!(protected(&tree), "false");
        assert_eq!(held(&[]), "false");
    }

    #[test]
    fn a_cycle_reaching_a_protected_row_is_refused() {
        let mut root = node("comments", vec![hold("pinned")], vec![]);
        root.cascades.push(Cascade {
            constraint: "reply_fk".into(),
            columns: vec![("parent_id".into(), "id".into())],
            cycle: true,
            child: node("comments", vec![], vec![]),
        });
        assert!(refuse_protected_cycles(&root, &[]).is_err());
        root.floors.clear();
        assert!(refuse_protected_cycles(&root, &[]).is_ok());
    }

    #[test]
    fn cascaded_rows_are_predicted_per_table_once() {
        let tree = CascadeTree {
            root: node(
                "a",
                vec![],
                vec![edge(node(
                    "b",
                    vec![],
                    vec![edge(node("ccc", vec![], vec![]))],
                ))],
            ),
        };
        let c = cascaded(&tree, "(ELIGIBLE)");
        let names: Vec<&str> = c.iter().map(|c| c.name.name.as_str()).collect();
        assert_eq!(names, ["b", "ccc"]);
        assert!(c[1].removed.contains("FROM \"b\" AS retentiond_p1"));
        assert!(c[1].removed.contains("FROM \"a\" AS retentiond_p0"));
        assert!(c[1]
            .removed
            .contains("(SELECT retentiond_p0.*) AS t WHERE (ELIGIBLE)"));
    }

    #[test]
    fn each_floor_is_counted_through_every_path_that_reaches_it() {
        let guard = |table: &str| Floor::Guard {
            label: format!("guard {table}.at min_keep 10y"),
            age: ResolvedAge::column("at", schema::AgeType::Timestamptz, true),
            cutoff: "X".into(),
            about: "law".into(),
        };
        let named = |name: &str, filter: &str| Floor::Hold {
            name: name.into(),
            filter: filter.into(),
        };
        // The same hold on the root and on a grandchild; a guard on the child.
        let tree = CascadeTree {
            root: node(
                "a",
                vec![named("case-1", "t.id = 1")],
                vec![edge(node(
                    "b",
                    vec![guard("b")],
                    vec![edge(node("ccc", vec![named("case-1", "t.k = 2")], vec![]))],
                ))],
            ),
        };
        let by = protected_by(&tree);
        let labels: Vec<&str> = by.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["hold case-1", "guard b.at min_keep 10y"]);
        let (_, hold) = &by[0];
        assert!(
            hold.contains("t.id = 1") && hold.contains("t.k = 2"),
            "{hold}"
        );
        assert!(
            !hold.contains(" > X"),
            "the guard is not part of the hold's count: {hold}"
        );
        let (_, guard_p) = &by[1];
        assert!(guard_p.contains("retentiond_c1.\"at\" > X"), "{guard_p}");
        assert!(!guard_p.contains("t.id = 1"), "{guard_p}");
        assert_eq!(held_by(&[guard("x")]), Vec::<(String, String)>::new());
        assert_eq!(held_by(&[named("h", "t.x")]).len(), 1);
    }
}
