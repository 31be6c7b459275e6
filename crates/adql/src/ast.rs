//! The ADQL abstract syntax tree.

use crate::Span;

/// An identifier: regular identifiers compare case-insensitively, delimited ("quoted")
/// identifiers exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    /// The name as written (quotes removed).
    pub value: String,
    /// Whether it was a delimited identifier.
    pub quoted: bool,
    /// Where it starts.
    pub span: Span,
}

impl Ident {
    /// Whether this identifier names `other` under ADQL's case rules.
    pub fn matches(&self, other: &str) -> bool {
        if self.quoted {
            self.value == other
        } else {
            self.value.eq_ignore_ascii_case(other)
        }
    }
}

/// A dotted name: `[catalog.][schema.]table` or `[[schema.]table.]column`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectName(pub Vec<Ident>);

impl ObjectName {
    /// The last part (the table or column name).
    pub fn last(&self) -> &Ident {
        self.0.last().expect("names have at least one part")
    }

    /// Where the name starts.
    pub fn span(&self) -> Span {
        self.0[0].span
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|i| {
                if i.quoted {
                    format!("\"{}\"", i.value.replace('"', "\"\""))
                } else {
                    i.value.clone()
                }
            })
            .collect();
        f.write_str(&parts.join("."))
    }
}

/// A complete query: optional common table expressions, a set expression, ORDER BY and
/// OFFSET.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `WITH name AS (query), ...`.
    pub with: Vec<Cte>,
    /// The body.
    pub body: SetExpr,
    /// `ORDER BY`.
    pub order_by: Vec<OrderItem>,
    /// `OFFSET n`.
    pub offset: Option<u64>,
}

/// A common table expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Cte {
    /// Its name.
    pub name: Ident,
    /// Optional column names.
    pub columns: Vec<Ident>,
    /// Its query.
    pub query: Box<Query>,
}

/// A set expression.
#[derive(Debug, Clone, PartialEq)]
pub enum SetExpr {
    /// A SELECT.
    Select(Box<Select>),
    /// UNION / EXCEPT / INTERSECT.
    SetOp {
        /// The operator.
        op: SetOp,
        /// `ALL` given.
        all: bool,
        /// Left operand.
        left: Box<SetExpr>,
        /// Right operand.
        right: Box<SetExpr>,
    },
    /// A parenthesised query.
    Query(Box<Query>),
}

/// Set operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// UNION.
    Union,
    /// EXCEPT.
    Except,
    /// INTERSECT.
    Intersect,
}

/// A SELECT block.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// `DISTINCT`.
    pub distinct: bool,
    /// `TOP n`.
    pub top: Option<u64>,
    /// The select list.
    pub items: Vec<SelectItem>,
    /// FROM (tables are cross-joined when several are listed).
    pub from: Vec<TableRef>,
    /// WHERE.
    pub selection: Option<Expr>,
    /// GROUP BY.
    pub group_by: Vec<Expr>,
    /// HAVING.
    pub having: Option<Expr>,
    /// Where `SELECT` is.
    pub span: Span,
}

/// One item of the select list.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`.
    Wildcard,
    /// `t.*`.
    QualifiedWildcard(ObjectName),
    /// An expression with an optional alias.
    Expr {
        /// The expression.
        expr: Expr,
        /// `AS alias`.
        alias: Option<Ident>,
    },
}

/// An item of FROM.
#[derive(Debug, Clone, PartialEq)]
pub enum TableRef {
    /// A named table.
    Table {
        /// `[schema.]table`.
        name: ObjectName,
        /// Correlation name.
        alias: Option<Ident>,
    },
    /// `(query) AS alias`.
    Derived {
        /// The subquery.
        query: Box<Query>,
        /// Its correlation name (required by ADQL).
        alias: Ident,
    },
    /// A join.
    Join {
        /// Left side.
        left: Box<TableRef>,
        /// Right side.
        right: Box<TableRef>,
        /// Kind.
        kind: JoinKind,
        /// `NATURAL`.
        natural: bool,
        /// `ON` or `USING`.
        constraint: JoinConstraint,
    },
}

/// Join kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// INNER (the default).
    Inner,
    /// `LEFT [OUTER]`.
    Left,
    /// `RIGHT [OUTER]`.
    Right,
    /// `FULL [OUTER]`.
    Full,
    /// CROSS.
    Cross,
}

/// A join condition.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinConstraint {
    /// `ON condition`.
    On(Expr),
    /// `USING (columns)`.
    Using(Vec<Ident>),
    /// None (NATURAL or CROSS joins).
    None,
}

/// An ORDER BY item.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderItem {
    /// The expression (a column, an alias, a position or an expression).
    pub expr: Expr,
    /// `DESC`.
    pub descending: bool,
}

/// Literals.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number as written (integer, decimal, exponent or 0x hexadecimal).
    Number(String),
    /// A string.
    String(String),
    /// TRUE or FALSE.
    Boolean(bool),
    /// NULL.
    Null,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Multiply,
    /// `/`
    Divide,
    /// `%`
    Modulo,
    /// `||`
    Concat,
    /// `&`
    BitAnd,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    /// `=`
    Eq,
    /// `<>` or `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// AND
    And,
    /// OR
    Or,
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `-`
    Minus,
    /// `+`
    Plus,
    /// `~`
    BitNot,
    /// NOT
    Not,
}

/// A type name in CAST.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeName {
    /// Upper-case name (SMALLINT, INTEGER, BIGINT, REAL, DOUBLE PRECISION, CHAR, VARCHAR,
    /// TIMESTAMP, POINT, CIRCLE, POLYGON).
    pub name: String,
    /// Length for CHAR(n) / VARCHAR(n).
    pub length: Option<u64>,
}

/// Expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A column reference.
    Column(ObjectName),
    /// A literal.
    Literal(Literal, Span),
    /// A unary operation.
    Unary {
        /// Operator.
        op: UnaryOp,
        /// Operand.
        expr: Box<Expr>,
        /// Where.
        span: Span,
    },
    /// A binary operation.
    Binary {
        /// Operator.
        op: BinaryOp,
        /// Left.
        left: Box<Expr>,
        /// Right.
        right: Box<Expr>,
        /// Where the operator is.
        span: Span,
    },
    /// A function call (built-in, aggregate or user-defined); names are upper-cased for
    /// built-ins.
    Function {
        /// Name as written.
        name: Ident,
        /// Arguments.
        args: Vec<Expr>,
        /// `COUNT(*)`.
        star: bool,
        /// `COUNT(DISTINCT x)`.
        distinct: bool,
    },
    /// CASE.
    Case {
        /// `CASE operand WHEN ...` (simple form) or None (searched form).
        operand: Option<Box<Expr>>,
        /// WHEN ... THEN ...
        whens: Vec<(Expr, Expr)>,
        /// ELSE.
        else_result: Option<Box<Expr>>,
        /// Where.
        span: Span,
    },
    /// CAST(expr AS type).
    Cast {
        /// Operand.
        expr: Box<Expr>,
        /// Target type.
        to: TypeName,
        /// Where.
        span: Span,
    },
    /// `x [NOT] BETWEEN a AND b`.
    Between {
        /// Operand.
        expr: Box<Expr>,
        /// NOT.
        negated: bool,
        /// Low.
        low: Box<Expr>,
        /// High.
        high: Box<Expr>,
    },
    /// `x [NOT] LIKE|ILIKE pattern`.
    Like {
        /// Operand.
        expr: Box<Expr>,
        /// NOT.
        negated: bool,
        /// ILIKE.
        case_insensitive: bool,
        /// Pattern.
        pattern: Box<Expr>,
    },
    /// `x [NOT] IN (list)`.
    InList {
        /// Operand.
        expr: Box<Expr>,
        /// NOT.
        negated: bool,
        /// Values.
        list: Vec<Expr>,
    },
    /// `x [NOT] IN (subquery)`.
    InSubquery {
        /// Operand.
        expr: Box<Expr>,
        /// NOT.
        negated: bool,
        /// Subquery.
        query: Box<Query>,
    },
    /// `x IS [NOT] NULL`.
    IsNull {
        /// Operand.
        expr: Box<Expr>,
        /// NOT.
        negated: bool,
    },
    /// `EXISTS (subquery)`.
    Exists(Box<Query>, Span),
    /// A scalar subquery.
    Subquery(Box<Query>, Span),
    /// A parenthesised expression.
    Nested(Box<Expr>),
}

impl Expr {
    /// Where the expression starts.
    pub fn span(&self) -> Span {
        match self {
            Expr::Column(n) => n.span(),
            Expr::Literal(_, s) | Expr::Exists(_, s) | Expr::Subquery(_, s) => *s,
            Expr::Unary { span, .. } | Expr::Case { span, .. } | Expr::Cast { span, .. } => *span,
            Expr::Binary { left, .. } => left.span(),
            Expr::Function { name, .. } => name.span,
            Expr::Between { expr, .. }
            | Expr::Like { expr, .. }
            | Expr::InList { expr, .. }
            | Expr::InSubquery { expr, .. }
            | Expr::IsNull { expr, .. }
            | Expr::Nested(expr) => expr.span(),
        }
    }
}
