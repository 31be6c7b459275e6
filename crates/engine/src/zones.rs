//! The zoned cross-match: both inputs cut into coarse HEALPix zones, with a margin, so that
//! the join runs zone by zone and never needs a whole input in memory.
//!
//! A zone is a HEALPix cell at [`zone_orders`], 16 times wider than the cells of the
//! neighbourhood rule ([`neighbourhood_order`], cells wider than the radius) and no finer
//! than order 10. [`ZoneExec`] tags each probe row with the zone that holds it, and each
//! build row with the zone that holds it and, as a margin copy, every other zone that holds
//! one of its neighbourhood cells: every build row within the radius of a probe row is then
//! tagged with the probe row's zone, exactly once, and only rows of the same zone are
//! compared.
//!
//! The cross-match operator asks for both inputs hash-partitioned alike by zone, so
//! DataFusion (or Ballista, between stages) sends each zone's rows of both sides to one
//! partition. A partition whose build rows fit in its share of the memory budget indexes
//! them and streams its probe rows past. Otherwise (a grace join) it writes both sides to
//! disk in runs cut into buckets of zones, and matches one bucket at a time: memory is then
//! one bucket of build rows, whatever the sizes of the inputs. This is what lets an indexed
//! side larger than the memory budget be cross-matched, and what spreads a cross-match
//! over a cluster's executors.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use meridian_sky::healpix::neighbourhood_order;

use crate::xmatch::{Index, Matcher, Mode, assemble, interior, lon_lat, positions, split};

/// The zone column [`ZoneExec`] appends to its input's columns.
pub const ZONE_COLUMN: &str = "__xmatch_zone";

/// Cells of the neighbourhood rule per zone side, as a power of two.
const ZONE_LEVELS: u8 = 4;

/// The finest zone order (cells of 3.4 arcmin): finer zones would only add per-zone work.
const MAX_ZONE_ORDER: u8 = 10;

/// (neighbourhood order, zone order) for a radius, `None` beyond the neighbourhood rule.
pub fn zone_orders(radius_deg: f64) -> Option<(u8, u8)> {
    let n = neighbourhood_order(radius_deg)?;
    Some((n, n.saturating_sub(ZONE_LEVELS).min(MAX_ZONE_ORDER)))
}

/// Rows of a batch with their zone tags: the source row of each output row, and its zone.
/// Rows without a valid position have no zone and are left out (they match nothing).
fn tag(
    ra: &Float64Array,
    dec: &Float64Array,
    (order, zone_order): (u8, u8),
    margin: bool,
) -> (Vec<u32>, Vec<u64>) {
    let layer = cdshealpix::nested::get(order);
    let levels = order - zone_order;
    let shift = 2 * levels as u32;
    let mut rows = Vec::with_capacity(ra.len());
    let mut zones = Vec::with_capacity(ra.len());
    let mut neighbours = Vec::with_capacity(8);
    for i in 0..ra.len() {
        let Some((lon, lat)) = lon_lat(ra, dec, i) else {
            continue;
        };
        let cell = layer.hash(lon, lat);
        let own = cell >> shift;
        rows.push(i as u32);
        zones.push(own);
        if !margin || interior(cell, levels) {
            continue;
        }
        let first = zones.len() - 1;
        neighbours.clear();
        layer.append_bulk_neighbours(cell, &mut neighbours);
        for &c in &neighbours {
            let z = c >> shift;
            if !zones[first..].contains(&z) {
                rows.push(i as u32);
                zones.push(z);
            }
        }
    }
    (rows, zones)
}

/// Appends the zone column to its input's rows: one row per probe row (`margin` false) or
/// one per zone a build row reaches (`margin` true). See the module documentation.
#[derive(Debug)]
pub struct ZoneExec {
    pub(crate) input: Arc<dyn ExecutionPlan>,
    pub(crate) pos: [Arc<dyn PhysicalExpr>; 2],
    pub(crate) radius_deg: f64,
    pub(crate) margin: bool,
    properties: Arc<PlanProperties>,
}

impl ZoneExec {
    /// Zones of `input`'s rows, whose (RA, Dec) in degrees are `pos`, for a cross-match of
    /// radius `radius_deg`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        pos: [Arc<dyn PhysicalExpr>; 2],
        radius_deg: f64,
        margin: bool,
    ) -> Result<Self> {
        if zone_orders(radius_deg).is_none() {
            return Err(DataFusionError::Plan(format!(
                "cross-match radius {radius_deg} deg is not between 0 and 29 deg"
            )));
        }
        let mut fields: Vec<_> = input.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(ZONE_COLUMN, DataType::UInt64, false)));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input.schema().metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            pos,
            radius_deg,
            margin,
            properties,
        })
    }
}

impl DisplayAs for ZoneExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let (n, z) = zone_orders(self.radius_deg).unwrap_or((0, 0));
        write!(
            f,
            "ZoneExec: zone_order={z}, neighbourhood_order={n}, margin={}",
            self.margin
        )
    }
}

impl ExecutionPlan for ZoneExec {
    fn name(&self) -> &str {
        "ZoneExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.pos.iter(), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input]: [Arc<dyn ExecutionPlan>; 1] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("ZoneExec takes 1 child".into()))?;
        Ok(Arc::new(Self::try_new(
            input,
            self.pos.clone(),
            self.radius_deg,
            self.margin,
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (pos, margin, schema) = (self.pos.clone(), self.margin, self.schema());
        let orders = zone_orders(self.radius_deg).expect("radius checked when planned");
        let out = schema.clone();
        let stream = input.map(move |batch| {
            let batch = batch?;
            let [ra, dec] = positions(&pos, &batch)?;
            let (rows, zones) = tag(&ra, &dec, orders, margin);
            let rows = take_record_batch(&batch, &UInt32Array::from(rows))?;
            let mut cols = rows.columns().to_vec();
            cols.push(Arc::new(UInt64Array::from(zones)));
            Ok(RecordBatch::try_new(out.clone(), cols)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Buckets of zones per partition: when a partition's build rows do not fit in memory,
/// both its inputs are written to disk by bucket, and matched one bucket at a time.
const BUCKETS: usize = 64;

/// The zones of a zone-tagged batch (its last column).
fn zones_of(batch: &RecordBatch) -> Result<&UInt64Array> {
    batch
        .column(batch.num_columns() - 1)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| DataFusionError::Internal("zone column is not UInt64".into()))
}

/// The rows of a zone-tagged batch (without the zone column) and their zones.
fn untag(batch: &RecordBatch) -> Result<(RecordBatch, Vec<u64>)> {
    let zones = zones_of(batch)?.values().to_vec();
    let n = batch.num_columns();
    Ok((batch.project(&(0..n - 1).collect::<Vec<_>>())?, zones))
}

/// A run of batches written to disk, in bucket order, and the bucket of each batch still
/// to be read.
struct Run {
    stream: SendableRecordBatchStream,
    buckets: VecDeque<usize>,
}

/// One input of a partition, cut into buckets: batches in memory, and runs on disk.
struct Side {
    memory: Vec<Vec<RecordBatch>>,
    /// Bytes accounted for the batches in memory (with, on the build side, their index).
    bytes: usize,
    /// Bytes accounted per row beside the row's own.
    row_extra: usize,
    runs: Vec<Run>,
    spill: SpillManager,
}

impl Side {
    fn new(spill: SpillManager, row_extra: usize) -> Self {
        Self {
            memory: vec![Vec::new(); BUCKETS],
            bytes: 0,
            row_extra,
            runs: Vec::new(),
            spill,
        }
    }

    /// Cuts a zone-tagged batch by bucket and keeps the pieces in memory; returns the bytes
    /// to account for them.
    fn push(&mut self, batch: RecordBatch) -> Result<usize> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let buckets: Vec<u32> = zones_of(&batch)?
            .values()
            .iter()
            .map(|z| (z % BUCKETS as u64) as u32)
            .collect();
        let mut order: Vec<u32> = (0..buckets.len() as u32).collect();
        order.sort_unstable_by_key(|&i| buckets[i as usize]);
        let order = UInt32Array::from(order);
        let sorted = take_record_batch(&batch, &order)?;
        let bytes = sorted.get_array_memory_size() + sorted.num_rows() * self.row_extra;
        let mut start = 0;
        while start < order.len() {
            let b = buckets[order.value(start) as usize];
            let mut end = start + 1;
            while end < order.len() && buckets[order.value(end) as usize] == b {
                end += 1;
            }
            self.memory[b as usize].push(sorted.slice(start, end - start));
            start = end;
        }
        self.bytes += bytes;
        Ok(bytes)
    }

    /// Writes the batches in memory to disk as one run and gives their bytes back to
    /// `reservation`.
    fn write_run(&mut self, reservation: &mut MemoryReservation) -> Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let mut file = self.spill.create_in_progress_file("cross-match zones")?;
        let mut buckets = VecDeque::new();
        for (b, batches) in self.memory.iter_mut().enumerate() {
            for batch in batches.drain(..) {
                file.append_batch(&batch)?;
                buckets.push_back(b);
            }
        }
        if let Some(file) = file.finish()? {
            let stream = self.spill.read_spill_as_stream_unbuffered(file, None)?;
            self.runs.push(Run { stream, buckets });
        }
        let freed = std::mem::take(&mut self.bytes);
        reservation.shrink(freed.min(reservation.size()));
        Ok(())
    }

    /// The next batch of bucket `b`, from memory, then from each run on disk; `None` when
    /// the bucket is exhausted. Buckets are read in increasing order.
    async fn next_of(&mut self, b: usize) -> Result<Option<RecordBatch>> {
        if let Some(batch) = self.memory[b].pop() {
            return Ok(Some(batch));
        }
        for run in &mut self.runs {
            if run.buckets.front() == Some(&b) {
                run.buckets.pop_front();
                let batch = run.stream.next().await.ok_or_else(|| {
                    DataFusionError::Internal("a cross-match run ended early".into())
                })??;
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }
}

/// One partition of a zoned cross-match (see the module documentation).
pub(crate) struct ZonedJoin {
    pub(crate) build: SendableRecordBatchStream,
    pub(crate) probe: SendableRecordBatchStream,
    pub(crate) build_pos: [Arc<dyn PhysicalExpr>; 2],
    pub(crate) probe_pos: [Arc<dyn PhysicalExpr>; 2],
    pub(crate) radius_deg: f64,
    pub(crate) mode: Mode,
    pub(crate) build_left: bool,
    pub(crate) schema: SchemaRef,
    pub(crate) context: Arc<TaskContext>,
    pub(crate) metrics: ExecutionPlanMetricsSet,
    pub(crate) partition: usize,
}

/// Sends a batch of pairs in slices of the session's batch size; `false` when the
/// consumer has gone.
async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    batch: RecordBatch,
    batch_size: usize,
) -> bool {
    for b in split(batch, batch_size) {
        if tx.send(Ok(b)).await.is_err() {
            return false;
        }
    }
    true
}

impl ZonedJoin {
    /// Accounts `bytes` of `side` in `reservation`, writing the side's batches in memory
    /// to disk first if the pool is short.
    fn reserve(reservation: &mut MemoryReservation, bytes: usize, side: &mut Side) -> Result<()> {
        if reservation.try_grow(bytes).is_ok() {
            return Ok(());
        }
        side.write_run(reservation)?;
        reservation.try_grow(bytes)
    }

    /// An index of build rows (zone-tagged batches), accounted in `reservation`.
    /// `read` says whether the batches were just read from disk (not yet accounted) or
    /// were accounted, with their index entries, when they arrived.
    fn index(
        &self,
        batches: Vec<RecordBatch>,
        read: bool,
        reservation: &mut MemoryReservation,
    ) -> Result<Option<Matcher>> {
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let batch = concat_batches(&first.schema(), &batches)?;
        drop(batches);
        let (rows, zones) = untag(&batch)?;
        let bytes = if read {
            batch.get_array_memory_size() + zones.len() * Index::ENTRY_BYTES
        } else {
            0
        };
        reservation.try_grow(bytes).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "a bucket of cross-match zones is larger than the memory budget ({})",
                e.strip_backtrace()
            ))
        })?;
        let index = Index::from_batch(rows, &self.build_pos, self.radius_deg, Some(zones), None)?;
        Ok(Some(Matcher::new(Arc::new(index), self.mode)))
    }

    /// The pairs of one zone-tagged probe batch.
    fn pairs(&self, matcher: &mut Matcher, batch: &RecordBatch) -> Result<RecordBatch> {
        let (rows, zones) = untag(batch)?;
        let [ra, dec] = positions(&self.probe_pos, &rows)?;
        let pairs = matcher.pairs(&ra, &dec, Some(&zones));
        assemble(
            &self.schema,
            &rows,
            &matcher.index.batch,
            pairs,
            self.build_left,
        )
    }

    /// Runs the partition, sending its pairs to `tx`.
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>) -> Result<()> {
        let batch_size = self.context.session_config().batch_size();
        let mut reservation = MemoryConsumer::new(format!("XMatchZones[{}]", self.partition))
            .with_can_spill(true)
            .register(self.context.memory_pool());
        let spill = |schema: SchemaRef| {
            SpillManager::new(
                self.context.runtime_env(),
                SpillMetrics::new(&self.metrics, self.partition),
                schema,
            )
        };
        // Build rows are accounted with their index entries, so that the choice between one
        // index and buckets knows what the index will take.
        let mut build = Side::new(spill(self.build.schema()), Index::ENTRY_BYTES);
        let mut probe = Side::new(spill(self.probe.schema()), 0);
        while let Some(batch) = self.build.next().await {
            let bytes = build.push(batch?)?;
            Self::reserve(&mut reservation, bytes, &mut build)?;
        }
        if build.runs.is_empty() {
            // The build rows fit in memory: one index, and the probe rows stream past it.
            let batches = build.memory.iter_mut().flat_map(std::mem::take).collect();
            let Some(mut matcher) = self.index(batches, false, &mut reservation)? else {
                return Ok(());
            };
            while let Some(batch) = self.probe.next().await {
                let out = self.pairs(&mut matcher, &batch?)?;
                if !send(&tx, out, batch_size).await {
                    return Ok(());
                }
            }
            return Ok(());
        }
        // Both sides go to disk by bucket, then each bucket is matched on its own.
        build.write_run(&mut reservation)?;
        while let Some(batch) = self.probe.next().await {
            let bytes = probe.push(batch?)?;
            Self::reserve(&mut reservation, bytes, &mut probe)?;
        }
        // The probe rows still in memory stay accounted to the end.
        let base = reservation.size();
        for b in 0..BUCKETS {
            let mut batches = Vec::new();
            while let Some(batch) = build.next_of(b).await? {
                batches.push(batch);
            }
            let mut matcher = self.index(batches, true, &mut reservation)?;
            while let Some(batch) = probe.next_of(b).await? {
                if let Some(matcher) = &mut matcher {
                    let out = self.pairs(matcher, &batch)?;
                    if !send(&tx, out, batch_size).await {
                        return Ok(());
                    }
                }
            }
            drop(matcher);
            reservation.shrink(reservation.size().saturating_sub(base));
        }
        Ok(())
    }

    /// The partition's output stream.
    pub(crate) fn into_stream(self) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 2);
        let tx = builder.tx();
        builder.spawn(self.run(tx));
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of points within the radius shares a zone exactly once: the probe row's
    /// zone holds one copy of each build row near it.
    #[test]
    fn margins_hold_every_close_pair_once() {
        use crate::xmatch::unit_vector;
        let mut next = crate::test_uniform(12345);
        for radius_arcsec in [1.0, 5.0, 60.0, 3600.0] {
            let r = radius_arcsec / 3600.0;
            let orders = zone_orders(r).unwrap();
            // Points near the poles, RA=0 and base-cell corners as well as anywhere.
            let mut ra = Vec::new();
            let mut dec = Vec::new();
            for k in 0..2000 {
                let (a, d) = match k % 4 {
                    0 => (next() * 360.0, (next() * 2.0 - 1.0).asin().to_degrees()),
                    1 => (next() * 360.0, 90.0 - next() * 3.0 * r),
                    2 => ((next() - 0.5) * 4.0 * r + 360.0, next() * 10.0 - 5.0),
                    _ => (
                        45.0 + (next() - 0.5) * 4.0 * r,
                        41.81 + (next() - 0.5) * 4.0 * r,
                    ),
                };
                ra.push(a.rem_euclid(360.0));
                dec.push(d.clamp(-90.0, 90.0));
            }
            let (ra, dec) = (Float64Array::from(ra), Float64Array::from(dec));
            let (prows, pzones) = tag(&ra, &dec, orders, false);
            let (brows, bzones) = tag(&ra, &dec, orders, true);
            assert_eq!(prows.len(), ra.len());
            let v: Vec<_> = (0..ra.len())
                .map(|i| unit_vector(&ra, &dec, i).unwrap().0)
                .collect();
            let mut copies = std::collections::HashMap::new();
            for (&b, &bz) in brows.iter().zip(&bzones) {
                *copies.entry((b, bz)).or_insert(0) += 1;
            }
            let chord = 2.0 * (r.to_radians() / 2.0).sin();
            for (&p, &pz) in prows.iter().zip(&pzones) {
                for q in 0..ra.len() {
                    let d = v[p as usize]
                        .iter()
                        .zip(&v[q])
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f64>();
                    if d > chord * chord {
                        continue;
                    }
                    let n = copies.get(&(q as u32, pz)).copied().unwrap_or(0);
                    assert_eq!(n, 1, "r={radius_arcsec}\" probe {p} build {q}");
                }
            }
        }
    }
}
