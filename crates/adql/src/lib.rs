//! ADQL 2.1 (IVOA Recommendation, 2023) for Meridian: a lexer, an abstract syntax tree, a
//! recursive-descent parser and a validation pass (known functions and their arities,
//! geometry used where ADQL allows it), each error carrying line, column and what was
//! expected.
//!
//! ADQL is not PostgreSQL SQL: `TOP`, the geometry functions, `1=CONTAINS(...)`, delimited
//! identifiers with their case rules and `IN_UNIT` are its own, which is why it has its own
//! parser rather than a SQL dialect of an existing one.

pub mod ast;
mod error;
pub mod functions;
mod lexer;
mod parser;
mod validate;

pub use error::{Error, Result, Span};
pub use functions::{FunctionRegistry, FunctionSig};
pub use parser::{is_reserved, parse_query};
pub use validate::validate;

/// Parses and validates an ADQL query against `functions`.
pub fn parse(text: &str, functions: &FunctionRegistry) -> Result<ast::Query> {
    let q = parse_query(text)?;
    validate(&q, functions)?;
    Ok(q)
}

/// `name` as it is written in ADQL: as is when it is a regular identifier (a letter, then
/// letters, digits and underscores, not a reserved word), else delimited with double
/// quotes (`"_healpix_29"`, `"size"`).
pub fn identifier(name: &str) -> String {
    let regular = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !is_reserved(name);
    if regular {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}
