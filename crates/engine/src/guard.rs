//! What a query may be and how much of the stack its planning may take.
//!
//! Every query reaches DataFusion through [`Engine::query`](crate::Engine::query), which
//! plans here: only queries (`SELECT`, `WITH`, `VALUES`, `EXPLAIN` of those) are planned,
//! never DDL, DML, `COPY` or session statements (`SET`), so no caller can write a file,
//! register a table over a server file or change the shared session. The text is bounded
//! before any parser runs ([`MAX_QUERY_BYTES`], [`MAX_EXPRESSION_DEPTH`]), chains of `AND`
//! and `OR` are rebalanced (a list of ids written as an `OR` chain is log2(n) deep rather
//! than n), and parsing and planning run on a thread with a stack of
//! [`PLANNING_STACK_BYTES`], so deep but legitimate queries plan and hostile ones get an
//! error instead of overflowing a worker's stack.

use std::ops::ControlFlow;

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{self as sql, BinaryOperator, Expr, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::{Error, Result};

/// The longest query text, bytes (an `IN` list of 50,000 ids fits).
pub const MAX_QUERY_BYTES: usize = 1 << 20;

/// The deepest expression the SQL text may build: parentheses plus the operators chained
/// at each level (`a + b + c` is two deep), as counted from the tokens before parsing.
/// `AND` and `OR` do not count: their chains are rebalanced.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// The SQL parser's own recursion limit (DataFusion's default of 50 refuses real queries).
pub const SQL_RECURSION_LIMIT: usize = 4 * MAX_EXPRESSION_DEPTH;

/// The stack of the thread that parses and plans, bytes. Reserved address space, not
/// memory: only the pages a query's recursion touches are ever mapped.
pub const PLANNING_STACK_BYTES: usize = 256 << 20;

/// The stack that threads running query operators should have, bytes: operators evaluate
/// an expression recursively, and an expression may be [`MAX_EXPRESSION_DEPTH`] deep.
/// Reserved address space; only the pages used are mapped.
pub const EXECUTION_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread with a [`PLANNING_STACK_BYTES`] stack and waits for it, inside the
/// caller's tokio runtime context when there is one (planning may spawn blocking file
/// listings). The caller's thread is held meanwhile, as it would be by planning itself. The
/// thread plans one query: constants it folds share one budget (`bounded`).
pub(crate) fn on_planning_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let handle = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("meridian-plan".into())
            .stack_size(PLANNING_STACK_BYTES)
            .spawn_scoped(scope, move || {
                let _guard = handle.as_ref().map(|h| h.enter());
                crate::bounded::start_planning();
                f()
            })
            .map_err(|e| Error::Invalid(format!("no thread to plan the query on: {e}")))?;
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// An error when a query text is longer than [`MAX_QUERY_BYTES`].
pub(crate) fn check_length(text: &str) -> Result<()> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(Error::Invalid(format!(
            "the query is {} bytes long; the limit is {MAX_QUERY_BYTES} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// Checks the size and the expression depth of SQL text from its tokens, before any
/// recursive parser sees it.
pub(crate) fn check_sql_text(text: &str) -> Result<()> {
    check_length(text)?;
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| Error::Invalid(format!("SQL syntax error: {e}")))?;
    // Per open parenthesis: the operators chained so far at that level.
    let mut chains: Vec<usize> = vec![0];
    // Depth of the enclosing levels: their chains plus one per parenthesis.
    let mut base = 0usize;
    for t in &tokens {
        match &t.token {
            Token::LParen => {
                base += chains.last().copied().unwrap_or(0) + 1;
                chains.push(0);
            }
            Token::RParen if chains.len() > 1 => {
                chains.pop();
                base -= chains.last().copied().unwrap_or(0) + 1;
            }
            Token::Comma | Token::SemiColon => *chains.last_mut().expect("a level") = 0,
            Token::Word(w) if w.keyword != Keyword::NoKeyword && w.quote_style.is_none() => {
                *chains.last_mut().expect("a level") = 0
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::DoubleColon
            | Token::ShiftLeft
            | Token::ShiftRight => *chains.last_mut().expect("a level") += 1,
            _ => {}
        }
        let depth = base + chains.last().copied().unwrap_or(0);
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(Error::Invalid(format!(
                "the query nests too deeply at line {}, column {} (more than \
                 {MAX_EXPRESSION_DEPTH} levels of parentheses and chained operators)",
                t.span.start.line, t.span.start.column
            )));
        }
    }
    Ok(())
}

/// Refuses every statement that is not a query. The plan is checked as well
/// ([`check_plan`]); this gives the clearer message.
pub(crate) fn check_statement(statement: &Statement) -> Result<()> {
    let allowed = match statement {
        Statement::Statement(s) => is_query(s),
        Statement::Explain(e) => match e.statement.as_ref() {
            Statement::Statement(s) => is_query(s),
            _ => false,
        },
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "only queries are allowed (SELECT, WITH, VALUES or EXPLAIN of a query), not {}",
            statement_kind(statement)
        )))
    }
}

fn is_query(s: &sql::Statement) -> bool {
    matches!(s, sql::Statement::Query(_))
}

/// The first words of a statement, for the message that refuses it.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let kind = words.join(" ").to_ascii_uppercase();
    if kind.len() > 40 {
        format!("'{}...'", &kind[..kind.floor_char_boundary(40)])
    } else {
        format!("'{kind}'")
    }
}

/// Refuses plans that are not read-only queries: DDL, DML, COPY and session statements,
/// in any subquery (DataFusion's own walk). [`check_statement`] gives the clearer message;
/// this is the second line, on what the planner actually made.
pub(crate) fn check_plan(plan: &LogicalPlan) -> Result<()> {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)?;
    Ok(())
}

/// Rebuilds every chain of `AND` (and of `OR`) as a balanced tree of the same terms in the
/// same order: `a OR b OR c OR d` becomes `(a OR b) OR (c OR d)`. Both operators are
/// associative, so the result is the same; the planner, the optimizer and the evaluation
/// of the expression then recurse log2(n) deep instead of n.
pub(crate) fn rebalance(statement: &mut Statement) {
    struct Balancer;
    impl VisitorMut for Balancer {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Some(op) = logical_op(expr) {
                let taken = std::mem::replace(expr, Expr::Value(sql::Value::Null.into()));
                let terms = flatten(taken, &op);
                *expr = balance(terms, &op);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement_visit(statement, &mut Balancer);
}

fn statement_visit(
    statement: &mut Statement,
    v: &mut impl VisitorMut<Break = ()>,
) -> ControlFlow<()> {
    match statement {
        Statement::Statement(s) => s.visit(v),
        Statement::Explain(e) => statement_visit(&mut e.statement, v),
        _ => ControlFlow::Continue(()),
    }
}

fn logical_op(expr: &Expr) -> Option<BinaryOperator> {
    match expr {
        Expr::BinaryOp { op, .. } if matches!(op, BinaryOperator::And | BinaryOperator::Or) => {
            Some(op.clone())
        }
        _ => None,
    }
}

/// The terms of a chain of `op`, left to right, looking through parentheses; iterative,
/// as the chain may be thousands deep.
fn flatten(expr: Expr, op: &BinaryOperator) -> Vec<Expr> {
    let mut terms = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp { left, op: o, right } if &o == op => {
                stack.push(*right);
                stack.push(*left);
            }
            Expr::Nested(inner) if logical_op(&inner).as_ref() == Some(op) => stack.push(*inner),
            other => terms.push(other),
        }
    }
    terms
}

fn balance(mut terms: Vec<Expr>, op: &BinaryOperator) -> Expr {
    if terms.len() == 1 {
        return terms.pop().expect("one term");
    }
    let right = terms.split_off(terms.len() / 2);
    Expr::BinaryOp {
        left: Box::new(balance(terms, op)),
        op: op.clone(),
        right: Box::new(balance(right, op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_chains_pass_the_text_check_and_deep_nesting_does_not() {
        let ors: Vec<String> = (0..5000).map(|i| format!("hip = {i}")).collect();
        check_sql_text(&format!("SELECT * FROM t WHERE {}", ors.join(" OR "))).unwrap();
        let ids: Vec<String> = (0..20000).map(|i| format!("-{i}")).collect();
        check_sql_text(&format!("SELECT * FROM t WHERE id IN ({})", ids.join(", "))).unwrap();
        let deep = format!("SELECT {}1{}", "(".repeat(1200), ")".repeat(1200));
        let e = check_sql_text(&deep).unwrap_err().to_string();
        assert!(e.contains("nests too deeply"), "{e}");
        let chain = format!("SELECT {}", vec!["1"; 1500].join(" + "));
        let e = check_sql_text(&chain).unwrap_err().to_string();
        assert!(e.contains("nests too deeply"), "{e}");
        let long = format!("SELECT '{}'", "x".repeat(MAX_QUERY_BYTES));
        let e = check_sql_text(&long).unwrap_err().to_string();
        assert!(e.contains("bytes long"), "{e}");
    }

    fn depth(e: &Expr) -> usize {
        match e {
            Expr::BinaryOp { left, right, .. } => 1 + depth(left).max(depth(right)),
            Expr::Nested(e) => depth(e),
            _ => 0,
        }
    }

    fn where_clause(s: &Statement) -> &Expr {
        let Statement::Statement(s) = s else { panic!() };
        let sql::Statement::Query(q) = s.as_ref() else {
            panic!()
        };
        let sql::SetExpr::Select(sel) = q.body.as_ref() else {
            panic!()
        };
        sel.selection.as_ref().unwrap()
    }

    #[test]
    fn rebalanced_chains_keep_their_terms_in_order() {
        let dialect = GenericDialect {};
        let parse = |q: &str| {
            datafusion::sql::parser::DFParser::parse_sql_with_dialect(q, &dialect)
                .unwrap()
                .pop_front()
                .unwrap()
        };
        let mut s = parse("SELECT 1 WHERE a = 1 OR a = 2 OR (a = 3 OR a = 4) OR a = 5 AND b AND c");
        rebalance(&mut s);
        // Display prints a chain without its parentheses: the terms keep their order.
        assert_eq!(
            s.to_string(),
            "SELECT 1 WHERE a = 1 OR a = 2 OR a = 3 OR a = 4 OR a = 5 AND b AND c"
        );
        let ors: Vec<String> = (0..4096).map(|i| format!("hip = {i}")).collect();
        let mut s = parse(&format!("SELECT 1 WHERE {}", ors.join(" OR ")));
        assert_eq!(depth(where_clause(&s)), 4096);
        rebalance(&mut s);
        // 12 levels of OR, then the comparison.
        assert_eq!(depth(where_clause(&s)), 13);
    }

    #[test]
    fn only_queries_are_allowed() {
        let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
        let parse = |q: &str| {
            datafusion::sql::parser::DFParser::parse_sql_with_dialect(q, &dialect)
                .unwrap()
                .pop_front()
                .unwrap()
        };
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "VALUES (1)",
            "EXPLAIN SELECT 1",
        ] {
            check_statement(&parse(ok)).unwrap();
        }
        for bad in [
            "COPY (SELECT 1 AS x) TO '/tmp/x.csv' STORED AS CSV",
            "CREATE EXTERNAL TABLE pw (a VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "DROP TABLE demo_object",
            "CREATE VIEW v AS SELECT 1",
            "SET datafusion.execution.batch_size = 1",
            "INSERT INTO t VALUES (1)",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/y.csv'",
            "CREATE TABLE t AS SELECT 1",
        ] {
            let e = check_statement(&parse(bad)).unwrap_err().to_string();
            assert!(e.contains("only queries are allowed"), "{bad}: {e}");
        }
    }
}
