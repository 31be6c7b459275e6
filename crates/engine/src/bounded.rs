//! Functions whose output can be far larger than their input, held to a size limit.
//!
//! DataFusion's memory pool accounts for what operators keep (sort buffers, hash tables,
//! aggregation state), not for the arrays that scalar functions make while evaluating an
//! expression, so one short query such as `SELECT repeat('x', 200000000) FROM
//! generate_series(1, 10)` could take gigabytes the pool never sees. The functions that
//! multiply their input (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`, `concat`,
//! `concat_ws`, `array_repeat`, `array_resize`, `range`/`generate_series` as list
//! functions) are replaced here by wrappers that estimate the bytes a call would make,
//! from its arguments and before calling it, and refuse a call over [`MAX_VALUE_BYTES`]
//! for one value or [`MAX_BATCH_BYTES`] for one batch. Written by hand: DataFusion offers
//! no hook to bound a function's output.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err, resources_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// The largest value one call may make, bytes.
pub const MAX_VALUE_BYTES: u64 = 16 << 20;

/// The most bytes one call may make for one batch of rows.
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: len(s) * n.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: n characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every `from` may become `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: an empty match at every
    /// character may insert the replacement.
    RegexpReplace,
    /// `concat(a, b, ...)`: the sum of the arguments.
    Concat,
    /// `concat_ws(sep, a, b, ...)`: the sum of the arguments and a separator between each.
    ConcatWs,
    /// `array_repeat(x, n)`, `array_resize(list, n [, x])`: n elements.
    ListOfN,
    /// `range(start, stop [, step])`, `generate_series`: (stop - start) / step elements.
    Range,
}

const BOUNDED: [(&str, Growth); 11] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    ("array_repeat", Growth::ListOfN),
    ("array_resize", Growth::ListOfN),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Replaces the session's functions that multiply their input by bounded ones.
pub(crate) fn register(ctx: &SessionContext) {
    for (name, growth) in BOUNDED {
        if let Ok(inner) = datafusion::execution::FunctionRegistry::udf(ctx, name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, growth }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
}

/// One argument's per-row figures: a string's or a list's length in bytes, or an integer.
struct Column {
    values: Vec<Option<i64>>,
}

impl Column {
    fn at(&self, row: usize) -> i64 {
        let i = if self.values.len() == 1 { 0 } else { row };
        self.values.get(i).copied().flatten().unwrap_or(0)
    }
}

fn as_array(v: &ColumnarValue) -> Result<ArrayRef> {
    match v {
        ColumnarValue::Array(a) => Ok(a.clone()),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1),
    }
}

/// Byte sizes of a string, binary or list argument, row by row.
fn sizes(v: &ColumnarValue) -> Result<Column> {
    let a = as_array(v)?;
    let values = match a.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => {
            let l = arrow::compute::kernels::length::length(a.as_ref())?;
            let l = arrow::compute::cast(&l, &DataType::Int64)?;
            l.as_primitive::<Int64Type>().iter().collect()
        }
        _ => {
            // Anything else (a list, a number): its memory shared over its rows.
            let per_row = (a.get_array_memory_size() / a.len().max(1)) as i64;
            (0..a.len())
                .map(|i| (!a.is_null(i)).then_some(per_row.max(1)))
                .collect()
        }
    };
    Ok(Column { values })
}

/// An integer argument, row by row.
fn integers(v: &ColumnarValue) -> Result<Column> {
    let a = as_array(v)?;
    let a = arrow::compute::cast(&a, &DataType::Int64)?;
    Ok(Column {
        values: a.as_primitive::<Int64Type>().iter().collect(),
    })
}

fn rows(args: &ScalarFunctionArgs) -> usize {
    let arrays = args.args.iter().filter_map(|a| match a {
        ColumnarValue::Array(a) => Some(a.len()),
        ColumnarValue::Scalar(_) => None,
    });
    arrays.max().unwrap_or(1)
}

impl Bounded {
    /// The bytes each row's value would take, as an upper estimate.
    fn estimate(&self, args: &ScalarFunctionArgs) -> Result<Vec<u64>> {
        let a = &args.args;
        let n = rows(args);
        let per_row =
            |f: &dyn Fn(usize) -> i64| -> Vec<u64> { (0..n).map(|r| f(r).max(0) as u64).collect() };
        Ok(match self.growth {
            Growth::Repeat if a.len() >= 2 => {
                let (s, k) = (sizes(&a[0])?, integers(&a[1])?);
                per_row(&|r| s.at(r).saturating_mul(k.at(r)))
            }
            Growth::Pad if a.len() >= 2 => {
                let k = integers(&a[1])?;
                per_row(&|r| k.at(r).saturating_mul(4))
            }
            Growth::Replace if a.len() >= 3 => {
                let (s, from, to) = (sizes(&a[0])?, sizes(&a[1])?, sizes(&a[2])?);
                per_row(&|r| {
                    let factor = (to.at(r) / from.at(r).max(1)).max(1) + 1;
                    s.at(r).saturating_mul(factor)
                })
            }
            Growth::RegexpReplace if a.len() >= 3 => {
                let (s, to) = (sizes(&a[0])?, sizes(&a[2])?);
                per_row(&|r| (s.at(r) + 1).saturating_mul(to.at(r) + 1))
            }
            Growth::Concat | Growth::ConcatWs => {
                let cols = a.iter().map(sizes).collect::<Result<Vec<_>>>()?;
                let sep = matches!(self.growth, Growth::ConcatWs);
                per_row(&|r| {
                    let sum: i64 = cols.iter().map(|c| c.at(r)).fold(0, i64::saturating_add);
                    if sep {
                        sum.saturating_add(cols[0].at(r).saturating_mul(cols.len() as i64))
                    } else {
                        sum
                    }
                })
            }
            Growth::ListOfN if a.len() >= 2 => {
                // array_repeat(x, n) repeats x; array_resize(list, n, x) pads with x.
                let element = if a.len() > 2 { &a[2] } else { &a[0] };
                let (x, k) = (sizes(element)?, integers(&a[1])?);
                per_row(&|r| x.at(r).max(8).saturating_mul(k.at(r)))
            }
            Growth::Range => {
                if a.iter().any(|v| !v.data_type().is_integer()) {
                    return plan_err!(
                        "{} of dates or times is not available as a list function; \
                         use the table function generate_series in FROM",
                        self.inner.name()
                    );
                }
                let cols = a.iter().map(integers).collect::<Result<Vec<_>>>()?;
                per_row(&|r| {
                    let (start, stop) = match cols.len() {
                        1 => (0, cols[0].at(r)),
                        _ => (cols[0].at(r), cols[1].at(r)),
                    };
                    let step = cols.get(2).map_or(1, |c| c.at(r)).unsigned_abs().max(1);
                    let span = (stop as i128 - start as i128).unsigned_abs();
                    let elements = (span / step as u128 + 1).min(i64::MAX as u128 / 8) as i64;
                    elements.saturating_mul(8)
                })
            }
            // Too few arguments: the function's own check reports it.
            _ => Vec::new(),
        })
    }

    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let estimate = self.estimate(args)?;
        let name = self.inner.name();
        if let Some(big) = estimate.iter().find(|b| **b > MAX_VALUE_BYTES) {
            return resources_err!(
                "{name} would make a value of about {} MiB; the limit is {} MiB",
                big >> 20,
                MAX_VALUE_BYTES >> 20
            );
        }
        let total: u64 = estimate.iter().fold(0, |a, b| a.saturating_add(*b));
        if total > MAX_BATCH_BYTES {
            return resources_err!(
                "{name} would make about {} MiB for {} rows at once; the limit is {} MiB",
                total >> 20,
                estimate.len(),
                MAX_BATCH_BYTES >> 20
            );
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.inner().aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.inner().invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // concat's own simplification folds literal arguments into one literal, without
        // this check: keep only simplifications that still call this function or make no
        // literal larger than the limit.
        match self.inner.inner().simplify(args, info)? {
            ExprSimplifyResult::Simplified(Expr::Literal(ScalarValue::Utf8(Some(s)), _))
                if s.len() as u64 > MAX_VALUE_BYTES =>
            {
                resources_err!(
                    "{} would make a value over {} MiB; the limit is {} MiB",
                    self.name(),
                    MAX_VALUE_BYTES >> 20,
                    MAX_VALUE_BYTES >> 20
                )
            }
            other => Ok(other),
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, q: &str) -> Result<Vec<arrow::record_batch::RecordBatch>> {
        ctx.sql(q).await?.collect().await
    }

    #[tokio::test]
    async fn amplifying_functions_are_bounded_and_small_calls_work() {
        let ctx = SessionContext::new();
        register(&ctx);
        for q in [
            "SELECT repeat('ab', 3) AS v",
            "SELECT lpad('7', 5, '0') AS v",
            "SELECT replace('abc', 'b', 'xyz') AS v",
            "SELECT concat('a', 'b', 'c') AS v",
            "SELECT array_repeat(1, 4) AS v",
            "SELECT range(1, 10) AS v",
            "SELECT SUM(LENGTH(repeat('x', 1000))) FROM generate_series(1, 100000)",
        ] {
            run(&ctx, q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        let b = run(&ctx, "SELECT repeat('ab', 3) AS v").await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&b)
                .unwrap()
                .to_string()
                .lines()
                .nth(3),
            Some("| ababab |")
        );
        for q in [
            "SELECT SUM(LENGTH(s)) FROM (SELECT repeat('x', 200000000) AS s FROM generate_series(1, 10))",
            "SELECT SUM(LENGTH(repeat(CAST(value AS VARCHAR), 1000000))) FROM generate_series(1, 100000)",
            "SELECT SUM(LENGTH(s)) FROM (SELECT lpad('x', 100000000) AS s FROM generate_series(1, 10))",
            "SELECT SUM(LENGTH(s)) FROM (SELECT rpad(CAST(value AS VARCHAR), 100000000, 'x') AS s FROM generate_series(1, 10))",
            "SELECT cardinality(array_repeat(value, 100000000)) FROM generate_series(1, 10)",
            "SELECT cardinality(range(0, 1000000000)) FROM generate_series(1, 3)",
            "SELECT cardinality(range(value, 1000000000)) FROM generate_series(1, 3)",
        ] {
            let e = run(&ctx, q).await.expect_err(q).to_string();
            assert!(e.contains("the limit is"), "{q}: {e}");
        }
    }
}
