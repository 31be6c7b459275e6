//! A table held in memory whose rows each cover a patch of sky (ObsCore's images: a
//! centre and an outline), indexed by position so that a spatial query reads only the
//! rows near its region rather than every row.
//!
//! Recognised among the pushed-down filters:
//! - `adql_region_meets(outline, mode, shape...)` (ADQL INTERSECTS or CONTAINS on the
//!   outline column): rows whose outline can meet the shape, that is whose centre lies
//!   within the shape's bounding cap widened by the row's own radius (the farthest vertex
//!   of its outline from its centre);
//! - the point predicates on the centre columns that HATS catalogs prune by
//!   (`adql_contains_*(ra, dec, ...)`, `adql_distance(ra, dec, ...) < r`, Q3C's).
//!
//! The test is a superset (pushdown is inexact): the original predicates still decide
//! every row, so answers are exact.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use meridian_sky::SkyPoint;

use crate::region_value::{Shape, filter_shape};

/// Slack on every angular test, in degrees (1 mas is 2.8e-7 degrees): far above the
/// rounding of the unit-vector arithmetic, far below any footprint.
const SLACK_DEG: f64 = 1e-6;

/// Rows read by the last scan, against the rows held (for EXPLAIN-like checks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowsRead {
    /// Rows in the table.
    pub rows_total: usize,
    /// Rows the last scan passed on to the filters.
    pub rows_read: usize,
}

/// A spatially indexed in-memory table (see the module documentation).
#[derive(Debug)]
pub struct FootprintTable {
    batch: RecordBatch,
    ra: String,
    dec: String,
    outline: String,
    /// Rows with a centre, as (declination, row), by declination.
    by_dec: Vec<(f64, u32)>,
    /// Unit vector of each row's centre (zero for rows without one).
    centres: Vec<[f64; 3]>,
    /// Each row's radius in degrees: the farthest vertex of its outline from its centre.
    radii: Vec<f64>,
    max_radius_deg: f64,
    /// Rows without a centre: never skipped.
    unplaced: Vec<u32>,
    last: Mutex<RowsRead>,
}

/// What one filter asks of the rows' positions: their centre within `radius_deg` of
/// `centre`, widened by each row's own radius when `outline` (the filter is on the
/// outline, not the centre).
struct Reach {
    centre: [f64; 3],
    dec_deg: f64,
    radius_deg: f64,
    outline: bool,
}

impl FootprintTable {
    /// Indexes `batch` by its centre columns `ra` and `dec` (degrees) and its outline
    /// column `outline` (a list of longitude, latitude pairs in degrees, as DALI polygons).
    pub fn new(batch: RecordBatch, ra: &str, dec: &str, outline: &str) -> Result<Self> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                DataFusionError::Plan(format!("footprint table: no column '{name}'"))
            })
        };
        let float = |name: &str| -> Result<arrow::array::Float64Array> {
            let c = arrow::compute::cast(column(name)?, &DataType::Float64)?;
            Ok(c.as_primitive::<Float64Type>().clone())
        };
        let (ras, decs) = (float(ra)?, float(dec)?);
        let outlines = column(outline)?;
        let outlines = outlines.as_list_opt::<i32>().ok_or_else(|| {
            DataFusionError::Plan(format!("footprint table: '{outline}' is not a list column"))
        })?;
        let n = batch.num_rows();
        let (mut by_dec, mut unplaced) = (Vec::with_capacity(n), Vec::new());
        let mut centres = vec![[0.0; 3]; n];
        let mut radii = vec![0.0; n];
        for i in 0..n {
            let centre = (ras.is_valid(i) && decs.is_valid(i))
                .then(|| SkyPoint::new(ras.value(i).rem_euclid(360.0), decs.value(i)).ok())
                .flatten();
            let Some(c) = centre else {
                unplaced.push(i as u32);
                continue;
            };
            centres[i] = c.to_unit_vector();
            by_dec.push((c.dec_deg(), i as u32));
            if outlines.is_valid(i) {
                let v = arrow::compute::cast(&outlines.value(i), &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                for k in (0..v.len().saturating_sub(1)).step_by(2) {
                    if let Ok(p) = SkyPoint::new(v.value(k).rem_euclid(360.0), v.value(k + 1)) {
                        radii[i] = f64::max(radii[i], p.separation_deg(&c));
                    }
                }
            }
        }
        by_dec.sort_by(|a, b| a.0.total_cmp(&b.0));
        let max_radius_deg = radii.iter().copied().fold(0.0, f64::max);
        Ok(Self {
            batch,
            ra: ra.to_string(),
            dec: dec.to_string(),
            outline: outline.to_string(),
            by_dec,
            centres,
            radii,
            max_radius_deg,
            unplaced,
            last: Mutex::new(RowsRead::default()),
        })
    }

    /// Rows read by the most recent scan.
    pub fn last_read(&self) -> RowsRead {
        *self.last.lock().expect("rows-read lock")
    }

    /// What `filter` asks of positions, if it is a spatial filter this table knows.
    fn reach(&self, filter: &Expr) -> Option<Reach> {
        let (cap, outline) = match filter_shape(filter, &self.outline) {
            Some(Shape::Point(p)) => ((p, 0.0), true),
            Some(Shape::Region(r)) => (r.bounding_cap()?, true),
            None => (
                crate::hats_table::region_of(filter, &self.ra, &self.dec)?.bounding_cap()?,
                false,
            ),
        };
        Some(Reach {
            centre: cap.0.to_unit_vector(),
            dec_deg: cap.0.dec_deg(),
            radius_deg: cap.1,
            outline,
        })
    }

    /// The rows (in table order) that every reach in `reaches` may select.
    fn rows(&self, reaches: &[Reach]) -> Vec<u32> {
        let Some(first) = reaches
            .iter()
            .min_by(|a, b| a.radius_deg.total_cmp(&b.radius_deg))
        else {
            return (0..self.batch.num_rows() as u32).collect();
        };
        // Declinations within reach of the narrowest filter.
        let widen = if first.outline {
            self.max_radius_deg
        } else {
            0.0
        };
        let half = first.radius_deg + widen + SLACK_DEG;
        let lo = self
            .by_dec
            .partition_point(|(d, _)| *d < first.dec_deg - half);
        let hi = self
            .by_dec
            .partition_point(|(d, _)| *d <= first.dec_deg + half);
        let mut rows: Vec<u32> = self.by_dec[lo..hi]
            .iter()
            .map(|(_, i)| *i)
            .filter(|&i| {
                reaches.iter().all(|r| {
                    let c = &self.centres[i as usize];
                    let dot = (c[0] * r.centre[0] + c[1] * r.centre[1] + c[2] * r.centre[2])
                        .clamp(-1.0, 1.0);
                    let reach = r.radius_deg
                        + if r.outline {
                            self.radii[i as usize]
                        } else {
                            0.0
                        }
                        + SLACK_DEG;
                    reach >= 180.0 || dot.acos().to_degrees() <= reach
                })
            })
            .collect();
        rows.extend_from_slice(&self.unplaced);
        rows.sort_unstable();
        rows
    }
}

#[async_trait::async_trait]
impl TableProvider for FootprintTable {
    fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let reaches: Vec<Reach> = filters.iter().filter_map(|f| self.reach(f)).collect();
        let batch = if reaches.is_empty() {
            self.batch.clone()
        } else {
            let rows = UInt32Array::from(self.rows(&reaches));
            arrow::compute::take_record_batch(&self.batch, &rows)?
        };
        *self.last.lock().expect("rows-read lock") = RowsRead {
            rows_total: self.batch.num_rows(),
            rows_read: batch.num_rows(),
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.batch.schema(),
            projection.cloned(),
        )?)
    }
}
