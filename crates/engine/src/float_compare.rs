//! Comparisons of a single-precision column with a double-precision constant, without a
//! cast per row.
//!
//! `g_mag < 17.7` over a `Float32` column is planned as `CAST(g_mag AS Float64) < 17.7`:
//! every row is cast before it is compared, and the Parquet reader's statistics see a cast.
//! DataFusion moves the cast to the constant only when the constant is exact in the column's
//! type, and 17.7 is not. Between two neighbouring `f32` values `lo < c < hi` there is no
//! other, so `x < c` is `x < hi`, `x <= c` is `x <= lo`, `x > c` is `x > lo` and `x >= c` is
//! `x >= hi`, for every `f32` x (NaN too, which sorts above every number in both types).
//! Equality with an inexact constant is left as it is.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use arrow::datatypes::DataType;

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct Float32Compare;

impl OptimizerRule for Float32Compare {
    fn name(&self) -> &str {
        "meridian_float32_compare"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let schema = filter.input.schema().clone();
        plan.map_expressions(|e| e.transform_up(|e| Ok(rewrite(e, &schema))))
    }
}

/// `e` without the cast, when it is such a comparison of a column of `schema`.
fn rewrite(e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
        return Transformed::no(e);
    };
    let (cast, constant, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Cast(c), Expr::Literal(v, _)) => (c, v, *op),
        (Expr::Literal(v, _), Expr::Cast(c)) => match op.swap() {
            Some(swapped) => (c, v, swapped),
            None => return Transformed::no(e),
        },
        _ => return Transformed::no(e),
    };
    let Cast { expr, field } = cast;
    if *field.data_type() != DataType::Float64
        || !matches!(expr.as_ref(), Expr::Column(_))
        || !matches!(expr.get_type(schema), Ok(DataType::Float32))
    {
        return Transformed::no(e);
    }
    let ScalarValue::Float64(Some(c)) = constant else {
        return Transformed::no(e);
    };
    let Some(bound) = bound_f32(*c, op) else {
        return Transformed::no(e);
    };
    Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
        expr.clone(),
        op,
        Box::new(Expr::Literal(ScalarValue::Float32(Some(bound)), None)),
    )))
}

/// The `f32` constant that `x op c` can be compared with instead of `c` for every `f32` x,
/// `None` for operators other than the four inequalities when `c` is inexact, or for NaN.
fn bound_f32(c: f64, op: Operator) -> Option<f32> {
    if c.is_nan() {
        return None;
    }
    let d = c as f32;
    if d as f64 == c {
        return matches!(
            op,
            Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::Eq
                | Operator::NotEq
        )
        .then_some(d);
    }
    let (lo, hi) = if (d as f64) < c {
        (d, d.next_up())
    } else {
        (d.next_down(), d)
    };
    match op {
        Operator::Lt => Some(hi),
        Operator::LtEq | Operator::Gt => Some(lo),
        Operator::GtEq => Some(hi),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For f32 values around and between the neighbours of many constants, `x op bound`
    /// answers as `(x as f64) op c`.
    #[test]
    fn the_bound_answers_as_the_cast() {
        let constants = [
            17.7, -17.7, 0.1, 1e-50, -1e-50, 0.0, 1.5, 1e40, -1e40, 3.4e38, 16777217.0,
        ];
        for c in constants {
            let d = c as f32;
            let mut xs = vec![
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                f32::MAX,
                f32::MIN,
            ];
            for base in [d, d.next_up(), d.next_down()] {
                xs.extend([base, base.next_up(), base.next_down()]);
            }
            for op in [
                Operator::Lt,
                Operator::LtEq,
                Operator::Gt,
                Operator::GtEq,
                Operator::Eq,
            ] {
                let Some(b) = bound_f32(c, op) else {
                    assert_eq!(op, Operator::Eq);
                    continue;
                };
                for &x in &xs {
                    let want = match op {
                        Operator::Lt => (x as f64) < c,
                        Operator::LtEq => (x as f64) <= c,
                        Operator::Gt => (x as f64) > c,
                        Operator::GtEq => (x as f64) >= c,
                        _ => (x as f64) == c,
                    };
                    let got = match op {
                        Operator::Lt => x < b,
                        Operator::LtEq => x <= b,
                        Operator::Gt => x > b,
                        Operator::GtEq => x >= b,
                        _ => x == b,
                    };
                    assert_eq!(got, want, "{x} {op} {c} (bound {b})");
                }
            }
        }
    }
}
