//! Config problems with their place in the file, rendered by miette.

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};
use std::ops::Range;

/// One problem in the rules file: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    /// The sentence shown first.
    pub message: String,
    /// Byte range in the file the problem points at.
    #[label("{label}")]
    pub span: SourceSpan,
    /// Short text under the pointer.
    pub label: String,
    /// How to fix it.
    #[help]
    pub help: Option<String>,
}

impl Problem {
    /// A problem at `span` with a message and a fix.
    pub fn new(span: Range<usize>, message: impl Into<String>, help: impl Into<String>) -> Problem {
        let message = message.into();
        Problem {
            label: "here".to_string(),
            message,
            span: span.into(),
            help: Some(help.into()).filter(|h: &String| !h.is_empty()),
        }
    }

    /// Replaces the label under the pointer.
    pub fn label(mut self, label: impl Into<String>) -> Problem {
        self.label = label.into();
        self
    }
}

/// Every problem found in one file, reported together (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {} problem(s) in the rules file", problems.len())]
pub struct ConfigError {
    /// The file's path as given by the user.
    pub path: String,
    /// The file's text, for locating spans.
    pub text: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// One-based line and column of a byte offset in the file.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }

    /// Renders every problem: a `file:line:col: message` line, then the
    /// annotated snippet. Colour only when `color` is set.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme);
        let mut out = String::new();
        for problem in &self.problems {
            let (line, col) = self.line_col(problem.span.offset());
            out.push_str(&format!(
                "error: {}:{line}:{col}: {}\n",
                self.path, problem.message
            ));
            let report = miette::Report::new(problem.clone())
                .with_source_code(NamedSource::new(&self.path, self.text.clone()));
            let mut snippet = String::new();
            if handler.render_report(&mut snippet, report.as_ref()).is_ok() {
                out.push_str(&snippet);
            }
            out.push('\n');
        }
        out
    }
}

/// One-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut index: usize) -> usize {
        while index > 0 && !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = \"é x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
        assert_eq!(line_col(text, 999), (3, 1));
    }
}
