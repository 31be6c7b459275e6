/// A position in the query text: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// An ADQL error: where, and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The text does not follow the grammar.
    #[error("ADQL syntax error at {span}: {message}")]
    Syntax {
        /// Where.
        span: Span,
        /// What was found and what was expected.
        message: String,
    },
    /// The query is well-formed but not valid ADQL (unknown function, wrong arity, a
    /// geometry where a number is needed, ...).
    #[error("ADQL error at {span}: {message}")]
    Semantic {
        /// Where.
        span: Span,
        /// What is wrong, with a suggestion where one is known.
        message: String,
    },
}

impl Error {
    /// Where the error is.
    pub fn span(&self) -> Span {
        match self {
            Error::Syntax { span, .. } | Error::Semantic { span, .. } => *span,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
