//! Recursive-descent ADQL parser.
//!
//! Precedence, lowest first: OR, AND, NOT, predicates (comparison, BETWEEN, LIKE, IN, IS
//! NULL), `|`, `^`, `&`, `||`, `+ -`, `* / %`, unary sign and `~`.

use crate::ast::*;
use crate::lexer::{Tok, Token, tokenize};
use crate::{Error, Result, Span};

/// ADQL 2.1's function names: reserved, and called with parentheses.
const ADQL_FUNCTIONS: &[&str] = &[
    "ABS",
    "ACOS",
    "AREA",
    "ASIN",
    "ATAN",
    "ATAN2",
    "BIT_AND",
    "BIT_NOT",
    "BIT_OR",
    "BIT_XOR",
    "BOX",
    "CEILING",
    "CENTROID",
    "CIRCLE",
    "CONTAINS",
    "COORD1",
    "COORD2",
    "COORDSYS",
    "COS",
    "COT",
    "DEGREES",
    "DISTANCE",
    "EXP",
    "FLOOR",
    "INTERSECTS",
    "IN_UNIT",
    "LOG",
    "LOG10",
    "MOD",
    "PI",
    "POINT",
    "POLYGON",
    "POWER",
    "RADIANS",
    "REGION",
    "RAND",
    "ROUND",
    "SIN",
    "SQRT",
    "TAN",
    "TRUNCATE",
];

/// ADQL 2.1's other reserved words.
const ADQL_KEYWORDS: &[&str] = &["ILIKE", "OFFSET", "TOP"];

/// SQL-92's reserved words, reserved in ADQL too.
const SQL_RESERVED: &[&str] = &[
    "ABSOLUTE",
    "ACTION",
    "ADD",
    "ALL",
    "ALLOCATE",
    "ALTER",
    "AND",
    "ANY",
    "ARE",
    "AS",
    "ASC",
    "ASSERTION",
    "AT",
    "AUTHORIZATION",
    "AVG",
    "BEGIN",
    "BETWEEN",
    "BIT",
    "BIT_LENGTH",
    "BOTH",
    "BY",
    "CASCADE",
    "CASCADED",
    "CASE",
    "CAST",
    "CATALOG",
    "CHAR",
    "CHARACTER",
    "CHAR_LENGTH",
    "CHARACTER_LENGTH",
    "CHECK",
    "CLOSE",
    "COALESCE",
    "COLLATE",
    "COLLATION",
    "COLUMN",
    "COMMIT",
    "CONNECT",
    "CONNECTION",
    "CONSTRAINT",
    "CONSTRAINTS",
    "CONTINUE",
    "CONVERT",
    "CORRESPONDING",
    "COUNT",
    "CREATE",
    "CROSS",
    "CURRENT",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "CURSOR",
    "DATE",
    "DAY",
    "DEALLOCATE",
    "DECIMAL",
    "DECLARE",
    "DEFAULT",
    "DEFERRABLE",
    "DEFERRED",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DESCRIPTOR",
    "DIAGNOSTICS",
    "DISCONNECT",
    "DISTINCT",
    "DOMAIN",
    "DOUBLE",
    "DROP",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXCEPTION",
    "EXEC",
    "EXECUTE",
    "EXISTS",
    "EXTERNAL",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FIRST",
    "FLOAT",
    "FOR",
    "FOREIGN",
    "FOUND",
    "FROM",
    "FULL",
    "GET",
    "GLOBAL",
    "GO",
    "GOTO",
    "GRANT",
    "GROUP",
    "HAVING",
    "HOUR",
    "IDENTITY",
    "IMMEDIATE",
    "IN",
    "INDICATOR",
    "INITIALLY",
    "INNER",
    "INPUT",
    "INSENSITIVE",
    "INSERT",
    "INT",
    "INTEGER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISOLATION",
    "JOIN",
    "KEY",
    "LANGUAGE",
    "LAST",
    "LEADING",
    "LEFT",
    "LEVEL",
    "LIKE",
    "LOCAL",
    "LOWER",
    "MATCH",
    "MAX",
    "MIN",
    "MINUTE",
    "MODULE",
    "MONTH",
    "NAMES",
    "NATIONAL",
    "NATURAL",
    "NCHAR",
    "NEXT",
    "NO",
    "NOT",
    "NULL",
    "NULLIF",
    "NUMERIC",
    "OCTET_LENGTH",
    "OF",
    "ON",
    "ONLY",
    "OPEN",
    "OPTION",
    "OR",
    "ORDER",
    "OUTER",
    "OUTPUT",
    "OVERLAPS",
    "PAD",
    "PARTIAL",
    "POSITION",
    "PRECISION",
    "PREPARE",
    "PRESERVE",
    "PRIMARY",
    "PRIOR",
    "PRIVILEGES",
    "PROCEDURE",
    "PUBLIC",
    "READ",
    "REAL",
    "REFERENCES",
    "RELATIVE",
    "RESTRICT",
    "REVOKE",
    "RIGHT",
    "ROLLBACK",
    "ROWS",
    "SCHEMA",
    "SCROLL",
    "SECOND",
    "SECTION",
    "SELECT",
    "SESSION",
    "SESSION_USER",
    "SET",
    "SIZE",
    "SMALLINT",
    "SOME",
    "SPACE",
    "SQL",
    "SQLCODE",
    "SQLERROR",
    "SQLSTATE",
    "SUBSTRING",
    "SUM",
    "SYSTEM_USER",
    "TABLE",
    "TEMPORARY",
    "THEN",
    "TIME",
    "TIMESTAMP",
    "TIMEZONE_HOUR",
    "TIMEZONE_MINUTE",
    "TO",
    "TRAILING",
    "TRANSACTION",
    "TRANSLATE",
    "TRANSLATION",
    "TRIM",
    "TRUE",
    "UNION",
    "UNIQUE",
    "UNKNOWN",
    "UPDATE",
    "UPPER",
    "USAGE",
    "USER",
    "USING",
    "VALUE",
    "VALUES",
    "VARCHAR",
    "VARYING",
    "VIEW",
    "WHEN",
    "WHENEVER",
    "WHERE",
    "WITH",
    "WORK",
    "WRITE",
    "YEAR",
    "ZONE",
];

/// SQL reserved words that are called like functions.
const SQL_FUNCTIONS: &[&str] = &[
    "AVG",
    "COUNT",
    "MAX",
    "MIN",
    "SUM",
    "COALESCE",
    "NULLIF",
    "LOWER",
    "UPPER",
    "TRIM",
    "CHAR_LENGTH",
    "CHARACTER_LENGTH",
    "OCTET_LENGTH",
    "SUBSTRING",
    "POSITION",
];

/// Whether an unquoted word is one that is called like a function.
fn is_function_keyword(up: &str) -> bool {
    ADQL_FUNCTIONS.contains(&up) || SQL_FUNCTIONS.contains(&up)
}

/// Whether an unquoted word is reserved.
pub fn is_reserved(word: &str) -> bool {
    let up = word.to_ascii_uppercase();
    let up = up.as_str();
    ADQL_FUNCTIONS.contains(&up) || ADQL_KEYWORDS.contains(&up) || SQL_RESERVED.contains(&up)
}

/// How deeply a query may nest: parentheses, subqueries, function arguments, NOT and
/// unary signs, each counting one level, and each operator of a chain such as `a + b + c`
/// one more (the tree it builds is that deep). Real queries stay far below; the limit keeps
/// the recursion of the parser, the validator, the translator and DataFusion's planner
/// within the stack of the thread that plans.
pub const MAX_DEPTH: usize = 200;

/// The most items an `IN (...)` list, a select list or a chain of `AND` or `OR` may hold.
/// Chains of `AND`/`OR` are built balanced (a list of ids as `id = 1 OR id = 2 OR ...` is
/// only log2(n) deep), so this bounds work, not recursion.
pub const MAX_LIST_ITEMS: usize = 100_000;

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Current nesting, against [`MAX_DEPTH`].
    depth: usize,
}

/// Parses one ADQL query (a trailing `;` is allowed).
pub fn parse_query(text: &str) -> Result<Query> {
    let mut p = Parser {
        toks: tokenize(text)?,
        pos: 0,
        depth: 0,
    };
    let q = p.query(true)?;
    p.eat_sym(";");
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.unexpected("the end of the query"));
    }
    Ok(q)
}

/// `terms` joined by `op` into a balanced tree; `spans[i]` is where the operator after
/// `terms[i]` was.
fn balanced(mut terms: Vec<Expr>, spans: &[Span], op: BinaryOp) -> Expr {
    if terms.len() == 1 {
        return terms.pop().expect("one term");
    }
    let mid = terms.len() / 2;
    let right = terms.split_off(mid);
    Expr::Binary {
        op,
        left: Box::new(balanced(terms, &spans[..mid - 1], op)),
        right: Box::new(balanced(right, &spans[mid..], op)),
        span: spans[mid - 1],
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Quoted(w) => format!("\"{w}\""),
        Tok::Number(n) => format!("number {n}"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Eof => "the end of the query".into(),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].tok
    }

    fn span(&self) -> Span {
        self.toks[self.pos].span
    }

    /// One level deeper (`n` levels for a chain); an error past [`MAX_DEPTH`].
    fn enter(&mut self, n: usize) -> Result<()> {
        self.depth += n;
        if self.depth > MAX_DEPTH {
            return Err(Error::Syntax {
                span: self.span(),
                message: format!(
                    "the query nests too deeply here (more than {MAX_DEPTH} levels of \
                     parentheses, subqueries, function calls or chained operators)"
                ),
            });
        }
        Ok(())
    }

    fn leave(&mut self, n: usize) {
        self.depth -= n;
    }

    /// An error unless a list may grow to `len` items.
    fn check_list(&self, len: usize, what: &str) -> Result<()> {
        if len > MAX_LIST_ITEMS {
            return Err(Error::Syntax {
                span: self.span(),
                message: format!("{what} has more than {MAX_LIST_ITEMS} items"),
            });
        }
        Ok(())
    }

    fn advance(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self, expected: &str) -> Error {
        Error::Syntax {
            span: self.span(),
            message: format!("expected {expected}, found {}", describe(self.peek())),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn is_kw_at(&self, k: usize, kw: &str) -> bool {
        matches!(self.peek_at(k), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(kw))
        }
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<()> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{s}'")))
        }
    }

    /// An identifier (regular, not reserved, or delimited).
    fn ident(&mut self, what: &str) -> Result<Ident> {
        let span = self.span();
        match self.peek().clone() {
            Tok::Word(w) if is_reserved(&w) => Err(Error::Syntax {
                span,
                message: format!(
                    "'{w}' is a reserved word and cannot be used as {what}; write it as \"{w}\" if it is a name"
                ),
            }),
            Tok::Word(w) => {
                self.advance();
                Ok(Ident {
                    value: w,
                    quoted: false,
                    span,
                })
            }
            Tok::Quoted(w) => {
                self.advance();
                Ok(Ident {
                    value: w,
                    quoted: true,
                    span,
                })
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn is_ident_start(&self) -> bool {
        match self.peek() {
            Tok::Word(w) => !is_reserved(w),
            Tok::Quoted(_) => true,
            _ => false,
        }
    }

    fn unsigned_integer(&mut self, what: &str) -> Result<u64> {
        let span = self.span();
        match self.peek().clone() {
            Tok::Number(n) => {
                let v = if let Some(h) = n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
                    u64::from_str_radix(h, 16).ok()
                } else {
                    n.parse::<u64>().ok()
                };
                let v = v.ok_or_else(|| Error::Syntax {
                    span,
                    message: format!("{what} must be a non-negative integer, found {n}"),
                })?;
                self.advance();
                Ok(v)
            }
            _ => Err(self.unexpected(&format!("{what} (a non-negative integer)"))),
        }
    }

    // ---- queries ----

    /// A query; `WITH` is allowed only at the outermost level (`top`).
    fn query(&mut self, top: bool) -> Result<Query> {
        self.enter(1)?;
        let q = self.query_body(top);
        self.leave(1);
        q
    }

    fn query_body(&mut self, top: bool) -> Result<Query> {
        let mut with = Vec::new();
        if self.is_kw("WITH") && !top {
            return Err(Error::Syntax {
                span: self.span(),
                message: "WITH is only allowed at the start of the whole query, not in a subquery"
                    .into(),
            });
        }
        if self.eat_kw("WITH") {
            loop {
                let name = self.ident("a common table expression name")?;
                let mut columns = Vec::new();
                if self.eat_sym("(") {
                    loop {
                        columns.push(self.ident("a column name")?);
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    self.expect_sym(")")?;
                }
                self.expect_kw("AS")?;
                self.expect_sym("(")?;
                let query = Box::new(self.query(false)?);
                self.expect_sym(")")?;
                with.push(Cte {
                    name,
                    columns,
                    query,
                });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let body = self.set_expr()?;
        let mut order_by = Vec::new();
        if self.eat_kw("ORDER") {
            self.expect_kw("BY")?;
            loop {
                let expr = self.expr()?;
                let descending = if self.eat_kw("DESC") {
                    true
                } else {
                    self.eat_kw("ASC");
                    false
                };
                order_by.push(OrderItem { expr, descending });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let offset = if self.eat_kw("OFFSET") {
            Some(self.unsigned_integer("OFFSET")?)
        } else {
            None
        };
        Ok(Query {
            with,
            body,
            order_by,
            offset,
        })
    }

    fn set_expr(&mut self) -> Result<SetExpr> {
        let mut left = self.set_term()?;
        let mut levels = 0;
        loop {
            let op = if self.is_kw("UNION") {
                SetOp::Union
            } else if self.is_kw("EXCEPT") {
                SetOp::Except
            } else {
                break;
            };
            self.advance();
            let all = self.eat_kw("ALL");
            if !all {
                self.eat_kw("DISTINCT");
            }
            self.enter(1)?;
            levels += 1;
            let right = self.set_term()?;
            left = SetExpr::SetOp {
                op,
                all,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        self.leave(levels);
        Ok(left)
    }

    fn set_term(&mut self) -> Result<SetExpr> {
        let mut left = self.set_primary()?;
        let mut levels = 0;
        while self.eat_kw("INTERSECT") {
            let all = self.eat_kw("ALL");
            if !all {
                self.eat_kw("DISTINCT");
            }
            self.enter(1)?;
            levels += 1;
            let right = self.set_primary()?;
            left = SetExpr::SetOp {
                op: SetOp::Intersect,
                all,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        self.leave(levels);
        Ok(left)
    }

    fn set_primary(&mut self) -> Result<SetExpr> {
        if self.is_sym("(") {
            self.advance();
            let q = self.query(false)?;
            self.expect_sym(")")?;
            return Ok(SetExpr::Query(Box::new(q)));
        }
        Ok(SetExpr::Select(Box::new(self.select()?)))
    }

    fn select(&mut self) -> Result<Select> {
        let span = self.span();
        self.expect_kw("SELECT")?;
        let distinct = if self.eat_kw("DISTINCT") {
            true
        } else {
            self.eat_kw("ALL");
            false
        };
        let top = if self.eat_kw("TOP") {
            Some(self.unsigned_integer("TOP")?)
        } else {
            None
        };
        let mut items = Vec::new();
        loop {
            self.check_list(items.len() + 1, "the select list")?;
            items.push(self.select_item()?);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_kw("FROM")?;
        let mut from = Vec::new();
        loop {
            from.push(self.table_ref()?);
            if !self.eat_sym(",") {
                break;
            }
        }
        let selection = if self.eat_kw("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat_kw("GROUP") {
            self.expect_kw("BY")?;
            loop {
                group_by.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let having = if self.eat_kw("HAVING") {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Select {
            distinct,
            top,
            items,
            from,
            selection,
            group_by,
            having,
            span,
        })
    }

    fn select_item(&mut self) -> Result<SelectItem> {
        if self.eat_sym("*") {
            return Ok(SelectItem::Wildcard);
        }
        // t.* and s.t.*
        let save = self.pos;
        if self.is_ident_start() {
            let mut parts = vec![self.ident("a table name")?];
            while self.is_sym(".") {
                self.advance();
                if self.eat_sym("*") {
                    return Ok(SelectItem::QualifiedWildcard(ObjectName(parts)));
                }
                if !self.is_ident_start() {
                    break;
                }
                parts.push(self.ident("a name")?);
            }
            self.pos = save;
        }
        let expr = self.expr()?;
        let alias = if self.eat_kw("AS") || self.is_ident_start() {
            Some(self.ident("a column alias")?)
        } else {
            None
        };
        Ok(SelectItem::Expr { expr, alias })
    }

    fn table_ref(&mut self) -> Result<TableRef> {
        let mut left = self.table_primary()?;
        // Each join makes the tree one level deeper (errors end the parse, so only the
        // successful path needs to give the levels back).
        let mut levels = 0;
        loop {
            let natural = self.eat_kw("NATURAL");
            let kind = if self.eat_kw("CROSS") {
                JoinKind::Cross
            } else if self.eat_kw("INNER") {
                JoinKind::Inner
            } else if self.eat_kw("LEFT") {
                self.eat_kw("OUTER");
                JoinKind::Left
            } else if self.eat_kw("RIGHT") {
                self.eat_kw("OUTER");
                JoinKind::Right
            } else if self.eat_kw("FULL") {
                self.eat_kw("OUTER");
                JoinKind::Full
            } else if self.is_kw("JOIN") {
                JoinKind::Inner
            } else if natural {
                return Err(self.unexpected("JOIN after NATURAL"));
            } else {
                break;
            };
            self.expect_kw("JOIN")?;
            self.enter(1)?;
            levels += 1;
            if natural && kind == JoinKind::Cross {
                return Err(self.unexpected("a join type other than CROSS after NATURAL"));
            }
            let right = self.table_primary()?;
            let constraint = if natural || kind == JoinKind::Cross {
                JoinConstraint::None
            } else if self.eat_kw("ON") {
                JoinConstraint::On(self.expr()?)
            } else if self.eat_kw("USING") {
                self.expect_sym("(")?;
                let mut cols = Vec::new();
                loop {
                    cols.push(self.ident("a column name")?);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
                self.expect_sym(")")?;
                JoinConstraint::Using(cols)
            } else {
                // ADQL makes the join specification optional: no condition.
                JoinConstraint::None
            };
            left = TableRef::Join {
                left: Box::new(left),
                right: Box::new(right),
                kind,
                natural,
                constraint,
            };
        }
        self.leave(levels);
        Ok(left)
    }

    fn table_primary(&mut self) -> Result<TableRef> {
        self.enter(1)?;
        let t = self.table_primary_body();
        self.leave(1);
        t
    }

    fn table_primary_body(&mut self) -> Result<TableRef> {
        if self.is_sym("(") {
            // A derived table (subquery) or a parenthesised join.
            let is_query = self.is_kw_at(1, "SELECT")
                || self.is_kw_at(1, "WITH")
                || matches!(self.peek_at(1), Tok::Sym("("));
            self.advance();
            if is_query {
                let save = self.pos;
                match self.query(false) {
                    Ok(q) => {
                        self.expect_sym(")")?;
                        self.eat_kw("AS");
                        let alias =
                            self.ident("a correlation name for the subquery (ADQL requires one)")?;
                        return Ok(TableRef::Derived {
                            query: Box::new(q),
                            alias,
                        });
                    }
                    Err(e) if !matches!(self.toks[save].tok, Tok::Sym("(")) => return Err(e),
                    Err(_) => self.pos = save,
                }
            }
            let inner = self.table_ref()?;
            self.expect_sym(")")?;
            return Ok(inner);
        }
        let mut parts = vec![self.ident("a table name")?];
        while self.eat_sym(".") {
            parts.push(self.ident("a table name")?);
        }
        if parts.len() > 3 {
            return Err(Error::Syntax {
                span: parts[0].span,
                message: format!(
                    "table name {} has more than three parts (catalog.schema.table)",
                    ObjectName(parts)
                ),
            });
        }
        let alias = if self.eat_kw("AS") || self.is_ident_start() {
            Some(self.ident("a correlation name")?)
        } else {
            None
        };
        Ok(TableRef::Table {
            name: ObjectName(parts),
            alias,
        })
    }

    // ---- expressions ----

    fn expr(&mut self) -> Result<Expr> {
        self.enter(1)?;
        let e = self.or_expr();
        self.leave(1);
        e
    }

    fn or_expr(&mut self) -> Result<Expr> {
        self.logical_chain("OR", BinaryOp::Or, Self::and_expr)
    }

    fn and_expr(&mut self) -> Result<Expr> {
        self.logical_chain("AND", BinaryOp::And, Self::not_expr)
    }

    /// `term (kw term)*` as a balanced tree: AND and OR are associative, and a balanced
    /// tree of n terms is log2(n) deep where the usual left-deep one is n deep.
    fn logical_chain(
        &mut self,
        kw: &str,
        op: BinaryOp,
        next: fn(&mut Self) -> Result<Expr>,
    ) -> Result<Expr> {
        let mut terms = vec![next(self)?];
        let mut spans = Vec::new();
        while self.is_kw(kw) {
            spans.push(self.advance().span);
            self.check_list(terms.len() + 1, &format!("a chain of {kw}"))?;
            terms.push(next(self)?);
        }
        Ok(balanced(terms, &spans, op))
    }

    fn not_expr(&mut self) -> Result<Expr> {
        if self.is_kw("NOT") {
            let span = self.advance().span;
            self.enter(1)?;
            let expr = self.not_expr();
            self.leave(1);
            let expr = expr?;
            return Ok(Expr::Unary {
                op: UnaryOp::Not,
                expr: Box::new(expr),
                span,
            });
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr> {
        if self.is_kw("EXISTS") {
            let span = self.advance().span;
            self.expect_sym("(")?;
            let q = self.query(false)?;
            self.expect_sym(")")?;
            return Ok(Expr::Exists(Box::new(q), span));
        }
        let left = self.bitor_expr()?;
        let cmp = match self.peek() {
            Tok::Sym("=") => Some(BinaryOp::Eq),
            Tok::Sym("<>") | Tok::Sym("!=") => Some(BinaryOp::NotEq),
            Tok::Sym("<") => Some(BinaryOp::Lt),
            Tok::Sym("<=") => Some(BinaryOp::LtEq),
            Tok::Sym(">") => Some(BinaryOp::Gt),
            Tok::Sym(">=") => Some(BinaryOp::GtEq),
            _ => None,
        };
        if let Some(op) = cmp {
            let span = self.advance().span;
            let right = self.bitor_expr()?;
            return Ok(Expr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
                span,
            });
        }
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            self.expect_kw("NULL")?;
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let negated = if self.is_kw("NOT")
            && (self.is_kw_at(1, "BETWEEN")
                || self.is_kw_at(1, "LIKE")
                || self.is_kw_at(1, "ILIKE")
                || self.is_kw_at(1, "IN"))
        {
            self.advance();
            true
        } else {
            false
        };
        if self.eat_kw("BETWEEN") {
            let low = self.bitor_expr()?;
            self.expect_kw("AND")?;
            let high = self.bitor_expr()?;
            return Ok(Expr::Between {
                expr: Box::new(left),
                negated,
                low: Box::new(low),
                high: Box::new(high),
            });
        }
        if self.is_kw("LIKE") || self.is_kw("ILIKE") {
            let case_insensitive = self.is_kw("ILIKE");
            self.advance();
            let pattern = self.bitor_expr()?;
            return Ok(Expr::Like {
                expr: Box::new(left),
                negated,
                case_insensitive,
                pattern: Box::new(pattern),
            });
        }
        if self.eat_kw("IN") {
            self.expect_sym("(")?;
            if self.is_kw("SELECT") || self.is_kw("WITH") {
                let q = self.query(false)?;
                self.expect_sym(")")?;
                return Ok(Expr::InSubquery {
                    expr: Box::new(left),
                    negated,
                    query: Box::new(q),
                });
            }
            let mut list = Vec::new();
            loop {
                self.check_list(list.len() + 1, "the IN list")?;
                list.push(self.bitor_expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")")?;
            return Ok(Expr::InList {
                expr: Box::new(left),
                negated,
                list,
            });
        }
        if negated {
            return Err(self.unexpected("BETWEEN, LIKE, ILIKE or IN after NOT"));
        }
        Ok(left)
    }

    fn binary_level(
        &mut self,
        ops: &[(&'static str, BinaryOp)],
        next: fn(&mut Self) -> Result<Expr>,
    ) -> Result<Expr> {
        let mut left = next(self)?;
        // Each operator makes the tree one level deeper.
        let mut levels = 0;
        while let Some((_, op)) = ops.iter().find(|(s, _)| self.is_sym(s)) {
            let op = *op;
            let span = self.advance().span;
            // Errors end the parse: only the successful path gives the levels back.
            self.enter(1)?;
            levels += 1;
            let right = next(self)?;
            left = Expr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
                span,
            };
        }
        self.leave(levels);
        Ok(left)
    }

    fn bitor_expr(&mut self) -> Result<Expr> {
        self.binary_level(&[("|", BinaryOp::BitOr)], Self::bitxor_expr)
    }

    fn bitxor_expr(&mut self) -> Result<Expr> {
        self.binary_level(&[("^", BinaryOp::BitXor)], Self::bitand_expr)
    }

    fn bitand_expr(&mut self) -> Result<Expr> {
        self.binary_level(&[("&", BinaryOp::BitAnd)], Self::concat_expr)
    }

    fn concat_expr(&mut self) -> Result<Expr> {
        self.binary_level(&[("||", BinaryOp::Concat)], Self::additive)
    }

    fn additive(&mut self) -> Result<Expr> {
        self.binary_level(
            &[("+", BinaryOp::Plus), ("-", BinaryOp::Minus)],
            Self::multiplicative,
        )
    }

    fn multiplicative(&mut self) -> Result<Expr> {
        self.binary_level(
            &[
                ("*", BinaryOp::Multiply),
                ("/", BinaryOp::Divide),
                ("%", BinaryOp::Modulo),
            ],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Result<Expr> {
        let span = self.span();
        let op = if self.eat_sym("-") {
            Some(UnaryOp::Minus)
        } else if self.eat_sym("+") {
            Some(UnaryOp::Plus)
        } else if self.eat_sym("~") {
            Some(UnaryOp::BitNot)
        } else {
            None
        };
        match op {
            Some(op) => {
                self.enter(1)?;
                let expr = self.unary();
                self.leave(1);
                let expr = expr?;
                Ok(Expr::Unary {
                    op,
                    expr: Box::new(expr),
                    span,
                })
            }
            None => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr> {
        let span = self.span();
        match self.peek().clone() {
            Tok::Number(n) => {
                self.advance();
                Ok(Expr::Literal(Literal::Number(n), span))
            }
            Tok::Str(s) => {
                self.advance();
                Ok(Expr::Literal(Literal::String(s), span))
            }
            Tok::Sym("(") => {
                self.advance();
                if self.is_kw("SELECT") || self.is_kw("WITH") {
                    let q = self.query(false)?;
                    self.expect_sym(")")?;
                    return Ok(Expr::Subquery(Box::new(q), span));
                }
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(Expr::Nested(Box::new(e)))
            }
            Tok::Word(w) => {
                let up = w.to_ascii_uppercase();
                match up.as_str() {
                    "NULL" => {
                        self.advance();
                        Ok(Expr::Literal(Literal::Null, span))
                    }
                    "TRUE" | "FALSE" => {
                        self.advance();
                        Ok(Expr::Literal(Literal::Boolean(up == "TRUE"), span))
                    }
                    "CASE" => self.case_expr(),
                    "CAST" => self.cast_expr(),
                    _ if matches!(self.peek_at(1), Tok::Sym("("))
                        && (!is_reserved(&w) || is_function_keyword(&up)) =>
                    {
                        self.function_call()
                    }
                    _ if is_reserved(&w) => Err(Error::Syntax {
                        span,
                        message: if is_function_keyword(&up) {
                            format!(
                                "'{w}' is a function: call it as {up}(...), or write \"{w}\" for a column of that name"
                            )
                        } else {
                            format!(
                                "unexpected reserved word '{w}' (write \"{w}\" if it is a name)"
                            )
                        },
                    }),
                    _ => self.column_ref(),
                }
            }
            Tok::Quoted(_) => self.column_ref(),
            _ => Err(self.unexpected("an expression")),
        }
    }

    fn column_ref(&mut self) -> Result<Expr> {
        let mut parts = vec![self.ident("a column name")?];
        while self.is_sym(".") {
            self.advance();
            parts.push(self.ident("a column name")?);
        }
        if parts.len() > 4 {
            return Err(Error::Syntax {
                span: parts[0].span,
                message: format!(
                    "column reference {} has too many parts (at most catalog.schema.table.column)",
                    ObjectName(parts)
                ),
            });
        }
        Ok(Expr::Column(ObjectName(parts)))
    }

    fn function_call(&mut self) -> Result<Expr> {
        let span = self.span();
        let Tok::Word(w) = self.advance().tok else {
            unreachable!("checked by the caller")
        };
        let name = Ident {
            value: w,
            quoted: false,
            span,
        };
        self.expect_sym("(")?;
        let mut args = Vec::new();
        let (mut star, mut distinct) = (false, false);
        if self.eat_sym("*") {
            star = true;
        } else if !self.is_sym(")") {
            if self.eat_kw("DISTINCT") {
                distinct = true;
            } else {
                self.eat_kw("ALL");
            }
            loop {
                self.check_list(args.len() + 1, "the argument list")?;
                args.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        self.expect_sym(")")?;
        Ok(Expr::Function {
            name,
            args,
            star,
            distinct,
        })
    }

    fn case_expr(&mut self) -> Result<Expr> {
        let span = self.advance().span;
        let operand = if self.is_kw("WHEN") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN") {
            let cond = self.expr()?;
            self.expect_kw("THEN")?;
            let result = self.expr()?;
            whens.push((cond, result));
        }
        if whens.is_empty() {
            return Err(self.unexpected("WHEN"));
        }
        let else_result = if self.eat_kw("ELSE") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        self.expect_kw("END")?;
        Ok(Expr::Case {
            operand,
            whens,
            else_result,
            span,
        })
    }

    fn cast_expr(&mut self) -> Result<Expr> {
        let span = self.advance().span;
        self.expect_sym("(")?;
        let expr = self.expr()?;
        self.expect_kw("AS")?;
        let tspan = self.span();
        let Tok::Word(t) = self.peek().clone() else {
            return Err(self.unexpected("a type name"));
        };
        self.advance();
        let mut name = t.to_ascii_uppercase();
        if name == "DOUBLE" {
            self.expect_kw("PRECISION")?;
            name = "DOUBLE PRECISION".into();
        }
        const TYPES: [&str; 12] = [
            "SMALLINT",
            "INTEGER",
            "INT",
            "BIGINT",
            "REAL",
            "DOUBLE PRECISION",
            "CHAR",
            "VARCHAR",
            "TIMESTAMP",
            "POINT",
            "CIRCLE",
            "POLYGON",
        ];
        if !TYPES.contains(&name.as_str()) {
            return Err(Error::Syntax {
                span: tspan,
                message: format!("cannot CAST to '{t}': expected one of {}", TYPES.join(", ")),
            });
        }
        let length = if self.eat_sym("(") {
            let n = self.unsigned_integer("a length")?;
            self.expect_sym(")")?;
            Some(n)
        } else {
            None
        };
        self.expect_sym(")")?;
        Ok(Expr::Cast {
            expr: Box::new(expr),
            to: TypeName { name, length },
            span,
        })
    }
}
