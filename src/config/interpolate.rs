//! `${VAR}` substitution in string values.
//!
//! Substitution happens per value after parsing, not on the raw text, so a
//! missing variable is reported at the value that names it and a variable's
//! content can never change the file's structure. `$${` writes a literal `${`.

/// A `${VAR}` naming an unset variable, or an unterminated `${`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("environment variable `{0}` is not set")]
    /// The variable is not set.
    Missing(String),
    #[error("`${{` without a closing `}}`")]
    /// `${` is never closed.
    Unterminated,
    #[error("`${{}}` names no variable")]
    /// `${}`.
    EmptyName,
}

/// Replaces every `${NAME}` in `value` using `lookup`.
pub fn interpolate(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or(InterpolateError::Unterminated)?;
            let name = tail[..end].trim();
            if name.is_empty() {
                return Err(InterpolateError::EmptyName);
            }
            let val = lookup(name).ok_or_else(|| InterpolateError::Missing(name.to_string()))?;
            out.push_str(&val);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "db.internal".to_string())
    }

    #[test]
    fn interpolate_replaces_and_escapes() {
        assert_eq!(
            interpolate("postgres://${HOST}/app", env).unwrap(),
            "postgres://db.internal/app"
        );
        assert_eq!(
            interpolate("$${HOST} costs $5", env).unwrap(),
            "${HOST} costs $5"
        );
        assert_eq!(interpolate("plain", env).unwrap(), "plain");
    }

    #[test]
    fn interpolate_reports_missing_and_malformed() {
        assert_eq!(
            interpolate("${NOPE}", env),
            Err(InterpolateError::Missing("NOPE".into()))
        );
        assert_eq!(
            interpolate("${HOST", env),
            Err(InterpolateError::Unterminated)
        );
        assert_eq!(interpolate("${}", env), Err(InterpolateError::EmptyName));
    }
}
