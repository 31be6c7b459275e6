//! Stopping a query's operators as soon as its consumer is gone.
//!
//! Dropping a query's stream aborts the task that drives its plan, but an abort takes
//! effect only where that task next waits, and some operators compute for minutes without
//! waiting: a nested loop (or hash) join whose filter rejects every pair tests the whole
//! build side against each probe batch inside one poll, and an operator above a cross join
//! consumes its in-memory batches in a loop that never waits either. A query stopped at its
//! time limit would go on using a core until it finished on its own; a few such queries
//! hold every worker and every later query times out in turn.
//!
//! So a plan runs with a [`Stop`] flag, raised when its stream is dropped. Join filters
//! test it at each evaluation (one build row or one batch of pairs), and the output of
//! every operator that combines inputs is tested between batches; once it is raised the
//! query ends with an error at the next test, within one batch's work. DataFusion has no
//! such hook of its own: its cancellation is the task abort above.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{
    HashJoinExec, NestedLoopJoinExec, NestedLoopJoinExecBuilder,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::Stream;

/// The message of a query stopped this way (seen only in logs: its consumer is gone).
const STOPPED: &str = "the query was stopped";

/// A query's stop flag: raised once, never lowered.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Raises the flag: the query's operators end at their next test.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the flag is raised.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        if self.raised() {
            Err(DataFusionError::Execution(STOPPED.into()))
        } else {
            Ok(())
        }
    }
}

/// Raises its flag when dropped (kept by a query's stream).
#[derive(Debug)]
pub(crate) struct RaiseOnDrop(pub(crate) Stop);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

/// `plan` with the tests of `stop` in place: each join's filter, and the output of each
/// operator with more than one input.
pub fn stoppable(plan: Arc<dyn ExecutionPlan>, stop: &Stop) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let node = with_filter_checked(node, stop)?;
        if node.children().len() > 1 {
            Ok(Transformed::yes(Arc::new(StopCheckExec {
                input: node,
                stop: stop.clone(),
            }) as Arc<dyn ExecutionPlan>))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// `node` with its join filter testing `stop`, if it is a join that has one.
fn with_filter_checked(
    node: Arc<dyn ExecutionPlan>,
    stop: &Stop,
) -> Result<Arc<dyn ExecutionPlan>> {
    let checked = |f: &JoinFilter| {
        JoinFilter::new(
            Arc::new(Checked {
                expr: Arc::clone(f.expression()),
                stop: stop.clone(),
            }),
            f.column_indices().to_vec(),
            Arc::clone(f.schema()),
        )
    };
    if let Some(j) = node.downcast_ref::<NestedLoopJoinExec>()
        && let Some(f) = j.filter()
    {
        let j = NestedLoopJoinExecBuilder::from(j)
            .with_filter(Some(checked(f)))
            .build()?;
        return Ok(Arc::new(j));
    }
    if let Some(j) = node.downcast_ref::<HashJoinExec>()
        && let Some(f) = j.filter()
    {
        return j.builder().with_filter(Some(checked(f))).build_exec();
    }
    Ok(node)
}

/// A join filter that tests the stop flag before each evaluation.
#[derive(Debug)]
struct Checked {
    expr: Arc<dyn PhysicalExpr>,
    stop: Stop,
}

impl PartialEq for Checked {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr)
    }
}

impl Eq for Checked {}

impl Hash for Checked {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl PhysicalExpr for Checked {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.expr.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        self.stop.check()?;
        self.expr.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [expr]: [Arc<dyn PhysicalExpr>; 1] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("a checked filter has 1 child".into()))?;
        Ok(Arc::new(Self {
            expr,
            stop: self.stop.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)
    }
}

/// An operator's output, tested against the stop flag before each batch. It is
/// transparent to downcasts: plan inspection sees the operator it wraps.
#[derive(Debug)]
struct StopCheckExec {
    input: Arc<dyn ExecutionPlan>,
    stop: Stop,
}

impl DisplayAs for StopCheckExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StopCheckExec")
    }
}

impl ExecutionPlan for StopCheckExec {
    fn name(&self) -> &str {
        "StopCheckExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input]: [Arc<dyn ExecutionPlan>; 1] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("StopCheckExec takes 1 child".into()))?;
        Ok(Arc::new(Self {
            input,
            stop: self.stop.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.stop.check()?;
        Ok(Box::pin(StopCheckStream {
            input: self.input.execute(partition, context)?,
            stop: self.stop.clone(),
            ended: false,
        }))
    }
}

struct StopCheckStream {
    input: SendableRecordBatchStream,
    stop: Stop,
    ended: bool,
}

impl Stream for StopCheckStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Err(e) = self.stop.check() {
            self.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        self.input.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for StopCheckStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array};
    use datafusion::arrow::datatypes::Field;
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::{Volatility, create_udf};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;

    /// A table of `batches` batches of `rows` rows: `x` counts up, `k` is 0 everywhere.
    fn table(batches: usize, rows: usize) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, false),
            Field::new("k", DataType::Float64, false),
        ]));
        let parts = (0..batches)
            .map(|b| {
                let x = (0..rows).map(|i| (b * rows + i) as f64);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Float64Array::from_iter_values(x)),
                        Arc::new(Float64Array::from_iter_values((0..rows).map(|_| 0.0))),
                    ],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![parts]).unwrap())
    }

    /// A session of one partition with tables `a` (3,000 rows) and `b` (3,000 rows in 6
    /// batches), and a function `probe(x) = x` that counts its calls and raises `stop` at
    /// its `raise_at`-th (never when 0).
    fn session(stop: &Stop, raise_at: usize) -> (SessionContext, Arc<AtomicUsize>) {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        ctx.register_table("a", table(1, 3000)).unwrap();
        ctx.register_table("b", table(6, 500)).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (n, stop) = (calls.clone(), stop.clone());
        let probe = move |args: &[ColumnarValue]| -> Result<ColumnarValue> {
            if n.fetch_add(1, Ordering::Relaxed) + 1 == raise_at {
                stop.raise();
            }
            Ok(args[0].clone())
        };
        ctx.register_udf(create_udf(
            "probe",
            vec![DataType::Float64],
            DataType::Float64,
            Volatility::Volatile,
            Arc::new(probe),
        ));
        (ctx, calls)
    }

    async fn run(ctx: &SessionContext, q: &str, stop: &Stop) -> Result<Vec<String>> {
        let plan = ctx.sql(q).await?.create_physical_plan().await?;
        let plan = stoppable(plan, stop)?;
        let got = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
        let cols: &[ArrayRef] = got[0].columns();
        Ok(cols
            .iter()
            .map(|c| datafusion::arrow::util::display::array_value_to_string(c, 0).unwrap())
            .collect())
    }

    /// Joins that run long within one poll: a nested loop join and a hash join (every key
    /// equal) whose filters reject every pair, and a sum over a cross join's batches.
    const LONG: [(&str, &str); 3] = [
        (
            "SELECT COUNT(*) FROM a, b WHERE probe(a.x + b.x) < -1",
            "NestedLoopJoinExec",
        ),
        (
            "SELECT COUNT(*) FROM a JOIN b ON a.k = b.k AND probe(a.x + b.x) < -1",
            "HashJoinExec",
        ),
        ("SELECT SUM(probe(a.x - b.x)) FROM a, b", "CrossJoinExec"),
    ];

    /// Raised in the middle of a join's long poll, the flag ends the query at the next
    /// evaluation: not one more batch of pairs is tested.
    #[tokio::test]
    async fn a_join_stops_at_the_next_batch_once_raised() {
        for (q, join) in LONG {
            let stop = Stop::default();
            let (ctx, calls) = session(&stop, 10);
            let plan = ctx
                .sql(q)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let shown = crate::display_plan(&stoppable(plan, &stop).unwrap());
            assert!(shown.contains(join), "{q}: {shown}");
            let e = run(&ctx, q, &stop).await.unwrap_err().to_string();
            assert!(e.contains(STOPPED), "{q}: {e}");
            assert_eq!(calls.load(Ordering::Relaxed), 10, "{q}");
        }
    }

    /// Unraised, the flag changes nothing: the plain plans' answers (counted here by hand),
    /// with every batch of pairs tested.
    #[tokio::test]
    async fn unraised_the_answers_are_the_plain_plans() {
        let answers = [
            (
                "SELECT COUNT(*) FROM a, b WHERE probe(a.x + b.x) > 5990",
                "36",
            ),
            (
                "SELECT COUNT(*) FROM a JOIN b ON a.k = b.k AND probe(a.x + b.x) < 3",
                "6",
            ),
            (
                "SELECT COUNT(*), SUM(probe(a.x - b.x)) FROM a, b",
                "9000000 0.0",
            ),
        ];
        for (q, want) in answers {
            let stop = Stop::default();
            let (ctx, calls) = session(&stop, 0);
            assert_eq!(run(&ctx, q, &stop).await.unwrap().join(" "), want, "{q}");
            assert!(calls.load(Ordering::Relaxed) > 10, "{q}");
        }
    }

    /// The flag is raised by dropping the guard a query's stream holds.
    #[test]
    fn dropping_the_guard_raises_the_flag() {
        let stop = Stop::default();
        let guard = RaiseOnDrop(stop.clone());
        assert!(!stop.raised());
        drop(guard);
        assert!(stop.raised());
    }

    /// A checked filter compares, hashes and shows as the expression it wraps (plans are
    /// compared and shown by their expressions).
    #[test]
    fn a_checked_filter_is_its_expression_for_comparison() {
        let x: Arc<dyn PhysicalExpr> =
            Arc::new(datafusion::physical_expr::expressions::Column::new("x", 0));
        let a = Checked {
            expr: x.clone(),
            stop: Stop::default(),
        };
        let b = Checked {
            expr: x,
            stop: Stop::default(),
        };
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "x@0");
    }

    /// The stream returned by a stopped plan ends after its error.
    #[tokio::test]
    async fn a_stopped_stream_ends_after_its_error() {
        let stop = Stop::default();
        let (ctx, _) = session(&stop, 0);
        let plan = ctx
            .sql(LONG[2].0)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let plan = stoppable(plan, &stop).unwrap();
        let mut s = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
        stop.raise();
        assert!(matches!(s.next().await, Some(Err(_))));
        assert!(s.next().await.is_none());
    }
}
