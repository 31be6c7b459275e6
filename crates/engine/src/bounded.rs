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
use datafusion::common::DFSchema;
use datafusion::common::{Result, ScalarValue, plan_err, resources_err};
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Documentation, Expr,
    ReturnFieldArgs, ReversedUDAF, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// The largest value one call may make, bytes.
pub const MAX_VALUE_BYTES: u64 = 16 << 20;

/// The most bytes one call may make for one batch of rows.
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// The most memory one value of a gathering aggregate (`string_agg`, `array_agg`) may
/// hold, bytes. The memory pool sees an aggregate's state only between batches, and a
/// growing string doubles its buffer: without this bound one group's value could take
/// twice the pool before the pool refuses it.
pub const MAX_AGGREGATE_BYTES: usize = 64 << 20;

/// The most bytes the bounded functions may make from constants alone while one query is
/// planned: as much as the query's text may hold ([`crate::guard::MAX_QUERY_BYTES`]). Planning folds constant calls into literals, and a plan's literals are copied
/// by every optimizer pass: without this budget `repeat('a', 16000000) || repeat('b',
/// 16000000) || ...` would fill the memory before execution refused the first `||`.
pub const MAX_CONSTANT_BYTES: u64 = 1 << 20;

thread_local! {
    /// What is left of [`MAX_CONSTANT_BYTES`] on a planning thread; none elsewhere.
    static CONSTANT_BUDGET: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Gives the current thread, which plans one query, the budget of [`MAX_CONSTANT_BYTES`].
pub(crate) fn start_planning() {
    CONSTANT_BUDGET.with(|b| b.set(Some(MAX_CONSTANT_BYTES)));
}

/// Charges `bytes` made from constants by `name` to the planning thread's budget.
fn charge_constants(name: &str, bytes: u64) -> Result<()> {
    CONSTANT_BUDGET.with(|b| match b.get() {
        Some(left) if bytes > left => resources_err!(
            "{name} would make about {} MiB from constants, more than is left of the {} MiB \
             a query's constants may take",
            bytes.div_ceil(1 << 20),
            MAX_CONSTANT_BYTES >> 20
        ),
        Some(left) => {
            b.set(Some(left - bytes));
            Ok(())
        }
        None => Ok(()),
    })
}

/// The aggregates that gather their input into one value.
const GATHERING: [&str; 2] = ["string_agg", "array_agg"];

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

const BOUNDED: [(&str, Growth); 14] = [
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
    ("array_concat", Growth::Concat),
    ("array_append", Growth::Concat),
    ("array_prepend", Growth::Concat),
];

/// Replaces the session's functions that multiply their input by bounded ones, its
/// aggregates that gather their input into one value (`string_agg`, `array_agg`) by ones
/// held to [`MAX_AGGREGATE_BYTES`] a value, and plans the string operator `||` as the
/// bounded `StringConcat` (see [`ConcatPlanner`]).
pub(crate) fn register(ctx: &mut SessionContext) -> Result<()> {
    for (name, growth) in BOUNDED {
        if let Ok(inner) = datafusion::execution::FunctionRegistry::udf(ctx, name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, growth }));
        }
    }
    for name in GATHERING {
        if let Ok(inner) = datafusion::execution::FunctionRegistry::udaf(ctx, name) {
            ctx.register_udaf(AggregateUDF::new_from_impl(BoundedAggregate { inner }));
        }
    }
    datafusion::execution::FunctionRegistry::register_expr_planner(
        ctx,
        Arc::new(ConcatPlanner::new()),
    )
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

impl Growth {
    /// The bytes each row's value of `function` would take, as an upper estimate.
    fn estimate(self, function: &str, args: &ScalarFunctionArgs) -> Result<Vec<u64>> {
        let a = &args.args;
        let n = rows(args);
        let per_row =
            |f: &dyn Fn(usize) -> i64| -> Vec<u64> { (0..n).map(|r| f(r).max(0) as u64).collect() };
        Ok(match self {
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
                let sep = matches!(self, Growth::ConcatWs);
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
                        "{function} of dates or times is not available as a list function; \
                         use the table function generate_series in FROM"
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

    /// Refuses a call of `name` whose values would pass [`MAX_VALUE_BYTES`] or whose batch
    /// would pass [`MAX_BATCH_BYTES`].
    fn check(self, name: &str, args: &ScalarFunctionArgs) -> Result<()> {
        let estimate = self.estimate(name, args)?;
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            charge_constants(name, estimate.iter().fold(0, |a, b| a.saturating_add(*b)))?;
        }
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
        self.growth.check(self.inner.name(), &args)?;
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

/// Plans `a || b` on strings as [`StringConcat`], bounded as `concat` is (DataFusion's own
/// operator makes whatever its operands add up to, and a chain of them multiplies a
/// bounded value). Lists are left to DataFusion's planner for nested types, which makes
/// them `array_concat`, `array_append` or `array_prepend`, bounded above.
#[derive(Debug)]
struct ConcatPlanner {
    udf: Arc<ScalarUDF>,
}

impl ConcatPlanner {
    fn new() -> Self {
        Self {
            udf: Arc::new(ScalarUDF::new_from_impl(StringConcat::new())),
        }
    }
}

impl ExprPlanner for ConcatPlanner {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::StringConcat {
            return Ok(PlannerResult::Original(expr));
        }
        let is_list = |e: &Expr| -> Result<bool> {
            Ok(matches!(
                e.get_type(schema)?,
                DataType::List(_)
                    | DataType::LargeList(_)
                    | DataType::FixedSizeList(..)
                    | DataType::ListView(_)
                    | DataType::LargeListView(_)
            ))
        };
        if is_list(&expr.left)? || is_list(&expr.right)? {
            return Ok(PlannerResult::Original(expr));
        }
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(self.udf.clone(), vec![expr.left, expr.right]),
        )))
    }
}

/// The string operator `||`: NULL when either side is NULL (unlike `concat`), refused
/// over [`MAX_VALUE_BYTES`] a value or [`MAX_BATCH_BYTES`] a batch. Its column is named
/// `a || b`, as the operator's would be.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    signature: Signature,
}

impl StringConcat {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        "string_concat_operator"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!(
            "{} || {}",
            args[0].schema_name(),
            args[1].schema_name()
        ))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // Anything concatenates as text, in the widest string type of the two.
        let target = if arg_types.contains(&DataType::Utf8View) {
            DataType::Utf8View
        } else if arg_types.contains(&DataType::LargeUtf8) {
            DataType::LargeUtf8
        } else {
            DataType::Utf8
        };
        Ok(vec![target; arg_types.len()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return plan_err!("|| takes two operands");
        };
        Growth::Concat.check("||", &args)?;
        let n = rows(&args);
        let scalars = matches!(
            (left, right),
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
        );
        let (l, r) = (left.to_array(n)?, right.to_array(n)?);
        let out = arrow::compute::kernels::concat_elements::concat_elements_dyn(&l, &r)?;
        Ok(if scalars {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

/// An aggregate that gathers its input into one value, refused once a value's state
/// passes [`MAX_AGGREGATE_BYTES`]. Everything else is the wrapped aggregate's.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedAggregate {
    inner: Arc<AggregateUDF>,
}

impl BoundedAggregate {
    fn wrap(inner: Arc<dyn AggregateUDFImpl>) -> Arc<dyn AggregateUDFImpl> {
        Arc::new(BoundedAggregate {
            inner: Arc::new(AggregateUDF::new_from_shared_impl(inner)),
        })
    }
}

impl AggregateUDFImpl for BoundedAggregate {
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

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.inner().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.inner().is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BoundedAccumulator {
            inner: self.inner.inner().accumulator(acc_args)?,
            name: self.inner.name().to_string(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.inner().state_fields(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        Ok(self
            .inner
            .inner()
            .clone()
            .with_beneficial_ordering(beneficial_ordering)?
            .map(BoundedAggregate::wrap))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.inner().reverse_expr() {
            ReversedUDAF::Reversed(r) => ReversedUDAF::Reversed(Arc::new(
                AggregateUDF::new_from_shared_impl(BoundedAggregate::wrap(r.inner().clone())),
            )),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.inner().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

/// An accumulator refused once its state passes [`MAX_AGGREGATE_BYTES`].
#[derive(Debug)]
struct BoundedAccumulator {
    inner: Box<dyn Accumulator>,
    name: String,
}

impl BoundedAccumulator {
    fn check(&self) -> Result<()> {
        let size = self.inner.size();
        if size > MAX_AGGREGATE_BYTES {
            return resources_err!(
                "{} gathered about {} MiB into one value; the limit is {} MiB",
                self.name,
                size >> 20,
                MAX_AGGREGATE_BYTES >> 20
            );
        }
        Ok(())
    }
}

impl Accumulator for BoundedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)?;
        self.check()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.inner.evaluate()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)?;
        self.check()
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
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
        let mut ctx = SessionContext::new();
        register(&mut ctx).unwrap();
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
        // `||` keeps the operator's name and its NULLs, and works on numbers and lists.
        let b = run(
            &ctx,
            "SELECT 'a' || CAST(value AS VARCHAR), 'x' || NULL, 1 || 'b', \
             [1] || [2, 3], string_agg('x', '-'), cardinality(array_agg(value)) \
             FROM generate_series(1, 2) GROUP BY 1, 2, 3, 4 ORDER BY 1",
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(
            text.contains("Utf8(\"a\") || generate_series().value"),
            "{text}"
        );
        let line = |n: usize| text.lines().nth(n).unwrap().replace(' ', "");
        assert_eq!(line(3), "|a1||1b|[1,2,3]|x|1|", "{text}");
        // Names are those of DataFusion's operator.
        let b = run(
            &ctx,
            "SELECT upper('a' || CAST(value AS VARCHAR)) FROM generate_series(1, 2)",
        )
        .await
        .unwrap();
        assert_eq!(
            b[0].schema().field(0).name(),
            "upper(Utf8(\"a\") || generate_series().value)"
        );
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
            // A chain of `||` over bounded values, and gathering aggregates.
            &format!(
                "SELECT length({}) FROM generate_series(1, 2)",
                ["repeat(CAST(value AS VARCHAR), 4000000)"; 8].join(" || ")
            ),
            "SELECT cardinality(array_concat(array_repeat(1, 1500000), array_repeat(2, 1500000)))",
            "SELECT string_agg(repeat('x', 10000), '') FROM generate_series(1, 100000)",
            "SELECT cardinality(array_agg(value)) FROM generate_series(1, 20000000)",
        ] {
            let e = run(&ctx, q).await.expect_err(q).to_string();
            assert!(e.contains("the limit is"), "{q}: {e}");
        }
    }

    #[tokio::test]
    async fn constants_made_while_planning_share_one_budget() {
        let mut ctx = SessionContext::new();
        register(&mut ctx).unwrap();
        start_planning();
        // Within the budget: folded as usual.
        run(
            &ctx,
            "SELECT length(repeat('a', 200000) || repeat('b', 200000))",
        )
        .await
        .unwrap();
        // Sixty constants of 16 MB each: refused once the budget is spent, before the plan
        // holds them (execution then refuses the first `||` over the value limit).
        start_planning();
        let chain: Vec<String> = (0..60)
            .map(|i| format!("repeat('{}', 16000000)", char::from(b'a' + i % 26)))
            .collect();
        let q = format!("SELECT length({})", chain.join(" || "));
        let e = run(&ctx, &q).await.expect_err("a chain of large constants");
        assert!(e.to_string().contains("constants may take"), "{e}");
    }
}
