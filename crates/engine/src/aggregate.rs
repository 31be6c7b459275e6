//! `AVG` for grouped aggregation over HEALPix-sorted catalogs.
//!
//! Catalog files are sorted by `_healpix_29`, so a query grouping by a sky cell (or by any
//! column that follows the sort) sees long runs of rows in the same group. DataFusion's
//! grouped `AVG` adds every value straight into its group's slot, and when consecutive rows
//! share the slot each addition waits for the previous store: the aggregation of a
//! sorted catalog runs at store-forwarding latency, several times slower than the same
//! data in random order. [`RunAwareAvg`] is DataFusion's `AVG` with one change: its
//! grouped accumulator for `DOUBLE` breaks those chains. Where runs of equal group indices
//! are long, it sums each run in registers (independent lanes) and touches the group's slot
//! once per run. Where runs are short (a grouping that follows the sort only loosely, such
//! as a declination band over a HEALPix-ordered file, changes group every few rows) and
//! the groups are few, consecutive rows add into different lanes of their group's slots,
//! so that no addition waits on the one before. It also takes `REAL` (Float32) input as it
//! is, where DataFusion casts it to `DOUBLE` first (a copy of the column, 7% of an
//! aggregation of magnitudes): each value is widened as it is added, so the sums are the
//! same. Every other case (decimals, durations, `DISTINCT`, windows, ungrouped) is
//! DataFusion's own code, `REAL` input widened for it batch by batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, UInt64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions_aggregate::average::Avg;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature, TypeSignature,
};

/// DataFusion's `AVG` with a run-aware grouped accumulator for `DOUBLE` and `REAL` input.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RunAwareAvg {
    inner: Avg,
    /// DataFusion's signature with `REAL` taken as it is, ahead of its other forms (which
    /// would cast it to `DOUBLE`).
    signature: Signature,
}

impl Default for RunAwareAvg {
    fn default() -> Self {
        let inner = Avg::default();
        let theirs = &inner.signature().type_signature;
        let forms = match theirs {
            TypeSignature::OneOf(forms) => forms.clone(),
            other => vec![other.clone()],
        };
        let signature = Signature::one_of(
            std::iter::once(TypeSignature::Exact(vec![DataType::Float32]))
                .chain(forms)
                .collect(),
            inner.signature().volatility,
        );
        Self { inner, signature }
    }
}

/// The `avg` function of Meridian sessions (replaces DataFusion's under the same name).
pub fn avg_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(RunAwareAvg::default())
}

impl AggregateUDFImpl for RunAwareAvg {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        widened_accumulator(args, |a| self.inner.accumulator(a))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        match widened(args.input_fields) {
            Some(fields) => self.inner.state_fields(StateFieldsArgs {
                input_fields: &fields,
                ..args
            }),
            None => self.inner.state_fields(args),
        }
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        if matches!(
            args.expr_fields[0].data_type(),
            DataType::Float64 | DataType::Float32
        ) && args.return_field.data_type() == &DataType::Float64
        {
            return Ok(Box::new(RunAvgAccumulator::default()));
        }
        self.inner.create_groups_accumulator(args)
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        widened_accumulator(args, |a| self.inner.create_sliding_accumulator(a))
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }
}

/// The argument fields with a `REAL` argument made `DOUBLE`, for DataFusion's accumulators
/// (which take `DOUBLE`); `None` if the argument is not `REAL`.
fn widened(fields: &[FieldRef]) -> Option<Vec<FieldRef>> {
    let f = fields
        .first()
        .filter(|f| f.data_type() == &DataType::Float32)?;
    let wide = Field::new(f.name(), DataType::Float64, f.is_nullable());
    Some(vec![Arc::new(wide.with_metadata(f.metadata().clone()))])
}

/// DataFusion's accumulator made by `make`; over `REAL` input, made for `DOUBLE` and fed
/// the input widened.
fn widened_accumulator(
    args: AccumulatorArgs,
    make: impl Fn(AccumulatorArgs) -> Result<Box<dyn Accumulator>>,
) -> Result<Box<dyn Accumulator>> {
    match widened(args.expr_fields) {
        Some(fields) => Ok(Box::new(Widened(make(AccumulatorArgs {
            expr_fields: &fields,
            ..args
        })?))),
        None => make(args),
    }
}

/// The `REAL` column of `values` made `DOUBLE`.
fn widen(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    values
        .iter()
        .map(|v| Ok(arrow::compute::cast(v, &DataType::Float64)?))
        .collect()
}

/// DataFusion's accumulator of `AVG` over `DOUBLE`, fed `REAL` input widened.
#[derive(Debug)]
struct Widened(Box<dyn Accumulator>);

impl Accumulator for Widened {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(&widen(values)?)
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.evaluate()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.merge_batch(states)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.retract_batch(&widen(values)?)
    }
    fn supports_retract_batch(&self) -> bool {
        self.0.supports_retract_batch()
    }
}

/// Per-group counts and sums; a group with no count has a NULL average.
#[derive(Debug, Default)]
struct RunAvgAccumulator {
    counts: Vec<u64>,
    sums: Vec<f64>,
    /// Per-group counts and sums in [`LANES`] lanes, added into `counts` and `sums` before
    /// they are read; empty unless a batch took the per-row path.
    lane_counts: Vec<[u64; LANES]>,
    lane_sums: Vec<[f64; LANES]>,
}

/// Lanes of the per-row path: row `i` adds into lane `i % LANES` of its group, so that a
/// group's additions wait on one another only every `LANES` rows.
const LANES: usize = 4;

/// The most groups for which the per-row path keeps lanes (their memory is `LANES` times
/// the plain slots'); beyond, rows in short runs are rarely in the same group anyway.
const LANE_GROUPS: usize = 4096;

/// The mean run length from which summing runs beats the per-row lanes.
const LONG_RUN: usize = 16;

/// The sum and count of `values[i]` over the run where `valid(i)`, in eight lanes so that
/// consecutive additions do not wait on each other.
#[inline]
fn run_sum<T: Copy + Into<f64>>(values: &[T], valid: Option<impl Fn(usize) -> bool>) -> (f64, u64) {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    let base = values.len() - tail.len();
    match valid {
        None => {
            for c in chunks {
                for k in 0..8 {
                    lanes[k] += c[k].into();
                }
            }
            let tail: f64 = tail.iter().map(|&v| v.into()).sum();
            (lanes.iter().sum::<f64>() + tail, values.len() as u64)
        }
        Some(valid) => {
            let mut count = 0u64;
            for (j, c) in chunks.enumerate() {
                for k in 0..8 {
                    let ok = valid(j * 8 + k);
                    lanes[k] += if ok { c[k].into() } else { 0.0 };
                    count += ok as u64;
                }
            }
            let mut rest = 0.0;
            for (k, &v) in tail.iter().enumerate() {
                if valid(base + k) {
                    rest += v.into();
                    count += 1;
                }
            }
            (lanes.iter().sum::<f64>() + rest, count)
        }
    }
}

/// Calls `f(group, start, end)` for each maximal run of equal group indices.
#[inline]
fn for_each_run(group_indices: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let n = group_indices.len();
    let mut start = 0;
    while start < n {
        let g = group_indices[start];
        // Eight indices at a time (one vector compare), then one at a time.
        let mut end = start + 1;
        while end + 8 <= n && group_indices[end..end + 8].iter().all(|&x| x == g) {
            end += 8;
        }
        while end < n && group_indices[end] == g {
            end += 1;
        }
        f(g, start, end);
        start = end;
    }
}

/// The rows that count: not NULL and, if there is a filter, selected by it. `None` when
/// every row counts (a validity buffer without a NULL, as Parquet readers give for a
/// nullable column, is dropped: the sums then skip the per-row checks).
fn validity(nulls: Option<&NullBuffer>, filter: Option<&BooleanArray>) -> Option<NullBuffer> {
    let filter = filter.map(|f| {
        // A NULL filter value does not select the row.
        let selected = match f.nulls() {
            Some(n) => f.values() & n.inner(),
            None => f.values().clone(),
        };
        NullBuffer::new(selected)
    });
    NullBuffer::union(nulls, filter.as_ref()).filter(|v| v.null_count() > 0)
}

impl RunAvgAccumulator {
    fn add<T: Copy + Into<f64>>(
        &mut self,
        values: &[T],
        valid: Option<&NullBuffer>,
        group_indices: &[usize],
    ) {
        let total = self.sums.len();
        if total <= LANE_GROUPS && group_indices.len() >= LONG_RUN {
            let runs = 1 + group_indices.windows(2).filter(|w| w[0] != w[1]).count();
            if group_indices.len() < LONG_RUN * runs {
                self.add_per_row(values, valid, group_indices);
                return;
            }
        }
        for_each_run(group_indices, |g, start, end| {
            let run = &values[start..end];
            let (sum, count) = match valid {
                None => run_sum(run, None::<fn(usize) -> bool>),
                Some(v) => run_sum(run, Some(|i| v.is_valid(start + i))),
            };
            self.sums[g] += sum;
            self.counts[g] += count;
        });
    }

    /// Row `i` adds into lane `i % LANES` of its group.
    fn add_per_row<T: Copy + Into<f64>>(
        &mut self,
        values: &[T],
        valid: Option<&NullBuffer>,
        group_indices: &[usize],
    ) {
        let total = self.sums.len();
        self.lane_counts.resize(total, [0; LANES]);
        self.lane_sums.resize(total, [0.0; LANES]);
        let (counts, sums) = (&mut self.lane_counts, &mut self.lane_sums);
        match valid {
            None => {
                for (i, (&g, &v)) in group_indices.iter().zip(values).enumerate() {
                    let lane = i % LANES;
                    sums[g][lane] += v.into();
                    counts[g][lane] += 1;
                }
            }
            Some(valid) => {
                for (i, (&g, &v)) in group_indices.iter().zip(values).enumerate() {
                    let (lane, ok) = (i % LANES, valid.is_valid(i));
                    sums[g][lane] += if ok { v.into() } else { 0.0 };
                    counts[g][lane] += ok as u64;
                }
            }
        }
    }

    /// Adds the lanes into the plain slots and empties them.
    fn fold_lanes(&mut self) {
        for (g, (c, s)) in self
            .lane_counts
            .drain(..)
            .zip(self.lane_sums.drain(..))
            .enumerate()
        {
            self.counts[g] += c.iter().sum::<u64>();
            self.sums[g] += s.iter().sum::<f64>();
        }
    }
}

impl GroupsAccumulator for RunAvgAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.counts.resize(total_num_groups, 0);
        self.sums.resize(total_num_groups, 0.0);
        let valid = validity(values[0].nulls(), opt_filter);
        match values[0].data_type() {
            DataType::Float32 => {
                let values = values[0].as_primitive::<Float32Type>().values();
                self.add(values, valid.as_ref(), group_indices);
            }
            _ => {
                let values = values[0].as_primitive::<Float64Type>().values();
                self.add(values, valid.as_ref(), group_indices);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.fold_lanes();
        let counts = emit_to.take_needed(&mut self.counts);
        let sums = emit_to.take_needed(&mut self.sums);
        let avg: Float64Array = sums
            .iter()
            .zip(&counts)
            .map(|(&s, &c)| (c > 0).then(|| s / c as f64))
            .collect();
        Ok(Arc::new(avg))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.fold_lanes();
        let counts = emit_to.take_needed(&mut self.counts);
        let sums = emit_to.take_needed(&mut self.sums);
        // Groups that saw no value have a NULL state, as in DataFusion's own AVG.
        let nulls = NullBuffer::from_iter(counts.iter().map(|&c| c > 0));
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        Ok(vec![
            Arc::new(UInt64Array::new(counts.into(), nulls.clone())),
            Arc::new(Float64Array::new(sums.into(), nulls)),
        ])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let counts = values[0].as_primitive::<UInt64Type>();
        let sums = values[1].as_primitive::<Float64Type>();
        self.counts.resize(total_num_groups, 0);
        self.sums.resize(total_num_groups, 0.0);
        for (i, &g) in group_indices.iter().enumerate() {
            if counts.is_valid(i) && sums.is_valid(i) {
                self.counts[g] += counts.value(i);
                self.sums[g] += sums.value(i);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = arrow::compute::cast(&values[0], &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        let valid = validity(values.nulls(), opt_filter);
        let counts = UInt64Array::new(vec![1u64; values.len()].into(), valid.clone());
        let sums = Float64Array::new(values.values().clone(), valid);
        Ok(vec![Arc::new(counts), Arc::new(sums)])
    }

    fn size(&self) -> usize {
        self.counts.capacity() * size_of::<u64>()
            + self.sums.capacity() * size_of::<f64>()
            + self.lane_counts.capacity() * size_of::<[u64; LANES]>()
            + self.lane_sums.capacity() * size_of::<[f64; LANES]>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-aware accumulator against a plain per-row loop, on sorted and shuffled
    /// groups (summed by run, by lane, and both), with NULLs and a filter, across two
    /// batches and a partial/final merge, over `DOUBLE` and `REAL` input.
    #[test]
    fn matches_a_per_row_oracle() {
        for real in [false, true] {
            matches_a_per_row_oracle_over(real);
        }
    }

    fn matches_a_per_row_oracle_over(real: bool) {
        let n = 10_000usize;
        let groups: Vec<usize> = (0..n).map(|i| i / 700).collect();
        let shuffled: Vec<usize> = (0..n).map(|i| (i * 7919) % 15).collect();
        // Runs summed in one half, lanes in the other; and too many groups for lanes.
        let mixed: Vec<usize> = (0..n)
            .map(|i| if i < n / 2 { i / 700 } else { (i * 7919) % 15 })
            .collect();
        let many: Vec<usize> = (0..n).map(|i| (i * 7919) % 5000).collect();
        // REAL input: the oracle adds the same values, rounded to f32 and widened.
        let values: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 11 != 0).then(|| (i as f64).sin() * 100.0))
            .map(|v| v.map(|v| if real { f64::from(v as f32) } else { v }))
            .collect();
        let filter: BooleanArray = (0..n).map(|i| Some(i % 5 != 1)).collect();
        for gi in [&groups, &shuffled, &mixed, &many] {
            let total = gi.iter().max().unwrap() + 1;
            let mut want = vec![(0.0f64, 0u64); total];
            for i in 0..n {
                if let (Some(v), true) = (values[i], filter.value(i)) {
                    want[gi[i]].0 += v;
                    want[gi[i]].1 += 1;
                }
            }
            // Two partial accumulators over halves, merged into a final one.
            let mut finals = RunAvgAccumulator::default();
            for half in [0..n / 2, n / 2..n] {
                let mut partial = RunAvgAccumulator::default();
                let arr: ArrayRef = Arc::new(Float64Array::from(values[half.clone()].to_vec()));
                let arr = if real {
                    arrow::compute::cast(&arr, &DataType::Float32).unwrap()
                } else {
                    arr
                };
                let f = filter.slice(half.start, half.len());
                partial
                    .update_batch(&[arr], &gi[half.clone()], Some(&f), total)
                    .unwrap();
                let state = partial.state(EmitTo::All).unwrap();
                let ids: Vec<usize> = (0..total).collect();
                finals.merge_batch(&state, &ids, total).unwrap();
            }
            let got = finals.evaluate(EmitTo::All).unwrap();
            let got = got.as_primitive::<Float64Type>();
            for (g, &(s, c)) in want.iter().enumerate() {
                if c == 0 {
                    assert!(got.is_null(g), "group {g}, real {real}");
                } else {
                    let w = s / c as f64;
                    assert!(
                        (got.value(g) - w).abs() <= 1e-9 * w.abs().max(1.0),
                        "group {g}, real {real}"
                    );
                }
            }
        }
    }

    /// `AVG` over a `REAL` column in every form SQL has (grouped, ungrouped, `DISTINCT`,
    /// `FILTER`, a sliding window), against sums of the widened values done here.
    #[tokio::test]
    async fn real_input_in_every_form() {
        use arrow::array::{Float32Array, Int64Array, RecordBatch};
        use datafusion::prelude::SessionContext;
        let n = 5000usize;
        let x: Vec<Option<f32>> = (0..n)
            .map(|i| (i % 13 != 0).then_some(((i % 97) as f32) * 0.37 + 15.0))
            .collect();
        let g: Vec<i64> = (0..n).map(|i| (i / 3 % 7) as i64).collect();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("x", DataType::Float32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(g.clone())),
                Arc::new(Float32Array::from(x.clone())),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_udaf(avg_udaf());
        ctx.register_batch("t", batch).unwrap();
        let one = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                let col = arrow::compute::concat(
                    &batches
                        .iter()
                        .map(|b| b.column(0).as_ref())
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                assert_eq!(col.data_type(), &DataType::Float64, "{sql}");
                col.as_primitive::<Float64Type>().iter().collect::<Vec<_>>()
            }
        };
        let mean = |keep: &dyn Fn(usize) -> bool| {
            let v: Vec<f64> = (0..n)
                .filter(|&i| keep(i))
                .filter_map(|i| x[i].map(f64::from))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        // The column reaches the accumulators as it is, not cast to DOUBLE.
        let plan = ctx
            .sql("EXPLAIN SELECT g, AVG(x) FROM t GROUP BY g")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(!text.to_uppercase().contains("CAST"), "{text}");
        let all = one("SELECT AVG(x) FROM t").await;
        assert!(close(all[0].unwrap(), mean(&|_| true)));
        let grouped = one("SELECT AVG(x) FROM t GROUP BY g ORDER BY g").await;
        for (k, got) in grouped.iter().enumerate() {
            assert!(
                close(got.unwrap(), mean(&|i| g[i] == k as i64)),
                "group {k}"
            );
        }
        let filtered = one("SELECT AVG(x) FILTER (WHERE g < 3) FROM t").await;
        assert!(close(filtered[0].unwrap(), mean(&|i| g[i] < 3)));
        let distinct = one("SELECT AVG(DISTINCT x) FROM t").await;
        let mut d: Vec<f32> = x.iter().flatten().copied().collect();
        d.sort_by(f32::total_cmp);
        d.dedup();
        let want = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
        assert!(close(distinct[0].unwrap(), want));
        let window = one(
            "SELECT AVG(x) OVER (ORDER BY rn ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) \
             FROM (SELECT x, ROW_NUMBER() OVER () AS rn FROM t) ORDER BY rn",
        )
        .await;
        for (k, got) in window.iter().enumerate().skip(2).step_by(101) {
            let w: Vec<f64> = (k - 2..=k).filter_map(|i| x[i].map(f64::from)).collect();
            assert!(
                close(got.unwrap(), w.iter().sum::<f64>() / w.len() as f64),
                "row {k}"
            );
        }
    }
}
