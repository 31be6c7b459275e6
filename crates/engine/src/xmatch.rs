//! The cross-match operator: a join of two tables on "within r of each other", run as a
//! HEALPix-bucketed join instead of a nested loop.
//!
//! The build side is read once and its rows are bucketed by HEALPix cell at an order whose
//! smallest cell is wider than r ([`neighbourhood_order`]): every partner of a probe row
//! then lies in the probe row's cell or one of its neighbours, at the poles and across
//! RA=0/360 alike, since HEALPix neighbours wrap. The neighbourhood plays the part of a
//! margin of width r, without copying rows. The probe side streams through once, in
//! parallel over its partitions, and each candidate pair is tested on unit vectors.
//!
//! In a SQL or ADQL join the original predicate stays in a filter above the operator, so the
//! result is exactly that of the nested loop (the operator's own test is a slightly wider
//! superset). [`Mode::Nearest`] keeps, per probe row, only the nearest partner within r
//! (Data Lab's best-match tables).
//!
//! Memory: the build side and its index are accounted in the session's memory pool; beyond
//! the budget the query fails with a resources error and the process lives.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, Filter, JoinType, LogicalPlan, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, DynamicFilterPhysicalExpr, lit,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildFilterDescription, ChildPushdownResult, FilterDescription, FilterPushdownPhase,
    FilterPushdownPropagation, PushedDownPredicate,
};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};
use meridian_sky::healpix::neighbourhood_order;
use tokio::sync::OnceCell;

use crate::hats_table::{number, spatial_call};
use crate::session::XMatchZones;
use crate::zones::{ZONE_COLUMN, ZoneExec};

/// Which pairs the operator returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Mode {
    /// Every pair within the radius.
    All,
    /// Per probe (left) row, the nearest build (right) row within the radius.
    Nearest,
}

/// The column a cross-match node adds with [`XMatchNode::with_distance`]: each pair's
/// angular distance in degrees.
pub const DISTANCE_COLUMN: &str = "xmatch_distance_deg";

/// Logical cross-match of `left` and `right`: output rows are left columns then right
/// columns, as for an inner join, then (see [`XMatchNode::with_distance`]) the pair's
/// distance.
#[derive(Debug, Clone)]
pub struct XMatchNode {
    left: LogicalPlan,
    right: LogicalPlan,
    /// RA and Dec of the left rows, degrees (expressions over `left`).
    left_pos: [Expr; 2],
    /// RA and Dec of the right rows, degrees (expressions over `right`).
    right_pos: [Expr; 2],
    radius_deg: f64,
    mode: Mode,
    /// Whether the output ends with [`DISTANCE_COLUMN`].
    distance: bool,
    schema: DFSchemaRef,
}

impl XMatchNode {
    /// A cross-match of two plans; `radius_deg` must allow a HEALPix neighbourhood (below
    /// about 29 degrees).
    pub fn try_new(
        left: LogicalPlan,
        right: LogicalPlan,
        left_pos: [Expr; 2],
        right_pos: [Expr; 2],
        radius_deg: f64,
        mode: Mode,
    ) -> Result<Self> {
        if neighbourhood_order(radius_deg).is_none() {
            return Err(DataFusionError::Plan(format!(
                "cross-match radius {radius_deg} deg is not between 0 and 29 deg"
            )));
        }
        let schema = Arc::new(left.schema().join(right.schema())?);
        Ok(Self {
            left,
            right,
            left_pos,
            right_pos,
            radius_deg,
            mode,
            distance: false,
            schema,
        })
    }

    /// The same node with a last output column, [`DISTANCE_COLUMN`]: the angular distance
    /// of each pair in degrees, from the squared chord the match computed anyway (cheaper
    /// than `DISTANCE` over the output's positions: three sines and cosines and an
    /// arctangent per pair). The chord's rounding (about 10^-16 rad) is far below any
    /// catalog's precision.
    pub fn with_distance(mut self) -> Result<Self> {
        if !self.distance {
            let field = arrow::datatypes::Field::new(DISTANCE_COLUMN, DataType::Float64, false);
            let extra = DFSchema::try_from(arrow::datatypes::Schema::new(vec![field]))?;
            self.schema = Arc::new(self.schema.join(&extra)?);
            self.distance = true;
        }
        Ok(self)
    }

    /// Whether the output ends with [`DISTANCE_COLUMN`] (see [`XMatchNode::with_distance`]).
    pub fn has_distance(&self) -> bool {
        self.distance
    }

    /// RA and Dec of the left and of the right rows, the radius in degrees and the mode:
    /// with the two inputs, what makes the node again (see [`XMatchNode::try_new`]).
    pub fn parts(&self) -> (&[Expr; 2], &[Expr; 2], f64, Mode) {
        (&self.left_pos, &self.right_pos, self.radius_deg, self.mode)
    }

    /// Wraps the node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }
}

impl PartialEq for XMatchNode {
    fn eq(&self, other: &Self) -> bool {
        self.left == other.left
            && self.right == other.right
            && self.left_pos == other.left_pos
            && self.right_pos == other.right_pos
            && self.radius_deg.to_bits() == other.radius_deg.to_bits()
            && self.mode == other.mode
            && self.distance == other.distance
    }
}

impl Eq for XMatchNode {}

impl Hash for XMatchNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.left.hash(state);
        self.right.hash(state);
        self.left_pos.hash(state);
        self.right_pos.hash(state);
        self.radius_deg.to_bits().hash(state);
        self.mode.hash(state);
        self.distance.hash(state);
    }
}

impl PartialOrd for XMatchNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.left.partial_cmp(&other.left)? {
            Ordering::Equal => {}
            o => return Some(o),
        }
        match self.right.partial_cmp(&other.right)? {
            Ordering::Equal => {}
            o => return Some(o),
        }
        self.radius_deg.partial_cmp(&other.radius_deg)
    }
}

impl UserDefinedLogicalNodeCore for XMatchNode {
    fn name(&self) -> &str {
        "XMatch"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        [&self.left_pos, &self.right_pos]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "XMatch: mode={:?}, radius={} arcsec, left=({}, {}), right=({}, {}){}",
            self.mode,
            self.radius_deg * 3600.0,
            self.left_pos[0],
            self.left_pos[1],
            self.right_pos[0],
            self.right_pos[1],
            if self.distance { ", distance" } else { "" }
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [l_ra, l_dec, r_ra, r_dec]: [Expr; 4] = exprs
            .try_into()
            .map_err(|_| DataFusionError::Internal("XMatch takes 4 expressions".into()))?;
        let [left, right]: [LogicalPlan; 2] = inputs
            .try_into()
            .map_err(|_| DataFusionError::Internal("XMatch takes 2 inputs".into()))?;
        let node = Self::try_new(
            left,
            right,
            [l_ra, l_dec],
            [r_ra, r_dec],
            self.radius_deg,
            self.mode,
        )?;
        if self.distance {
            node.with_distance()
        } else {
            Ok(node)
        }
    }
}

/// A spatial join condition read off one conjunct: (position A, position B, radius).
fn spatial_condition(e: &Expr) -> Option<([Expr; 2], [Expr; 2], f64)> {
    let (f, bound) = spatial_call(e)?;
    let a = &f.args;
    let radius = match (f.func.name(), bound) {
        ("adql_distance" | "q3c_dist", Some(r)) if a.len() == 4 => r,
        ("adql_contains_circle" | "q3c_join" | "q3c_radial_query", None) if a.len() == 5 => {
            number(&a[4])?
        }
        _ => return None,
    };
    Some((
        [a[0].clone(), a[1].clone()],
        [a[2].clone(), a[3].clone()],
        radius,
    ))
}

/// Which input of `join` all of `exprs` read from: `Some(true)` left, `Some(false)` right.
fn side_of(exprs: &[Expr], left: &LogicalPlan, right: &LogicalPlan) -> Option<bool> {
    let cols: Vec<_> = exprs.iter().flat_map(|e| e.column_refs()).collect();
    if cols.is_empty() {
        return None;
    }
    if cols.iter().all(|c| left.schema().has_column(c)) {
        Some(true)
    } else if cols.iter().all(|c| right.schema().has_column(c)) {
        Some(false)
    } else {
        None
    }
}

/// Turns an inner join whose condition holds a distance predicate into a filter over an
/// [`XMatchNode`].
#[derive(Debug, Default)]
pub struct XMatchRule;

impl OptimizerRule for XMatchRule {
    fn name(&self) -> &str {
        "meridian_xmatch"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if join.join_type != JoinType::Inner || !join.on.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let Some(filter) = &join.filter else {
            return Ok(Transformed::no(plan));
        };
        let conjuncts = datafusion::logical_expr::utils::split_conjunction(filter);
        let found = conjuncts.iter().find_map(|c| {
            let (a, b, r) = spatial_condition(c)?;
            neighbourhood_order(r)?;
            match (
                side_of(&a, &join.left, &join.right)?,
                side_of(&b, &join.left, &join.right)?,
            ) {
                (true, false) => Some((a, b, r)),
                (false, true) => Some((b, a, r)),
                _ => None,
            }
        });
        let Some((left_pos, right_pos, radius)) = found else {
            return Ok(Transformed::no(plan));
        };
        let node = XMatchNode::try_new(
            (*join.left).clone(),
            (*join.right).clone(),
            left_pos,
            right_pos,
            radius,
            Mode::All,
        )?;
        if node.schema.as_ref() != join.schema.as_ref() {
            return Ok(Transformed::no(plan));
        }
        let filtered = Filter::try_new(filter.clone(), Arc::new(node.into_plan()))?;
        Ok(Transformed::yes(LogicalPlan::Filter(filtered)))
    }
}

/// Plans [`XMatchNode`]s as [`XMatchExec`].
#[derive(Debug, Default)]
pub struct XMatchPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for XMatchPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<XMatchNode>() else {
            return Ok(None);
        };
        let exprs = |pos: &[Expr; 2], input: &LogicalPlan| -> Result<[Arc<dyn PhysicalExpr>; 2]> {
            let ra =
                planner.create_physical_expr(&pos[0], input.schema(), session, planning_ctx)?;
            let dec =
                planner.create_physical_expr(&pos[1], input.schema(), session, planning_ctx)?;
            Ok([ra, dec])
        };
        let left_pos = exprs(&node.left_pos, logical_inputs[0])?;
        let right_pos = exprs(&node.right_pos, logical_inputs[1])?;
        // The smaller input is indexed (the right one unless statistics say otherwise);
        // best-match mode always indexes the right input.
        let stats = [0, 1].map(|i| statistics(&physical_inputs[i]).ok());
        let rows = |i: usize| {
            stats[i]
                .as_ref()
                .and_then(|s| s.num_rows.get_value().copied())
        };
        let build_left =
            node.mode == Mode::All && matches!((rows(0), rows(1)), (Some(l), Some(r)) if l < r);
        let b = if build_left { 0 } else { 1 };
        let zoned = zoned(&physical_inputs[b], stats[b].as_deref(), session);
        let (left, right) = if zoned {
            let tag =
                |i: usize, pos: &[Arc<dyn PhysicalExpr>; 2]| -> Result<Arc<dyn ExecutionPlan>> {
                    let margin = build_left == (i == 0);
                    Ok(Arc::new(ZoneExec::try_new(
                        physical_inputs[i].clone(),
                        pos.clone(),
                        node.radius_deg,
                        margin,
                    )?))
                };
            (tag(0, &left_pos)?, tag(1, &right_pos)?)
        } else {
            (physical_inputs[0].clone(), physical_inputs[1].clone())
        };
        Ok(Some(Arc::new(XMatchExec::new(
            left,
            right,
            left_pos,
            right_pos,
            node.radius_deg,
            node.mode,
            build_left,
            zoned,
            Arc::new(node.schema.as_arrow().clone()),
        ))))
    }
}

/// The statistics of a whole plan.
fn statistics(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<datafusion::common::Statistics>> {
    datafusion::physical_plan::StatisticsContext::new().compute(
        plan.as_ref(),
        &datafusion::physical_plan::StatisticsArgs::new(),
    )
}

/// Whether a cross-match indexing `build` runs zone by zone (see [`crate::zones`] and
/// [`XMatchZones`]): on a Ballista cluster, where one index would be built by every task
/// from a copy of the whole build input; when the build input's size is unknown; or when
/// its index would take more than a quarter of the memory budget.
fn zoned(
    build: &Arc<dyn ExecutionPlan>,
    stats: Option<&datafusion::common::Statistics>,
    session: &dyn Session,
) -> bool {
    match session.config().get_extension::<XMatchZones>().as_deref() {
        Some(XMatchZones::Always) => return true,
        Some(XMatchZones::Never) => return false,
        _ => {}
    }
    let on_cluster = session
        .config_options()
        .entries()
        .iter()
        .any(|e| e.key.starts_with("ballista."));
    if on_cluster {
        return true;
    }
    let Some(stats) = stats else {
        return true;
    };
    let Some(&rows) = stats.num_rows.get_value() else {
        return true;
    };
    let bytes = stats
        .total_byte_size
        .get_value()
        .copied()
        .unwrap_or_else(|| {
            let width: usize = build
                .schema()
                .fields()
                .iter()
                .map(|f| f.data_type().primitive_width().unwrap_or(32))
                .sum();
            rows * width
        });
    let need = bytes + rows * Index::ENTRY_BYTES;
    match session.runtime_env().memory_pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(limit) => need > limit / 4,
        _ => false,
    }
}

/// The session's query planner: DataFusion's, with the cross-match operator.
#[derive(Debug, Default)]
pub struct MeridianQueryPlanner;

#[async_trait::async_trait]
impl QueryPlanner for MeridianQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(XMatchPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// Where the probe's rows can have a partner among the index's rows, as three conditions
/// over the probe's positions (see [`ProbeFilter`]): Dec within the union of the boxes'
/// Dec ranges; RA within the union of their RA ranges; the position within one of the
/// boxes. All `false` when the index is empty, `true` when the boxes would cover half the
/// sky.
fn partners_predicates(
    index: &Index,
    [ra, dec]: &[Arc<dyn PhysicalExpr>; 2],
    probe_schema: &arrow::datatypes::Schema,
) -> Result<ProbeFilter<Arc<dyn PhysicalExpr>>> {
    let points = index.xyz.iter().map(|v| {
        let dec = v[2].clamp(-1.0, 1.0).asin().to_degrees();
        let ra = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0);
        (ra, dec)
    });
    let Some(boxes) =
        meridian_sky::bounds::covering_boxes(points, index.radius_deg, PROBE_FILTER_BOXES)
    else {
        return Ok(ProbeFilter::all(lit(true)));
    };
    let as_f64 = |e: &Arc<dyn PhysicalExpr>| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(match e.data_type(probe_schema)? {
            DataType::Float64 => e.clone(),
            _ => Arc::new(CastExpr::new(e.clone(), DataType::Float64, None)),
        })
    };
    let (ra, dec) = (as_f64(ra)?, as_f64(dec)?);
    let range = |e: &Arc<dyn PhysicalExpr>, lo: f64, hi: f64| -> Arc<dyn PhysicalExpr> {
        let ge: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(e.clone(), Operator::GtEq, lit(lo)));
        let le: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(e.clone(), Operator::LtEq, lit(hi)));
        Arc::new(BinaryExpr::new(ge, Operator::And, le))
    };
    let or = |a: Arc<dyn PhysicalExpr>, b: Arc<dyn PhysicalExpr>| -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(a, Operator::Or, b))
    };
    // RA stored in (-180, 180] as well as in [0, 360): the part of a range above 180
    // also as its negative counterpart.
    let ra_ranges = |lo: f64, hi: f64| -> Vec<[f64; 2]> {
        let mut v = vec![[lo, hi]];
        if hi > 180.0 {
            v.push([lo.max(180.0) - 360.0, hi - 360.0]);
        }
        v
    };
    let any = |e: &Arc<dyn PhysicalExpr>, ranges: &[[f64; 2]]| {
        ranges
            .iter()
            .map(|r| range(e, r[0], r[1]))
            .reduce(or)
            .unwrap_or_else(|| lit(false))
    };
    if boxes.is_empty() {
        return Ok(ProbeFilter::all(lit(false)));
    }
    let within = boxes
        .iter()
        .map(|b| {
            let in_dec = range(&dec, b.dec_deg[0], b.dec_deg[1]);
            if b.all_ra() {
                return in_dec;
            }
            let in_ra = any(&ra, &ra_ranges(b.ra_deg[0], b.ra_deg[1]));
            Arc::new(BinaryExpr::new(in_dec, Operator::And, in_ra)) as Arc<dyn PhysicalExpr>
        })
        .reduce(or)
        .expect("boxes");
    // The boxes' ranges as one condition on Dec and one on RA, implied by the boxes:
    // Parquet's page index prunes by single-column conditions only, and pages (a few
    // thousand rows) are much finer than row groups.
    let dec_union = merged(boxes.iter().map(|b| b.dec_deg));
    let ra_union = if boxes.iter().any(|b| b.all_ra()) {
        lit(true)
    } else {
        any(
            &ra,
            &merged(
                boxes
                    .iter()
                    .flat_map(|b| ra_ranges(b.ra_deg[0], b.ra_deg[1])),
            ),
        )
    };
    Ok(ProbeFilter {
        dec: any(&dec, &dec_union),
        ra: ra_union,
        boxes: within,
    })
}

/// The three conditions a cross-match pushes into its probe input (see
/// [`partners_predicates`]), each a filter of its own so that the Parquet reader sees the
/// single-column ones apart (a conjunction inside one dynamic filter is one condition to
/// it).
#[derive(Debug, Clone)]
struct ProbeFilter<T> {
    dec: T,
    ra: T,
    boxes: T,
}

impl<T: Clone> ProbeFilter<T> {
    fn all(x: T) -> Self {
        Self {
            dec: x.clone(),
            ra: x.clone(),
            boxes: x,
        }
    }
}

impl<T> ProbeFilter<T> {
    fn into_vec(self) -> Vec<T> {
        vec![self.dec, self.ra, self.boxes]
    }
}

/// `ranges` merged where they overlap, in order.
fn merged(ranges: impl Iterator<Item = [f64; 2]>) -> Vec<[f64; 2]> {
    let mut v: Vec<[f64; 2]> = ranges.collect();
    v.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut out: Vec<[f64; 2]> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
            _ => out.push(r),
        }
    }
    out
}

/// The probe input is filtered by the partners' boxes when the build input has at most
/// 1/this of its rows.
const PROBE_FILTER_RATIO: usize = 4;

/// At most this many boxes in a probe filter: each is 4 to 6 comparisons of a row group's
/// statistics, or of every row when the reader filters rows.
const PROBE_FILTER_BOXES: usize = 12;

/// An input plan and its (RA, Dec) expressions.
type Side<'a> = (&'a Arc<dyn ExecutionPlan>, &'a [Arc<dyn PhysicalExpr>; 2]);

/// Physical cross-match; see the module documentation.
#[derive(Debug)]
pub struct XMatchExec {
    pub(crate) left: Arc<dyn ExecutionPlan>,
    pub(crate) right: Arc<dyn ExecutionPlan>,
    pub(crate) left_pos: [Arc<dyn PhysicalExpr>; 2],
    pub(crate) right_pos: [Arc<dyn PhysicalExpr>; 2],
    pub(crate) radius_deg: f64,
    pub(crate) mode: Mode,
    /// Index the left input and stream the right one (otherwise the reverse).
    pub(crate) build_left: bool,
    /// Zone by zone over inputs tagged by [`ZoneExec`] (see [`crate::zones`]), instead of
    /// one index of the whole build input.
    pub(crate) zoned: bool,
    properties: Arc<PlanProperties>,
    index: Arc<OnceCell<Arc<Index>>>,
    metrics: ExecutionPlanMetricsSet,
    /// A filter pushed into the probe input (see [`XMatchExec::gather_filters_for_pushdown`]):
    /// once the index is built, the RA/Dec boxes that hold every possible partner, so that
    /// the probe's reader skips files, row groups and pages outside them.
    probe_filter: Option<ProbeFilter<Arc<DynamicFilterPhysicalExpr>>>,
}

impl XMatchExec {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        left_pos: [Arc<dyn PhysicalExpr>; 2],
        right_pos: [Arc<dyn PhysicalExpr>; 2],
        radius_deg: f64,
        mode: Mode,
        build_left: bool,
        zoned: bool,
        schema: SchemaRef,
    ) -> Self {
        let probe = if build_left { &right } else { &left };
        let partitions = probe.output_partitioning().partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            left,
            right,
            left_pos,
            right_pos,
            radius_deg,
            mode,
            build_left,
            zoned,
            properties,
            index: Arc::new(OnceCell::new()),
            metrics: ExecutionPlanMetricsSet::new(),
            probe_filter: None,
        }
    }

    /// The same operator over `left` and `right`, with `probe_filter`.
    fn rebuilt(
        &self,
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        probe_filter: Option<ProbeFilter<Arc<DynamicFilterPhysicalExpr>>>,
    ) -> Self {
        Self::new(
            left,
            right,
            self.left_pos.clone(),
            self.right_pos.clone(),
            self.radius_deg,
            self.mode,
            self.build_left,
            self.zoned,
            self.schema(),
        )
        .with_probe_filter(probe_filter)
    }

    fn with_probe_filter(
        mut self,
        filter: Option<ProbeFilter<Arc<DynamicFilterPhysicalExpr>>>,
    ) -> Self {
        self.probe_filter = filter;
        self
    }

    /// Whether the probe input gets the partners' boxes as a filter: not zone by zone (each
    /// zone's index is its own), and not when the build input is not much smaller than
    /// the probe input (its boxes would cover about as much as the probe holds).
    fn filters_probe(&self, config: &ConfigOptions) -> bool {
        if self.zoned || !config.optimizer.enable_join_dynamic_filter_pushdown {
            return false;
        }
        let ((build, _), (probe, _)) = self.sides();
        let rows = |p: &Arc<dyn ExecutionPlan>| {
            statistics(p)
                .ok()
                .and_then(|s| s.num_rows.get_value().copied())
        };
        match (rows(build), rows(probe)) {
            (Some(b), Some(p)) => b.saturating_mul(PROBE_FILTER_RATIO) <= p,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// (build input, its position expressions), (probe input, its position expressions).
    fn sides(&self) -> (Side<'_>, Side<'_>) {
        let left = (&self.left, &self.left_pos);
        let right = (&self.right, &self.right_pos);
        if self.build_left {
            (left, right)
        } else {
            (right, left)
        }
    }
}

impl DisplayAs for XMatchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "XMatchExec: mode={:?}, radius={} arcsec, order={}, build={}{}",
            self.mode,
            self.radius_deg * 3600.0,
            neighbourhood_order(self.radius_deg).unwrap_or(0),
            if self.build_left { "left" } else { "right" },
            if self.zoned { ", zoned" } else { "" }
        )
    }
}

impl ExecutionPlan for XMatchExec {
    fn name(&self) -> &str {
        "XMatchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        if self.zoned {
            // Both inputs partitioned alike by zone: partition i of each holds the same zones.
            return InputDistributionRequirements::co_partitioned(
                [&self.left, &self.right]
                    .iter()
                    .map(|c| Distribution::KeyPartitioned(vec![zone_column(c)]))
                    .collect(),
            );
        }
        InputDistributionRequirements::new(if self.build_left {
            vec![
                Distribution::SinglePartition,
                Distribution::UnspecifiedDistribution,
            ]
        } else {
            vec![
                Distribution::UnspecifiedDistribution,
                Distribution::SinglePartition,
            ]
        })
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        self.input_distribution_requirements().into_per_child()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(
            self.left_pos.iter().chain(self.right_pos.iter()),
            f,
        )
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("XMatchExec takes 2 children".into()))?;
        Ok(Arc::new(self.rebuilt(
            left,
            right,
            self.probe_filter.clone(),
        )))
    }

    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        let build = ChildFilterDescription::all_unsupported(&parent_filters);
        let mut probe = ChildFilterDescription::all_unsupported(&parent_filters);
        if phase == FilterPushdownPhase::Post
            && self.probe_filter.is_none()
            && self.filters_probe(config)
        {
            let (_, (_, [ra, dec])) = self.sides();
            let filter = |on: Vec<Arc<dyn PhysicalExpr>>| -> Arc<dyn PhysicalExpr> {
                Arc::new(DynamicFilterPhysicalExpr::new(on, lit(true)))
            };
            probe = probe.with_self_filters(
                ProbeFilter {
                    dec: filter(vec![dec.clone()]),
                    ra: filter(vec![ra.clone()]),
                    boxes: filter(vec![ra.clone(), dec.clone()]),
                }
                .into_vec(),
            );
        }
        Ok(if self.build_left {
            FilterDescription::new().with_child(build).with_child(probe)
        } else {
            FilterDescription::new().with_child(probe).with_child(build)
        })
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let probe = if self.build_left { 1 } else { 0 };
        let dynamic = |f: &PushedDownPredicate| {
            Arc::downcast::<DynamicFilterPhysicalExpr>(f.predicate.clone()).ok()
        };
        let pushed = match result.self_filters[probe].as_slice() {
            [dec, ra, boxes] => dynamic(dec)
                .zip(dynamic(ra))
                .zip(dynamic(boxes))
                .map(|((dec, ra), boxes)| ProbeFilter { dec, ra, boxes }),
            _ => None,
        };
        let mut out = FilterPushdownPropagation::all_unsupported(result);
        if let Some(filter) = pushed {
            let node = self.rebuilt(self.left.clone(), self.right.clone(), Some(filter));
            out = out.with_updated_node(Arc::new(node) as Arc<dyn ExecutionPlan>);
        }
        Ok(out)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ((build, build_pos), (probe, probe_pos)) = self.sides();
        if self.zoned {
            return Ok(crate::zones::ZonedJoin {
                build: build.execute(partition, context.clone())?,
                probe: probe.execute(partition, context.clone())?,
                build_pos: build_pos.clone(),
                probe_pos: probe_pos.clone(),
                radius_deg: self.radius_deg,
                mode: self.mode,
                build_left: self.build_left,
                schema: self.schema(),
                context,
                metrics: self.metrics.clone(),
                partition,
            }
            .into_stream());
        }
        let (build, build_pos) = (build.clone(), build_pos.clone());
        let probe_stream = probe.execute(partition, context.clone())?;
        let probe_pos = probe_pos.clone();
        let cell = self.index.clone();
        let radius = self.radius_deg;
        let probe_filter = self.probe_filter.clone();
        let probe_schema = probe.schema();
        let (mode, build_left, schema) = (self.mode, self.build_left, self.schema());
        let batch_size = context.session_config().batch_size();
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let index = cell
                .get_or_try_init(|| async {
                    let index = Index::build(build, build_pos, radius, context).await?;
                    if let Some(filter) = probe_filter {
                        let now = partners_predicates(&index, &probe_pos, &probe_schema)?;
                        for (f, now) in filter.into_vec().into_iter().zip(now.into_vec()) {
                            f.update(now)?;
                            f.mark_complete();
                        }
                    }
                    Ok::<_, DataFusionError>(index)
                })
                .await?
                .clone();
            let mut matcher = Matcher::new(index, mode);
            Ok::<_, DataFusionError>(
                probe_stream
                    .map(move |batch| {
                        let batch = batch?;
                        let [ra, dec] = positions(&probe_pos, &batch)?;
                        let pairs = matcher.pairs(&ra, &dec, None);
                        assemble(&out_schema, &batch, &matcher.index.batch, pairs, build_left)
                    })
                    .map_ok(move |b| futures::stream::iter(split(b, batch_size).map(Ok)))
                    .try_flatten(),
            )
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The zone column of a [`ZoneExec`]'s output (its last column).
fn zone_column(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn PhysicalExpr> {
    let i = plan.schema().fields().len() - 1;
    Arc::new(Column::new(ZONE_COLUMN, i))
}

/// Evaluates RA and Dec expressions over a batch as Float64 arrays.
pub(crate) fn positions(
    exprs: &[Arc<dyn PhysicalExpr>; 2],
    batch: &RecordBatch,
) -> Result<[Float64Array; 2]> {
    let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<Float64Array> {
        let v = e.evaluate(batch)?.into_array(batch.num_rows())?;
        let v = arrow::compute::cast(&v, &DataType::Float64)?;
        Ok(v.as_primitive::<Float64Type>().clone())
    };
    Ok([eval(&exprs[0])?, eval(&exprs[1])?])
}

/// (lon, lat) in radians of a valid position, lon in [0, 2π); `None` for NULL, NaN or
/// |dec| > 90. `ra` and `dec` are [`positions`]' arrays.
pub(crate) fn lon_lat(ra: &Float64Array, dec: &Float64Array, i: usize) -> Option<(f64, f64)> {
    if ra.is_null(i) || dec.is_null(i) {
        return None;
    }
    let (ra, dec) = (ra.value(i), dec.value(i));
    if !ra.is_finite() || !(-90.0..=90.0).contains(&dec) {
        return None;
    }
    let lon = ra.to_radians();
    // `rem_euclid` is a software `fmod` on baseline x86-64: only for the rare RA outside
    // [0, 360).
    let lon = if (0.0..std::f64::consts::TAU).contains(&lon) {
        lon
    } else {
        lon.rem_euclid(std::f64::consts::TAU)
    };
    Some((lon, dec.to_radians()))
}

/// Unit vector and (lon, lat) in radians of a valid position (see [`lon_lat`]).
pub(crate) fn unit_vector(
    ra: &Float64Array,
    dec: &Float64Array,
    i: usize,
) -> Option<([f64; 3], f64, f64)> {
    let (lon, lat) = lon_lat(ra, dec, i)?;
    let (sr, cr) = lon.sin_cos();
    let (sd, cd) = lat.sin_cos();
    Some(([cd * cr, cd * sr, sd], lon, lat))
}

/// The angle in degrees of a squared chord between unit vectors.
fn chord_deg(chord2: f64) -> f64 {
    (2.0 * (chord2.sqrt() / 2.0).min(1.0).asin()).to_degrees()
}

fn chord2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let (x, y, z) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    x * x + y * y + z * z
}

/// The build side, bucketed by HEALPix cell.
#[derive(Debug)]
pub(crate) struct Index {
    pub(crate) batch: RecordBatch,
    /// Order of the cells the rows are bucketed by.
    order: u8,
    /// Order of the neighbourhood rule: cells wider than the radius (see
    /// [`neighbourhood_order`]), at or finer than `order`.
    rule_order: u8,
    /// Unit vectors of the build rows, in cell order.
    xyz: Vec<[f64; 3]>,
    /// Build row of each entry of `xyz`.
    rows: Vec<u32>,
    /// The occupied cells, ascending, and where each one's rows start in `xyz`/`rows`
    /// (one start more than cells: the end). Sorted arrays rather than a hash map: probe
    /// rows come mostly in HEALPix order, so each look-up starts from the last one's place
    /// and reads memory next to it (see [`Index::find`]); a hash map sends consecutive
    /// probes to unrelated places, and its cache misses were most of the probe time.
    cells: Vec<u64>,
    starts: Vec<u32>,
    /// Zone of each entry of `xyz` in a zoned cross-match (see [`crate::zones`]), else
    /// empty.
    zones: Vec<u64>,
    /// Squared chord of the candidate radius (the radius widened by a hair, so that
    /// rounding never drops a pair the exact predicate keeps).
    chord2_max: f64,
    radius_deg: f64,
    /// The memory of the batch and the index (a zoned cross-match accounts it itself).
    _reservation: Option<MemoryReservation>,
}

impl Index {
    async fn build(
        plan: Arc<dyn ExecutionPlan>,
        pos: [Arc<dyn PhysicalExpr>; 2],
        radius_deg: f64,
        context: Arc<TaskContext>,
    ) -> Result<Arc<Index>> {
        let started = std::time::Instant::now();
        let reservation = MemoryConsumer::new("XMatch build side").register(context.memory_pool());
        let schema = plan.schema();
        let mut stream = plan.execute(0, context)?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        let batch = concat_batches(&schema, &batches)?;
        drop(batches);
        reservation.try_grow(batch.num_rows() * Self::ENTRY_BYTES)?;
        let index = Self::from_batch(batch, &pos, radius_deg, None, Some(reservation))?;
        tracing::debug!(
            rows = index.batch.num_rows(),
            order = index.order,
            cells = index.cells.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cross-match index built"
        );
        Ok(Arc::new(index))
    }

    /// Bytes of an index entry: a unit vector, a row number, a cell (while building), its
    /// share of the cell table (at most a cell and a start, 12 bytes; 24 are accounted, as
    /// for the hash map the table replaced) and a zone.
    pub(crate) const ENTRY_BYTES: usize = 24 + 4 + 8 + 24 + 8;

    /// The index of `batch`, whose rows' positions are `pos`; `zones`, in a zoned
    /// cross-match, are the rows' zones. `reservation`, if any, holds the batch's memory and
    /// [`Index::ENTRY_BYTES`] per row.
    pub(crate) fn from_batch(
        batch: RecordBatch,
        pos: &[Arc<dyn PhysicalExpr>; 2],
        radius_deg: f64,
        zones: Option<Vec<u64>>,
        reservation: Option<MemoryReservation>,
    ) -> Result<Index> {
        let n = batch.num_rows();
        if n > u32::MAX as usize {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "cross-match build side has {n} rows; at most {} are supported",
                u32::MAX
            )));
        }
        let [ra, dec] = &positions(pos, &batch)?;
        // Cells no finer than needed for the neighbourhood rule, and no finer than needed
        // for a few rows per occupied cell (see [`Matcher`]).
        let rule_order = neighbourhood_order(radius_deg).expect("radius checked when planned");
        let layer = cdshealpix::nested::get(rule_order);
        // (cell, row) keys sorted alone, then the unit vectors gathered into cell order:
        // sorting 16-byte keys moves less than sorting the vectors with them, and the
        // stable sort finds the runs the input already has (HATS partitions are sorted by
        // HEALPix index), merging them rather than partitioning the whole.
        let mut by_row = vec![[0.0; 3]; n];
        let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(n);
        for (i, v) in by_row.iter_mut().enumerate() {
            if let Some((xyz, lon, lat)) = unit_vector(ra, dec, i) {
                *v = xyz;
                keyed.push((layer.hash(lon, lat), i as u32));
            }
        }
        keyed.sort_by_key(|k| k.0);
        let order = occupancy_order(&keyed, rule_order);
        let shift = 2 * u32::from(rule_order - order);
        let mut cells = Vec::new();
        let mut starts = Vec::new();
        for (i, k) in keyed.iter().enumerate() {
            // NESTED cells: the parent's index is the child's shifted; the order stays.
            let cell = k.0 >> shift;
            if cells.last() != Some(&cell) {
                cells.push(cell);
                starts.push(i as u32);
            }
        }
        starts.push(keyed.len() as u32);
        let rows: Vec<u32> = keyed.iter().map(|k| k.1).collect();
        drop(keyed);
        let xyz = rows.iter().map(|&r| by_row[r as usize]).collect();
        drop(by_row);
        let zones = zones
            .map(|z| rows.iter().map(|&r| z[r as usize]).collect())
            .unwrap_or_default();
        let widened = (radius_deg * (1.0 + 1e-7) + 1e-10).to_radians();
        let chord = 2.0 * (widened / 2.0).sin();
        Ok(Index {
            batch,
            order,
            rule_order,
            xyz,
            rows,
            cells,
            starts,
            zones,
            chord2_max: chord * chord,
            radius_deg,
            _reservation: reservation,
        })
    }

    /// The range of `xyz`/`rows` of `cell`, if occupied. `at` is where the last look-up
    /// ended: the search gallops from there (forward or back), so a look-up near the last
    /// one costs a few reads of nearby memory, and any other a binary search.
    fn find(&self, cell: u64, at: &mut usize) -> Option<(u32, u32)> {
        let cells = &self.cells;
        let here = (*at).min(cells.len().saturating_sub(1));
        let (lo, hi) = match cells.get(here) {
            None => return None,
            Some(&c) if c == cell => (here, here + 1),
            Some(&c) if c < cell => {
                let mut step = 1;
                while here + step < cells.len() && cells[here + step] < cell {
                    step *= 2;
                }
                (here + step / 2 + 1, (here + step + 1).min(cells.len()))
            }
            Some(_) => {
                let mut step = 1;
                while step <= here && cells[here - step] > cell {
                    step *= 2;
                }
                (here.saturating_sub(step), here - step / 2)
            }
        };
        let i = lo + cells[lo..hi].partition_point(|&c| c < cell);
        *at = i;
        (cells.get(i) == Some(&cell)).then(|| (self.starts[i], self.starts[i + 1]))
    }
}

/// Rows per occupied cell that [`occupancy_order`] aims at.
const ROWS_PER_CELL: usize = 4;

/// The coarsest order, at most `finest`, at which the rows of `keyed` (sorted by their
/// cell at `finest`) hold at most [`ROWS_PER_CELL`] rows per occupied cell on average.
/// Counted over the cells the rows occupy, not the whole sky: the rows of one field are
/// bucketed as finely as those spread over the sky.
fn occupancy_order(keyed: &[(u64, u32)], finest: u8) -> u8 {
    let occupied = |order: u8| {
        let shift = 2 * u32::from(finest - order);
        1 + keyed
            .windows(2)
            .filter(|w| w[0].0 >> shift != w[1].0 >> shift)
            .count()
    };
    if keyed.is_empty() {
        return finest;
    }
    // The occupancy only grows as cells coarsen: search for the coarsest order that keeps it.
    let (mut coarse, mut fine) = (0u8, finest);
    while coarse < fine {
        let mid = (coarse + fine) / 2;
        if keyed.len() <= ROWS_PER_CELL * occupied(mid) {
            fine = mid;
        } else {
            coarse = mid + 1;
        }
    }
    fine
}

/// Matched (probe row, build row) pairs of one probe batch.
pub(crate) struct Pairs {
    probe: Vec<u32>,
    build: Vec<u32>,
    /// Squared chord between the two unit vectors of each pair.
    chord2: Vec<f64>,
}

/// Whether a cell lies inside the grid of cells of its parent `levels` orders up, away
/// from the parent's edges, so that all its neighbours share its parent. The low
/// `2 * levels` bits of a nested index interleave the cell's x (even bits) and y (odd
/// bits) in its parent: the cell is interior when neither is all zeros or all ones.
pub(crate) fn interior(cell: u64, levels: u8) -> bool {
    if levels == 0 {
        return false;
    }
    let even = 0x5555_5555_5555_5555u64 >> (64 - 2 * u32::from(levels));
    let (x, y) = (cell & even, (cell >> 1) & even);
    x != 0 && y != 0 && x != even && y != even
}

/// Probes the index.
///
/// A probe row's partners lie in its cell of the neighbourhood rule or the 8 around it. The
/// index's cells are coarser (a few rows each), so for most probe rows those 9 cells lie in
/// one index cell, whose rows are the only candidates: one look-up, and no neighbours
/// computed. Only a probe row in a rule cell at the edge of its index cell looks in the
/// index cell's 8 neighbours too. Both candidate lists are remembered for the last index
/// cell, since probe inputs are often sorted by HEALPix index.
pub(crate) struct Matcher {
    pub(crate) index: Arc<Index>,
    mode: Mode,
    /// The last index cell probed, its own range, and (when computed) the ranges of it
    /// and its neighbours.
    last_cell: Option<u64>,
    own: Option<(u32, u32)>,
    around: Option<Vec<(u32, u32)>>,
    /// Where the last look-up in the index ended.
    at: usize,
}

impl Matcher {
    pub(crate) fn new(index: Arc<Index>, mode: Mode) -> Self {
        Self {
            index,
            mode,
            last_cell: None,
            own: None,
            around: None,
            at: 0,
        }
    }

    /// The candidate ranges of a probe row in rule cell `fine`.
    fn candidates(&mut self, fine: u64) -> &[(u32, u32)] {
        let idx = &self.index;
        let levels = idx.rule_order - idx.order;
        let cell = fine >> (2 * u32::from(levels));
        if self.last_cell != Some(cell) {
            self.last_cell = Some(cell);
            self.own = idx.find(cell, &mut self.at);
            self.around = None;
        }
        if interior(fine, levels) {
            return self.own.as_slice();
        }
        self.around.get_or_insert_with(|| {
            let mut cells = Vec::with_capacity(9);
            cdshealpix::nested::get(idx.order).append_bulk_neighbours(cell, &mut cells);
            cells.push(cell);
            // The neighbours' own places, so that the next probe cell starts from this one's.
            let mut at = self.at;
            cells.iter().filter_map(|&c| idx.find(c, &mut at)).collect()
        })
    }

    /// Pairs of the probe rows at (`ra`, `dec`); in a zoned cross-match, `zones` are the
    /// probe rows' zones and only build rows of the same zone are compared.
    pub(crate) fn pairs(
        &mut self,
        ra: &Float64Array,
        dec: &Float64Array,
        zones: Option<&[u64]>,
    ) -> Pairs {
        let idx = Arc::clone(&self.index);
        let layer = cdshealpix::nested::get(idx.rule_order);
        let mode = self.mode;
        let mut out = Pairs {
            probe: Vec::new(),
            build: Vec::new(),
            chord2: Vec::new(),
        };
        for i in 0..ra.len() {
            let Some((v, lon, lat)) = unit_vector(ra, dec, i) else {
                continue;
            };
            let mut best: Option<(f64, u32)> = None;
            for &(s, e) in self.candidates(layer.hash(lon, lat)) {
                for j in s as usize..e as usize {
                    if zones.is_some_and(|z| idx.zones[j] != z[i]) {
                        continue;
                    }
                    let d = chord2(&v, &idx.xyz[j]);
                    if d > idx.chord2_max {
                        continue;
                    }
                    match mode {
                        Mode::All => {
                            out.probe.push(i as u32);
                            out.build.push(idx.rows[j]);
                            out.chord2.push(d);
                        }
                        Mode::Nearest => {
                            let better = match best {
                                None => true,
                                Some((bd, br)) => d < bd || (d == bd && idx.rows[j] < br),
                            };
                            if better {
                                best = Some((d, idx.rows[j]));
                            }
                        }
                    }
                }
            }
            if let Some((d, row)) = best {
                // The nearest partner must be within the radius exactly.
                if chord_deg(d) <= idx.radius_deg {
                    out.probe.push(i as u32);
                    out.build.push(row);
                    out.chord2.push(d);
                }
            }
        }
        out
    }
}

/// Output rows of matched pairs: left columns, then right columns, then the distance if
/// `schema` has a column more (see [`XMatchNode::with_distance`]).
pub(crate) fn assemble(
    schema: &SchemaRef,
    probe: &RecordBatch,
    build: &RecordBatch,
    pairs: Pairs,
    build_left: bool,
) -> Result<RecordBatch> {
    let p = UInt32Array::from(pairs.probe);
    let b = UInt32Array::from(pairs.build);
    let pick = |batch: &RecordBatch, idx: &UInt32Array| -> Result<Vec<Arc<dyn Array>>> {
        batch
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), idx, None)?))
            .collect()
    };
    let (mut cols, right) = if build_left {
        (pick(build, &b)?, pick(probe, &p)?)
    } else {
        (pick(probe, &p)?, pick(build, &b)?)
    };
    cols.extend(right);
    if schema.fields().len() > cols.len() {
        let deg = pairs.chord2.iter().map(|&d| chord_deg(d));
        cols.push(Arc::new(Float64Array::from_iter_values(deg)));
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(p.len()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &options,
    )?)
}

/// Splits a batch into slices of at most `size` rows; empty batches vanish.
pub(crate) fn split(batch: RecordBatch, size: usize) -> impl Iterator<Item = RecordBatch> {
    let n = batch.num_rows();
    (0..n)
        .step_by(size.max(1))
        .map(move |s| batch.slice(s, size.min(n - s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rows in a `side_deg` square at (ra, dec) = (10, -30), keyed at `order`, sorted.
    fn field(n: usize, side_deg: f64, order: u8) -> Vec<(u64, u32)> {
        let layer = cdshealpix::nested::get(order);
        let mut unit = crate::test_uniform(0x9e37_79b9_7f4a_7c15);
        let mut keyed: Vec<_> = (0..n as u32)
            .map(|i| {
                let lon = (10.0 + side_deg * unit()).to_radians();
                let lat = (-30.0 + side_deg * unit()).to_radians();
                (layer.hash(lon, lat), i)
            })
            .collect();
        keyed.sort_unstable_by_key(|k| k.0);
        keyed
    }

    fn rows_per_cell(keyed: &[(u64, u32)], finest: u8, order: u8) -> f64 {
        let shift = 2 * u32::from(finest - order);
        let mut cells: Vec<u64> = keyed.iter().map(|k| k.0 >> shift).collect();
        cells.dedup();
        keyed.len() as f64 / cells.len() as f64
    }

    #[test]
    fn rows_of_one_field_are_bucketed_by_their_own_density() {
        // 100,000 rows in one square degree: over the whole sky that is order 7 (0.46 deg
        // cells), which would put thousands of rows in each cell here.
        let finest = neighbourhood_order(1.0 / 3600.0).unwrap();
        let keyed = field(100_000, 1.0, finest);
        let order = occupancy_order(&keyed, finest);
        assert!(order > 10, "order {order}");
        assert!(rows_per_cell(&keyed, finest, order) <= ROWS_PER_CELL as f64);
        assert!(rows_per_cell(&keyed, finest, order - 1) > ROWS_PER_CELL as f64);
        // Rows all at one place stay at the finest cells the radius allows.
        let same: Vec<_> = (0..1000).map(|i| (42u64, i)).collect();
        assert_eq!(occupancy_order(&same, finest), finest);
        assert_eq!(occupancy_order(&[], finest), finest);
        // One row: one cell at any order, so the coarsest.
        assert_eq!(occupancy_order(&same[..1], finest), 0);
    }

    #[test]
    fn interior_cells_are_away_from_their_parent_edges() {
        // A 4x4 grid (levels 2): only the 4 middle cells are interior.
        let inner: Vec<u64> = (0..16).filter(|&c| interior(c, 2)).collect();
        assert_eq!(inner, vec![3, 6, 9, 12]);
        assert!(!interior(0, 0));
        // Only the low bits count: the same cell of another parent.
        assert!(interior((77 << 4) | 6, 2));
        // An 8x8 grid: 6x6 interior cells, each of whose neighbours shares the parent.
        let layer = cdshealpix::nested::get(8);
        let parent = 1234u64;
        let mut inner = 0;
        for c in (parent << 6)..((parent + 1) << 6) {
            if interior(c, 3) {
                inner += 1;
                assert!(
                    layer
                        .neighbours(c, false)
                        .values_vec()
                        .iter()
                        .all(|n| n >> 6 == parent)
                );
            }
        }
        assert_eq!(inner, 36);
    }

    /// Every pair within the radius, by comparing each probe row with every build row.
    fn brute(a: &[(f64, f64)], b: &[(f64, f64)], radius_deg: f64) -> Vec<(u32, u32)> {
        let v = |&(ra, dec): &(f64, f64)| {
            let (lon, lat) = (f64::to_radians(ra), f64::to_radians(dec));
            [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
        };
        let b: Vec<[f64; 3]> = b.iter().map(v).collect();
        let mut out = Vec::new();
        for (i, p) in a.iter().enumerate() {
            let p = v(p);
            for (j, q) in b.iter().enumerate() {
                let d = chord2(&p, q).sqrt();
                if (2.0 * (d / 2.0).asin()).to_degrees() <= radius_deg {
                    out.push((i as u32, j as u32));
                }
            }
        }
        out
    }

    #[test]
    fn cells_are_found_from_any_last_place() {
        let mut unit = crate::test_uniform(5);
        let mut cells: Vec<u64> = (0..5000).map(|_| (unit() * 1e6) as u64).collect();
        cells.sort_unstable();
        cells.dedup();
        let starts: Vec<u32> = (0..=cells.len() as u32).map(|i| 3 * i).collect();
        let index = Index {
            batch: RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty())),
            order: 10,
            rule_order: 10,
            xyz: Vec::new(),
            rows: Vec::new(),
            cells: cells.clone(),
            starts,
            zones: Vec::new(),
            chord2_max: 0.0,
            radius_deg: 0.0,
            _reservation: None,
        };
        // Probes in order (each near the last), in random order, and absent cells.
        let mut probes: Vec<u64> = (0..20_000).map(|_| (unit() * 1.01e6) as u64).collect();
        let mut sorted = probes.clone();
        sorted.sort_unstable();
        probes.extend(sorted);
        probes.extend([0, u64::MAX, cells[0], *cells.last().unwrap()]);
        let mut at = 0;
        for p in probes {
            let want = cells
                .binary_search(&p)
                .ok()
                .map(|i| (3 * i as u32, 3 * i as u32 + 3));
            assert_eq!(index.find(p, &mut at), want, "cell {p}");
        }
        let empty = Index {
            cells: Vec::new(),
            starts: vec![0],
            ..index
        };
        assert_eq!(empty.find(7, &mut at), None);
    }

    #[test]
    fn matcher_finds_the_brute_force_pairs_at_any_density() {
        use arrow::array::Float64Array;
        use arrow::datatypes::{Field, Schema};
        let mut unit = crate::test_uniform(7);
        // Dense clumps (fine index cells) and sparse rows (coarse ones), at the poles, at
        // RA 0/360 and at corners of the base cells, where neighbours are irregular.
        let centres = [
            (0.0, 90.0),
            (359.99, 0.0),
            (45.0, 41.8103),
            (90.0, -41.8103),
            (200.0, -89.99),
            (10.0, -30.0),
        ];
        for radius_deg in [1.0 / 3600.0, 20.0 / 3600.0, 0.3] {
            let mut build = Vec::new();
            let mut probe = Vec::new();
            for &(ra, dec) in &centres {
                for (n, side) in [(400, 60.0 * radius_deg), (60, 600.0 * radius_deg)] {
                    for k in 0..2 * n {
                        let d: f64 = (dec + side * (unit() - 0.5)).clamp(-90.0, 90.0);
                        let r = (ra + side * (unit() - 0.5) / d.to_radians().cos().max(0.01))
                            .rem_euclid(360.0);
                        if k % 2 == 0 {
                            build.push((r, d))
                        } else {
                            probe.push((r, d))
                        }
                    }
                }
            }
            let schema = Arc::new(Schema::new(vec![
                Field::new("ra", DataType::Float64, false),
                Field::new("dec", DataType::Float64, false),
            ]));
            let batch = |rows: &[(f64, f64)]| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.0))),
                        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    ],
                )
                .unwrap()
            };
            let pos: [Arc<dyn PhysicalExpr>; 2] = [
                Arc::new(Column::new("ra", 0)),
                Arc::new(Column::new("dec", 1)),
            ];
            let index = Index::from_batch(batch(&build), &pos, radius_deg, None, None).unwrap();
            if radius_deg < 0.01 {
                assert!(
                    index.order < index.rule_order,
                    "radius {radius_deg}: cells coarsened"
                );
            }
            let mut matcher = Matcher::new(Arc::new(index), Mode::All);
            let p = batch(&probe);
            let pairs = matcher.pairs(p.column(0).as_primitive(), p.column(1).as_primitive(), None);
            let mut got: Vec<_> = pairs.probe.into_iter().zip(pairs.build).collect();
            got.sort_unstable();
            let want = brute(&probe, &build, radius_deg);
            assert!(
                want.len() > 100,
                "radius {radius_deg}: {} pairs",
                want.len()
            );
            assert_eq!(got, want, "radius {radius_deg}");
        }
    }
}
