//! A `where` is exactly one SQL boolean expression, checked with
//! PostgreSQL's own parser (`pg_query` embeds it).
//!
//! retentiond pastes a `where` into its statements inside parentheses. Text
//! that closes them (`true)) OR ((false`), ends in a comment that would eat
//! what follows, adds a clause (`true LIMIT 1`) or another statement would
//! change what a statement deletes. So the text must parse as the WHERE
//! clause of `SELECT 1 WHERE <text>` and nothing else: one statement, one
//! plain SELECT, no other clause. That is a property of PostgreSQL's grammar,
//! so it holds wherever the text is then used as `(\n<text>\n)`
//! (`store::postgres::sql::user_expr`). Whether the expression is boolean,
//! and whether its columns exist, only the database can say: `check
//! --online` and every plan ask it.

use pg_query::protobuf::{node::Node as N, SetOperation};

/// Why a `where` is not one expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotOneExpression(pub String);

/// Checks that `text` is exactly one SQL expression.
pub fn check(text: &str) -> Result<(), NotOneExpression> {
    if text.trim().is_empty() {
        return Err(NotOneExpression("it is empty".into()));
    }
    if text.contains('\0') {
        return Err(NotOneExpression("it contains a NUL byte".into()));
    }
    // The newline ends a trailing `--` comment, as it does where the text
    // is used.
    let sql = format!("SELECT 1 WHERE {text}\n");
    let parsed = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| NotOneExpression(parse_message(&e)))?;
    // As it is used, too: a trailing `;` (which the parser above takes for
    // the end of a statement) is a syntax error inside the parentheses.
    let wrapped = format!(
        "SELECT 1 WHERE {}",
        crate::store::postgres::sql::user_expr(text)
    );
    pg_query::parse(&wrapped, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| NotOneExpression(parse_message(&e)))?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(NotOneExpression(format!(
            "it is {} statements, not one expression",
            stmts.len()
        )));
    }
    let node = stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref());
    let Some(N::SelectStmt(s)) = node else {
        return Err(NotOneExpression("it is not an expression".into()));
    };
    let extra = [
        (
            s.op != SetOperation::SetopNone as i32,
            "UNION/INTERSECT/EXCEPT",
        ),
        (s.target_list.len() != 1, "a select list"),
        (s.where_clause.is_none(), "no expression"),
        (!s.from_clause.is_empty(), "FROM"),
        (!s.group_clause.is_empty() || s.group_distinct, "GROUP BY"),
        (s.having_clause.is_some(), "HAVING"),
        (!s.window_clause.is_empty(), "WINDOW"),
        (!s.sort_clause.is_empty(), "ORDER BY"),
        (
            s.limit_count.is_some() || s.limit_offset.is_some(),
            "LIMIT/OFFSET",
        ),
        (!s.locking_clause.is_empty(), "FOR UPDATE/SHARE"),
        (s.with_clause.is_some(), "WITH"),
        (!s.distinct_clause.is_empty(), "DISTINCT"),
        (s.into_clause.is_some(), "INTO"),
        (!s.values_lists.is_empty(), "VALUES"),
    ];
    if let Some((_, what)) = extra.iter().find(|(bad, _)| *bad) {
        return Err(NotOneExpression(format!(
            "it continues past one expression ({what})"
        )));
    }
    // `$1`, `$2`, ... are retentiond's own bound values in its statements
    // (batch windows, HMAC keys): a `where` must not read them.
    if parsed
        .protobuf
        .nodes()
        .iter()
        .any(|(n, ..)| matches!(n, pg_query::NodeRef::ParamRef(_)))
    {
        return Err(NotOneExpression(
            "it uses a `$n` parameter; write the value itself".into(),
        ));
    }
    Ok(())
}

/// The parser's message, without the wrapper's own text.
fn parse_message(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn one_expression_passes() {
        for ok in [
            "tier = 'free'",
            "t.tier = 'free' AND t.id > 10",
            "EXISTS (SELECT 1 FROM kid_holds h WHERE h.kid_id = t.id)",
            "t.id IN (SELECT id FROM x UNION SELECT id FROM y)",
            "note = 'a;b' -- a comment",
            "note = $$ ) OR (true $$",
            "/* why */ true",
            "coalesce(a, b) <= now() - interval '1 day'",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "true)) OR ((false",
            "true) OR (true",
            "true; DELETE FROM users",
            "true LIMIT 1",
            "true ORDER BY 1",
            "true GROUP BY 1",
            "true UNION SELECT 1",
            "true FOR UPDATE",
            "true WINDOW w AS ()",
            "true /* unterminated",
            "'unterminated",
            "",
            "   ",
            "a\0b",
            "t.ctid >= $1",
            "true;",
            "true; -- x",
            "note = $3::text",
        ] {
            assert!(check(bad).is_err(), "{bad:?} passed");
        }
    }
}
