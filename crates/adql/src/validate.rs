//! Checks a parsed query against ADQL's rules that the grammar alone does not catch:
//! known functions and their arities, conditions that are predicates, and geometry,
//! string and numeric values each used where ADQL allows them.

use crate::ast::*;
use crate::functions::{FunctionRegistry, Kind};
use crate::{Error, Result, Span};

/// Validates `q` against the functions in `functions`.
pub fn validate(q: &Query, functions: &FunctionRegistry) -> Result<()> {
    Validator { functions }.query(q)
}

struct Validator<'a> {
    functions: &'a FunctionRegistry,
}

fn semantic(span: Span, message: impl Into<String>) -> Error {
    Error::Semantic {
        span,
        message: message.into(),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Numeric => "a number",
        Kind::String => "a string",
        Kind::Geometry => "a geometry",
        Kind::Boolean => "a condition",
        Kind::Any => "a value",
    }
}

/// The expression inside any parentheses.
fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        other => other,
    }
}

impl Validator<'_> {
    fn query(&self, q: &Query) -> Result<()> {
        for cte in &q.with {
            self.query(&cte.query)?;
        }
        self.set_expr(&q.body)?;
        for o in &q.order_by {
            self.value(&o.expr)?;
        }
        Ok(())
    }

    fn set_expr(&self, s: &SetExpr) -> Result<()> {
        match s {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::SetOp { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            SetExpr::Query(q) => self.query(q),
        }
    }

    fn select(&self, s: &Select) -> Result<()> {
        for item in &s.items {
            if let SelectItem::Expr { expr, .. } = item {
                self.value(expr)?;
            }
        }
        for t in &s.from {
            self.table(t)?;
        }
        if let Some(w) = &s.selection {
            self.condition(w, "WHERE")?;
        }
        for g in &s.group_by {
            self.value(g)?;
        }
        if let Some(h) = &s.having {
            self.condition(h, "HAVING")?;
        }
        Ok(())
    }

    fn table(&self, t: &TableRef) -> Result<()> {
        match t {
            TableRef::Table { .. } => Ok(()),
            TableRef::Derived { query, .. } => self.query(query),
            TableRef::Join {
                left,
                right,
                constraint,
                ..
            } => {
                self.table(left)?;
                self.table(right)?;
                if let JoinConstraint::On(e) = constraint {
                    self.condition(e, "ON")?;
                }
                Ok(())
            }
        }
    }

    /// An expression that must be a predicate.
    fn condition(&self, e: &Expr, clause: &str) -> Result<()> {
        let k = self.kind(e)?;
        if k != Kind::Boolean {
            let hint = match e {
                Expr::Function { name, .. }
                    if ["CONTAINS", "INTERSECTS"]
                        .iter()
                        .any(|f| name.value.eq_ignore_ascii_case(f)) =>
                {
                    format!(
                        "; ADQL writes it as 1 = {}(...)",
                        name.value.to_ascii_uppercase()
                    )
                }
                _ => String::new(),
            };
            return Err(semantic(
                e.span(),
                format!(
                    "{clause} needs a condition, but this is {}{hint}",
                    kind_name(k)
                ),
            ));
        }
        Ok(())
    }

    /// An expression used as a value (not a bare predicate).
    fn value(&self, e: &Expr) -> Result<Kind> {
        let k = self.kind(e)?;
        if k == Kind::Boolean && !matches!(e, Expr::Literal(Literal::Boolean(_), _)) {
            return Err(semantic(
                e.span(),
                "a condition cannot be used as a value here",
            ));
        }
        Ok(k)
    }

    fn expect(&self, e: &Expr, want: Kind, what: &str) -> Result<()> {
        let k = self.value(e)?;
        if k != want && k != Kind::Any {
            return Err(semantic(
                e.span(),
                format!("{what} must be {}, not {}", kind_name(want), kind_name(k)),
            ));
        }
        Ok(())
    }

    fn not_geometry(&self, e: &Expr, what: &str) -> Result<Kind> {
        let k = self.value(e)?;
        if k == Kind::Geometry {
            return Err(semantic(e.span(), format!("{what} cannot be a geometry")));
        }
        Ok(k)
    }

    fn kind(&self, e: &Expr) -> Result<Kind> {
        use Kind::*;
        Ok(match e {
            Expr::Column(_) => Any,
            Expr::Literal(l, _) => match l {
                Literal::Number(_) => Numeric,
                Literal::String(_) => String,
                Literal::Boolean(_) => Boolean,
                Literal::Null => Any,
            },
            Expr::Nested(inner) => self.kind(inner)?,
            Expr::Unary { op, expr, .. } => match op {
                UnaryOp::Not => {
                    self.condition(expr, "NOT")?;
                    Boolean
                }
                _ => {
                    self.not_geometry(expr, "the operand of a sign")?;
                    Numeric
                }
            },
            Expr::Binary {
                op,
                left,
                right,
                span,
            } => match op {
                BinaryOp::And | BinaryOp::Or => {
                    let name = if *op == BinaryOp::And { "AND" } else { "OR" };
                    self.condition(left, name)?;
                    self.condition(right, name)?;
                    Boolean
                }
                BinaryOp::Eq | BinaryOp::NotEq => {
                    self.value(left)?;
                    self.value(right)?;
                    Boolean
                }
                BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq => {
                    self.not_geometry(left, "an ordering comparison")?;
                    self.not_geometry(right, "an ordering comparison")?;
                    Boolean
                }
                BinaryOp::Concat => {
                    for side in [left, right] {
                        let k = self.value(side)?;
                        if k == Geometry {
                            return Err(semantic(
                                *span,
                                format!("|| joins strings, but one side is {}", kind_name(k)),
                            ));
                        }
                    }
                    String
                }
                _ => {
                    for side in [left, right] {
                        let k = self.value(side)?;
                        // ADQL's grammar takes any literal as a numeric primary ('30' * 2 is
                        // valid); only geometries are excluded.
                        if k == Geometry {
                            return Err(semantic(
                                *span,
                                format!(
                                    "arithmetic needs numbers, but one side is {}",
                                    kind_name(k)
                                ),
                            ));
                        }
                    }
                    Numeric
                }
            },
            Expr::Function {
                name,
                args,
                star,
                distinct,
            } => self.function(name, args, *star, *distinct)?,
            Expr::Case {
                operand,
                whens,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.value(o)?;
                }
                let mut k = Any;
                for (cond, result) in whens {
                    if operand.is_some() {
                        self.value(cond)?;
                    } else {
                        self.condition(cond, "WHEN")?;
                    }
                    let r = self.value(result)?;
                    if k == Any {
                        k = r;
                    }
                }
                if let Some(e) = else_result {
                    self.value(e)?;
                }
                k
            }
            Expr::Cast { expr, to, span } => {
                let k = self.value(expr)?;
                let target = match to.name.as_str() {
                    "CHAR" | "VARCHAR" => String,
                    "POINT" | "CIRCLE" | "POLYGON" => Geometry,
                    "TIMESTAMP" => Any,
                    _ => Numeric,
                };
                if k == Geometry && target != Geometry || (target == Geometry && k == Numeric) {
                    return Err(semantic(
                        *span,
                        format!("cannot CAST {} to {}", kind_name(k), to.name),
                    ));
                }
                target
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                for x in [expr, low, high] {
                    self.not_geometry(x, "BETWEEN")?;
                }
                Boolean
            }
            Expr::Like { expr, pattern, .. } => {
                self.expect(expr, String, "the operand of LIKE")?;
                self.expect(pattern, String, "a LIKE pattern")?;
                Boolean
            }
            Expr::InList { expr, list, .. } => {
                self.value(expr)?;
                for x in list {
                    self.value(x)?;
                }
                Boolean
            }
            Expr::InSubquery { expr, query, .. } => {
                self.value(expr)?;
                self.query(query)?;
                Boolean
            }
            Expr::IsNull { expr, .. } => {
                self.value(expr)?;
                Boolean
            }
            Expr::Exists(q, _) => {
                self.query(q)?;
                Boolean
            }
            Expr::Subquery(q, _) => {
                self.query(q)?;
                Any
            }
        })
    }

    fn function(&self, name: &Ident, args: &[Expr], star: bool, distinct: bool) -> Result<Kind> {
        let up = name.value.to_ascii_uppercase();
        let Some(sig) = self.functions.get(&up) else {
            let best = self
                .functions
                .names()
                .map(|(n, _)| (strsim::levenshtein(&up, n), n))
                .min()
                .filter(|(d, _)| *d <= 2)
                .map(|(_, n)| format!("; did you mean {n}?"))
                .unwrap_or_default();
            return Err(semantic(
                name.span,
                format!("unknown function {}{best}", name.value),
            ));
        };
        if star && up != "COUNT" {
            return Err(semantic(
                name.span,
                format!("{up}(*) is not allowed; only COUNT(*)"),
            ));
        }
        if distinct && !sig.aggregate {
            return Err(semantic(
                name.span,
                format!("DISTINCT is only allowed in aggregate functions, not {up}"),
            ));
        }
        let n = if star { 1 } else { args.len() };
        if n < sig.min_args || n > sig.max_args {
            let expected = if sig.min_args == sig.max_args {
                format!("{}", sig.min_args)
            } else if sig.max_args == usize::MAX {
                format!("at least {}", sig.min_args)
            } else {
                format!("{} to {}", sig.min_args, sig.max_args)
            };
            return Err(semantic(
                name.span,
                format!("{up} takes {expected} argument(s), got {n}"),
            ));
        }
        let kinds: Vec<Kind> = args.iter().map(|a| self.value(a)).collect::<Result<_>>()?;
        if let Some(want) = sig.args {
            for (a, k) in args.iter().zip(&kinds) {
                let bad = match want {
                    // Numbers and strings convert; geometries do not.
                    Kind::Numeric | Kind::String => *k == Kind::Geometry,
                    // A geometry argument is any primary (a column, a literal, a function
                    // result), but not an arithmetic or string expression.
                    Kind::Geometry => matches!(strip(a), Expr::Binary { .. } | Expr::Unary { .. }),
                    _ => false,
                };
                if bad {
                    return Err(semantic(
                        a.span(),
                        format!("{up} needs {} here, not {}", kind_name(want), kind_name(*k)),
                    ));
                }
            }
        }
        self.geometry_shapes(&up, name.span, args, &kinds)?;
        Ok(sig.returns)
    }

    /// The argument shapes of the geometry constructors: an optional coordinate system
    /// string first, then either points or coordinate numbers.
    fn geometry_shapes(&self, up: &str, span: Span, args: &[Expr], kinds: &[Kind]) -> Result<()> {
        let shapes: &[&[Kind]] = match up {
            "POINT" => &[&[Kind::Numeric, Kind::Numeric]],
            "CIRCLE" => &[
                &[Kind::Geometry, Kind::Numeric],
                &[Kind::Numeric, Kind::Numeric, Kind::Numeric],
            ],
            "BOX" => &[
                &[Kind::Geometry, Kind::Numeric, Kind::Numeric],
                &[Kind::Numeric, Kind::Numeric, Kind::Numeric, Kind::Numeric],
            ],
            "DISTANCE" => &[
                &[Kind::Geometry, Kind::Geometry],
                &[Kind::Numeric, Kind::Numeric, Kind::Numeric, Kind::Numeric],
            ],
            "POLYGON" => {
                let rest = if kinds.first() == Some(&Kind::String) {
                    &kinds[1..]
                } else {
                    kinds
                };
                let all_points =
                    rest.len() >= 3 && rest.iter().all(|k| matches!(k, Kind::Geometry | Kind::Any));
                let all_coords = rest.len() >= 6
                    && rest.len() % 2 == 0
                    && rest.iter().all(|k| matches!(k, Kind::Numeric | Kind::Any));
                if !(all_points || all_coords) {
                    return Err(semantic(
                        span,
                        "POLYGON needs at least three points, or an even number (at least six) of coordinates",
                    ));
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        // A coordinate may be any non-geometry value (ADQL's grammar accepts literals of any
        // kind there); a point position needs a geometry, or a value of unknown kind.
        let fits = |shape: &[Kind], rest: &[Kind]| {
            shape.len() == rest.len()
                && shape.iter().zip(rest).all(|(want, got)| match want {
                    Kind::Numeric => *got != Kind::Geometry,
                    _ => matches!(got, Kind::Geometry | Kind::Any),
                })
        };
        // A leading string literal is the coordinate system; a leading value of unknown kind
        // (a column, NULL) may be one.
        let first_is_sys = up != "DISTANCE"
            && matches!(
                args.first().map(strip),
                Some(Expr::Literal(Literal::String(_), _))
            );
        let sys_ok = first_is_sys || (up != "DISTANCE" && kinds.first() == Some(&Kind::Any));
        let ok = shapes
            .iter()
            .any(|s| (!first_is_sys && fits(s, kinds)) || (sys_ok && fits(s, &kinds[1..])));
        if !ok {
            let forms: Vec<String> = shapes
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|k| kind_name(*k))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            return Err(semantic(
                args.first().map(|a| a.span()).unwrap_or(span),
                format!(
                    "{up} takes [a coordinate system,] then ({})",
                    forms.join(") or (")
                ),
            ));
        }
        Ok(())
    }
}
