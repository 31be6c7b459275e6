//! A HATS catalog as a DataFusion table. Spatial predicates among the pushed-down filters
//! (`adql_contains_*(ra, dec, literals...) = 1`, `adql_distance(ra, dec, lit, lit) < r`,
//! `q3c_radial_query(ra, dec, lit, lit, lit)`) become HEALPix order-29 ranges: partitions
//! outside them are never opened, and an equivalent `_healpix_29` range filter lets the
//! Parquet reader skip row groups and pages by their statistics. The original predicate
//! stays in the plan (pushdown is inexact), so results are exact.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Statistics;
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, col, lit};
use datafusion::object_store::ObjectStoreExt;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use meridian_catalog::{Catalog, Pixel};
use meridian_sky::{Circle, Polygon, Region, SkyBox, SkyPoint};

/// Partitions read by the last scan, against the total (for EXPLAIN and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruning {
    /// Partitions in the catalog.
    pub partitions_total: usize,
    /// Partitions the scan reads.
    pub partitions_read: usize,
}

/// A partition file as the Parquet scan sees it: its object (path, size, modification
/// time, which key the shared metadata cache) and the statistics of its footer.
#[derive(Debug, Clone)]
struct PartitionFile {
    pixel: Pixel,
    file: PartitionedFile,
    /// Why the file cannot be read, if it cannot.
    broken: Option<String>,
}

impl PartitionFile {
    fn rows(&self) -> usize {
        self.file
            .statistics
            .as_ref()
            .and_then(|s| s.num_rows.get_value().copied())
            .unwrap_or(0)
    }
}

/// A HATS catalog served to DataFusion.
#[derive(Debug)]
pub struct HatsTable {
    schema: SchemaRef,
    current: Mutex<Arc<Snapshot>>,
    /// The store entry whose new versions this table follows, if any.
    live: Option<Live>,
    last: Mutex<Pruning>,
}

/// A store catalog that grows (appends publish new versions): each scan reads the version
/// current when it is planned.
#[derive(Debug)]
struct Live {
    store: meridian_catalog::Store,
    name: String,
}

/// One version of the catalog.
#[derive(Debug)]
struct Snapshot {
    catalog: Arc<Catalog>,
    /// The version directory, for a [`Live`] table.
    version: Option<std::path::PathBuf>,
    /// Read once, on the first scan: a catalog version never changes on disk (a re-ingest
    /// or an append writes a new version), so no query lists or stats files again.
    files: tokio::sync::OnceCell<Vec<PartitionFile>>,
}

impl HatsTable {
    /// Wraps an opened catalog.
    pub fn new(catalog: Catalog) -> Self {
        Self::with_snapshot(catalog, None, None)
    }

    fn with_snapshot(
        catalog: Catalog,
        version: Option<std::path::PathBuf>,
        live: Option<Live>,
    ) -> Self {
        Self {
            schema: catalog.schema(),
            current: Mutex::new(Arc::new(Snapshot {
                catalog: Arc::new(catalog),
                version,
                files: tokio::sync::OnceCell::new(),
            })),
            live,
            last: Mutex::new(Pruning::default()),
        }
    }

    /// Catalog `name` of `store`. One that Meridian wrote is followed: a query reads the
    /// version current when it is planned, so rows appended (or a re-ingest with the same
    /// columns) are seen without a restart, and a version is read whole by the queries
    /// that opened it. Others (served in place, in an object store) are opened once.
    pub fn open(store: &meridian_catalog::Store, name: &str) -> meridian_catalog::Result<Self> {
        match store.current_version(name)? {
            Some(version) => Ok(Self::with_snapshot(
                Catalog::open(&version)?,
                Some(version),
                Some(Live {
                    store: store.clone(),
                    name: name.to_string(),
                }),
            )),
            None => Ok(Self::new(store.catalog(name)?)),
        }
    }

    /// The version to read: the current one of a followed catalog (opened on first use;
    /// one whose columns changed is not taken, with a warning: the table's columns are
    /// fixed while it is served).
    fn snapshot(&self) -> Arc<Snapshot> {
        let held = self.current.lock().expect("snapshot lock").clone();
        let Some(live) = &self.live else {
            return held;
        };
        let Ok(Some(version)) = live.store.current_version(&live.name) else {
            return held;
        };
        if held.version.as_ref() == Some(&version) {
            return held;
        }
        match Catalog::open(&version) {
            // The same columns, or more (rows of a newer alert schema): the table keeps
            // its columns until a restart, and reads them from the new version.
            Ok(c) if extends(&c.schema(), &self.schema) => {
                let snap = Arc::new(Snapshot {
                    catalog: Arc::new(c),
                    version: Some(version),
                    files: tokio::sync::OnceCell::new(),
                });
                *self.current.lock().expect("snapshot lock") = snap.clone();
                snap
            }
            Ok(_) => {
                tracing::warn!(
                    catalog = %live.name,
                    version = %version.display(),
                    "a new version of the catalog lacks or retypes columns: serving the one opened until a restart"
                );
                held
            }
            Err(e) => {
                tracing::warn!(catalog = %live.name, error = %e, "cannot open the catalog's new version");
                held
            }
        }
    }
}

/// Whether `new` has every column of `old`, of the same type.
fn extends(new: &SchemaRef, old: &SchemaRef) -> bool {
    old.fields().iter().all(|f| {
        new.field_with_name(f.name())
            .is_ok_and(|n| n.data_type() == f.data_type())
    })
}

impl Snapshot {
    /// Every partition file with its statistics for the table's columns `schema` (exact
    /// row counts and column bounds from the footers, which also fills the session's
    /// metadata cache).
    async fn files(&self, state: &dyn Session, schema: &SchemaRef) -> Result<&[PartitionFile]> {
        let files = self
            .files
            .get_or_try_init(|| async {
                use futures::{StreamExt, TryStreamExt};
                let store = state.runtime_env().object_store(self.store_url()?)?;
                let cache = state.runtime_env().cache_manager.get_file_metadata_cache();
                let location = self.catalog.location();
                // Footers are read a few at a time: from an object store each is a request.
                let parts: Vec<(Pixel, String)> = self
                    .catalog
                    .partitions()
                    .iter()
                    .flat_map(|p| self.catalog.partition_files(p).into_iter().map(|f| (*p, f)))
                    .collect();
                let mut files: Vec<PartitionFile> = futures::stream::iter(parts)
                    .map(|(pixel, rel)| {
                        let (store, cache) = (&store, &cache);
                        async move {
                            let (_, path) = location
                                .object_path(&rel)
                                .map_err(|e| DataFusionError::External(Box::new(e)))?;
                            // A file that cannot be read fails the scans that need it, named
                            // with its partition, not every scan of the catalog.
                            let broken = |e: &dyn std::fmt::Display| PartitionFile {
                                pixel,
                                file: PartitionedFile::new(path.to_string(), 0),
                                broken: Some(format!(
                                    "partition {pixel} cannot be read: {}: {e}",
                                    location.name_of(&rel)
                                )),
                            };
                            let meta = match store.head(&path).await {
                                Ok(m) => m,
                                Err(e) => return Ok::<_, DataFusionError>(broken(&e)),
                            };
                            let stats = match DFParquetMetadata::new(store.as_ref(), &meta)
                                .with_file_metadata_cache(Some(cache.clone()))
                                .fetch_statistics(schema)
                                .await
                            {
                                Ok(s) => s,
                                Err(e) => return Ok(broken(&e)),
                            };
                            Ok(PartitionFile {
                                pixel,
                                file: PartitionedFile::from(meta).with_statistics(Arc::new(stats)),
                                broken: None,
                            })
                        }
                    })
                    .buffered(16)
                    .try_collect()
                    .await?;
                // In `_healpix_29` order, as the declared sort order of the scan requires
                // (a partition's files, when it has several, in the order listed).
                files.sort_by_key(|f| f.pixel.hpx29_range().start);
                Ok::<_, DataFusionError>(files)
            })
            .await?;
        Ok(files)
    }

    /// The object store holding the catalog's files, as DataFusion names it.
    fn store_url(&self) -> Result<ObjectStoreUrl> {
        let (base, _) = self
            .catalog
            .location()
            .object_path("")
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        ObjectStoreUrl::parse(base)
    }
}

impl HatsTable {
    /// The catalog served (its current version).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.snapshot().catalog.clone()
    }

    /// The version directory served, for a catalog Meridian wrote (the current one, unless
    /// it cannot be served: see [`HatsTable::open`]).
    pub fn version(&self) -> Option<std::path::PathBuf> {
        self.snapshot().version.clone()
    }

    /// Forgets the figures of earlier scans.
    pub fn reset_pruning(&self) {
        *self.last.lock().expect("pruning lock") = Pruning::default();
    }

    /// Pruning figures of the most recent scan.
    pub fn last_pruning(&self) -> Pruning {
        *self.last.lock().expect("pruning lock")
    }

    /// The sky region that `filters` restrict the positions to, if one can be read off.
    fn region(catalog: &Catalog, filters: &[Expr]) -> Option<Region> {
        filters
            .iter()
            .find_map(|f| region_of(f, catalog.ra_column(), catalog.dec_column()))
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == name,
        Expr::Cast(c) => is_column(&c.expr, name),
        Expr::TryCast(c) => is_column(&c.expr, name),
        _ => false,
    }
}

/// The value of a numeric literal (through casts and negation).
pub(crate) fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Float64(Some(x)) => Some(*x),
            ScalarValue::Float32(Some(x)) => Some(*x as f64),
            ScalarValue::Int64(Some(x)) => Some(*x as f64),
            ScalarValue::Int32(Some(x)) => Some(*x as f64),
            ScalarValue::Int16(Some(x)) => Some(*x as f64),
            ScalarValue::Int8(Some(x)) => Some(*x as f64),
            ScalarValue::UInt64(Some(x)) => Some(*x as f64),
            ScalarValue::UInt32(Some(x)) => Some(*x as f64),
            _ => None,
        },
        Expr::Cast(c) => number(&c.expr),
        Expr::TryCast(c) => number(&c.expr),
        Expr::Negative(inner) => number(inner).map(|x| -x),
        _ => None,
    }
}

/// The numbers of an array literal (`ARRAY[...]`, `[...]`, `make_array(...)`).
fn array_numbers(e: &Expr) -> Option<Vec<f64>> {
    match e {
        Expr::Literal(ScalarValue::List(list), _) if list.len() == 1 && !list.is_null(0) => {
            let values =
                arrow::compute::cast(&list.value(0), &arrow::datatypes::DataType::Float64).ok()?;
            let v = arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(&values);
            (v.null_count() == 0).then(|| v.values().to_vec())
        }
        Expr::ScalarFunction(f) if f.func.name() == "make_array" => {
            f.args.iter().map(number).collect()
        }
        Expr::Cast(c) => array_numbers(&c.expr),
        _ => None,
    }
}

/// The region a spatial function call on (ra, dec) with literal arguments selects.
fn call_region(f: &ScalarFunction, ra: &str, dec: &str, bound: Option<f64>) -> Option<Region> {
    let a = &f.args;
    if a.len() < 2 || !is_column(&a[0], ra) || !is_column(&a[1], dec) {
        return None;
    }
    if f.func.name() == "adql_contains_moc" && a.len() == 3 && bound.is_none() {
        let Expr::Literal(datafusion::scalar::ScalarValue::Utf8(Some(text)), _) = &a[2] else {
            return None;
        };
        return meridian_sky::moc_parse(text.as_bytes())
            .ok()
            .map(|m| Region::Moc(Box::new(m)));
    }
    let nums: Option<Vec<f64>> = if f.func.name() == "q3c_poly_query" && a.len() == 3 {
        array_numbers(&a[2])
    } else {
        a[2..].iter().map(number).collect()
    };
    let v = nums?;
    let point = |i: usize| SkyPoint::new(v[i], v[i + 1]).ok();
    match (f.func.name(), bound) {
        ("adql_contains_circle" | "q3c_radial_query", None) if v.len() == 3 => {
            Circle::new(point(0)?, v[2]).ok().map(Region::Circle)
        }
        ("adql_contains_box", None) if v.len() == 4 => {
            SkyBox::new(point(0)?, v[2], v[3]).ok().map(Region::Box)
        }
        ("adql_contains_polygon" | "q3c_poly_query", None)
            if v.len() >= 6 && v.len().is_multiple_of(2) =>
        {
            let pts: Option<Vec<SkyPoint>> = (0..v.len()).step_by(2).map(point).collect();
            Polygon::new(pts?).ok().map(Region::Polygon)
        }
        ("adql_distance" | "q3c_dist", Some(r)) if v.len() == 2 => {
            Circle::new(point(0)?, r).ok().map(Region::Circle)
        }
        _ => None,
    }
}

/// Reads a region off one filter conjunct.
pub(crate) fn region_of(e: &Expr, ra: &str, dec: &str) -> Option<Region> {
    let (f, bound) = spatial_call(e)?;
    call_region(f, ra, dec, bound)
}

/// The function call of a spatial predicate and its bound: a bare call or `f(...) = 1` give
/// `(f, None)`; `f(...) < r` or `f(...) <= r` (either way round) give `(f, Some(r))`. The
/// caller checks the function's name and arguments.
pub(crate) fn spatial_call(e: &Expr) -> Option<(&ScalarFunction, Option<f64>)> {
    match e {
        Expr::ScalarFunction(f) => Some((f, None)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (func, other, op) = match (&**left, &**right) {
                (Expr::ScalarFunction(f), other) => (f, other, *op),
                (other, Expr::ScalarFunction(f)) => (f, other, op.swap()?),
                _ => return None,
            };
            let value = number(other)?;
            match op {
                Operator::Eq if value == 1.0 => Some((func, None)),
                Operator::Lt | Operator::LtEq => Some((func, Some(value))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `files` (in order) cut into at most `n` runs of consecutive files with about equal rows.
fn contiguous_groups(files: &[&PartitionFile], n: usize) -> Vec<FileGroup> {
    let total: usize = files.iter().map(|f| f.rows()).sum();
    let per_group = total.div_ceil(n.max(1)).max(1);
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut rows = 0;
    for f in files {
        current.push(f.file.clone());
        rows += f.rows();
        if rows >= per_group {
            groups.push(FileGroup::new(std::mem::take(&mut current)));
            rows = 0;
        }
    }
    if !current.is_empty() {
        groups.push(FileGroup::new(current));
    }
    groups
}

/// `_healpix_29` range filter equivalent to (a superset of) `ranges`, at most `max` terms.
fn hpx_filter(column: &str, ranges: &[Range<u64>], max: usize) -> Option<Expr> {
    if ranges.is_empty() {
        return None;
    }
    // Merge the closest neighbours until few enough ranges remain.
    let mut r: Vec<Range<u64>> = ranges.to_vec();
    while r.len() > max {
        let (i, _) = r
            .windows(2)
            .enumerate()
            .min_by_key(|(_, w)| w[1].start - w[0].end)?;
        r[i].end = r[i + 1].end;
        r.remove(i + 1);
    }
    r.into_iter()
        .map(|x| {
            col(column)
                .gt_eq(lit(x.start as i64))
                .and(col(column).lt(lit(x.end as i64)))
        })
        .reduce(|a, b| a.or(b))
}

#[async_trait::async_trait]
impl TableProvider for HatsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snap = self.snapshot();
        let catalog = snap.catalog.as_ref();
        let region = Self::region(catalog, filters);
        let ranges = match &region {
            Some(r) => Some(
                r.hpx29_ranges(meridian_catalog::coverage_order(r))
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?,
            ),
            None => None,
        };
        let files: Vec<&PartitionFile> = snap
            .files(state, &self.schema)
            .await?
            .iter()
            .filter(|f| {
                ranges
                    .as_ref()
                    .is_none_or(|r| meridian_catalog::overlaps(r, &f.pixel.hpx29_range()))
            })
            .collect();
        if let Some(why) = files.iter().find_map(|f| f.broken.as_ref()) {
            return Err(DataFusionError::Execution(why.clone()));
        }
        *self.last.lock().expect("pruning lock") = Pruning {
            partitions_total: catalog.partitions().len(),
            partitions_read: {
                let mut pixels: Vec<Pixel> = files.iter().map(|f| f.pixel).collect();
                pixels.dedup();
                pixels.len()
            },
        };
        let schema = self.schema.clone();
        if files.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // Partition files are sorted by `_healpix_29` and cover disjoint ranges, so any run
        // of consecutive files is in order (when each partition is one file): declared,
        // this lets DataFusion aggregate or merge by HEALPix cell without hashing or
        // sorting. One group per target partition,
        // of about equal rows; the files are never split (a cone reads one or two row
        // groups, and splitting would open each file twice for nothing).
        let groups = contiguous_groups(&files, state.config().target_partitions());
        let statistics = Statistics::try_merge_iter(
            files.iter().filter_map(|f| f.file.statistics.as_deref()),
            &schema,
        )?;
        // The session's Parquet options (pruning, page index, and any set through
        // `DATAFUSION_EXECUTION_PARQUET_*`).
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let mut source = format.file_source(schema.clone().into());
        // Give the Parquet scan the `_healpix_29` ranges as its predicate: it prunes row
        // groups and pages by their statistics (filters pushed down later are added to it).
        let hpx = match (&ranges, catalog.healpix_column()) {
            (Some(r), Some(h)) => hpx_filter(h, r, 64),
            _ => None,
        };
        if let Some(hpx) = hpx
            && let Some(parquet) = source.downcast_ref::<ParquetSource>()
        {
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            let predicate = state.create_physical_expr(hpx, &df_schema)?;
            source = Arc::new(parquet.with_predicate(predicate));
        }
        let mut config = FileScanConfigBuilder::new(snap.store_url()?, source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit);
        // A partition of several files (appended, not yet compacted) has its rows sorted
        // within each file only.
        if let Some(h) = catalog.healpix_column()
            && catalog.single_file_partitions()
        {
            let sort = PhysicalSortExpr::new(
                datafusion::physical_expr::expressions::col(h, &schema)?,
                arrow::compute::SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            );
            config = config.with_output_ordering(LexOrdering::new([sort]).into_iter().collect());
        }
        format.create_physical_plan(state, config.build()).await
    }
}
