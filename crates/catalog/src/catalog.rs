//! Opening a HATS catalog (or collection) and reading it with spatial pruning.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use meridian_formats::ColumnMeta;
use meridian_sky::{Region, SkyPoint, healpix};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::statistics::Statistics;

use crate::layout::{Pixel, leaf_files, read_partitions};
use crate::location::{Location, PartFile};
use crate::properties::Properties;
use crate::{Error, Result};

/// Description of one column: name, Arrow type and descriptive metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Arrow type.
    pub data_type: DataType,
    /// Unit, UCD, utype, description.
    pub meta: ColumnMeta,
}

/// An opened HATS catalog: its properties, partitions and schema.
#[derive(Debug, Clone)]
pub struct Catalog {
    location: Location,
    properties: Properties,
    partitions: Vec<Pixel>,
    schema: SchemaRef,
    ra_column: String,
    dec_column: String,
    hpx_column: Option<String>,
    margin: Option<Box<Catalog>>,
    /// Why the margin cache that the collection names could not be opened (the catalog is
    /// served without it: Meridian's own queries do not need it).
    margin_problem: Option<String>,
    /// With `hats_npix_suffix = /`: each partition's files (a directory of files).
    leaves: Option<Arc<BTreeMap<Pixel, Vec<String>>>>,
}

impl Catalog {
    /// Opens a catalog directory (with `hats.properties`) or a collection directory (with
    /// `collection.properties`, whose main catalog and default margin are opened).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_at(&Location::Local(path.to_path_buf()))
    }

    /// [`Catalog::open`] for a catalog in a local directory or an object store.
    pub fn open_at(location: &Location) -> Result<Self> {
        if location.exists("collection.properties")? {
            let props = Properties::parse(&location.read_to_string("collection.properties")?);
            let main = props.get("hats_primary_table_url").ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no hats_primary_table_url",
                    location.name_of("collection.properties")
                ))
            })?;
            let mut catalog = Self::open_catalog(&location.join(main))?;
            let margin = props.get("default_margin").or_else(|| {
                props
                    .get("all_margins")
                    .and_then(|m| m.split_whitespace().next())
            });
            if let Some(m) = margin {
                match Self::open_catalog(&location.join(m)) {
                    Ok(c) => catalog.margin = Some(Box::new(c)),
                    Err(e) => {
                        tracing::warn!(
                            collection = %location.name_of(""),
                            margin = m,
                            error = %e,
                            "the margin cache cannot be opened: the catalog is served without it"
                        );
                        catalog.margin_problem =
                            Some(format!("margin cache {m} cannot be opened: {e}"));
                    }
                }
            }
            return Ok(catalog);
        }
        Self::open_catalog(location)
    }

    /// Opens the catalog directory `dir` with the margin catalog in `margin`: a catalog
    /// opened elsewhere, named by its [`Catalog::location`] and its margin's.
    pub fn open_with_margin(dir: &Location, margin: Option<&Location>) -> Result<Self> {
        let mut catalog = Self::open_catalog(dir)?;
        if let Some(m) = margin {
            catalog.margin = Some(Box::new(Self::open_catalog(m)?));
        }
        Ok(catalog)
    }

    fn open_catalog(dir: &Location) -> Result<Self> {
        let mut props_file = None;
        for f in ["hats.properties", "properties"] {
            if dir.exists(f)? {
                props_file = Some(f);
                break;
            }
        }
        let props_file = props_file.ok_or_else(|| {
            Error::Invalid(format!(
                "{dir} is not a HATS catalog: no hats.properties or collection.properties"
            ))
        })?;
        let properties = Properties::parse(&dir.read_to_string(props_file)?);
        let partitions = read_partitions(dir)?;
        let leaves = match properties.get("hats_npix_suffix") {
            Some("/") => Some(Arc::new(leaf_files(dir)?)),
            _ => None,
        };
        let common = "dataset/_common_metadata";
        let schema_file = if dir.exists(common)? {
            common.to_string()
        } else {
            let first = partitions.iter().find_map(|p| match &leaves {
                Some(l) => l.get(p).and_then(|f| f.first()).cloned(),
                None => Some(p.relative_path()),
            });
            first.ok_or_else(|| {
                Error::Invalid(format!("{dir}: no partitions and no _common_metadata"))
            })?
        };
        let file = dir.open(&schema_file)?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| Error::parquet(dir.name_of(&schema_file), e))?;
        let schema = meta.schema().clone();
        let find = |key: &str, fallbacks: &[&str]| -> Option<String> {
            let wanted: Vec<String> = properties
                .get(key)
                .map(|s| vec![s.to_string()])
                .unwrap_or_else(|| fallbacks.iter().map(|s| s.to_string()).collect());
            wanted
                .into_iter()
                .find(|w| schema.field_with_name(w).is_ok())
        };
        let ra_column = find("hats_col_ra", &["ra", "RA"])
            .ok_or_else(|| Error::Invalid(format!("{dir}: RA column not found in the schema")))?;
        let dec_column = find("hats_col_dec", &["dec", "DEC"])
            .ok_or_else(|| Error::Invalid(format!("{dir}: Dec column not found in the schema")))?;
        let hpx_column = find("hats_col_healpix", &["_healpix_29"]);
        Ok(Self {
            location: dir.clone(),
            properties,
            partitions,
            schema,
            ra_column,
            dec_column,
            hpx_column,
            margin: None,
            margin_problem: None,
            leaves,
        })
    }

    /// Where the main catalog is: a local directory or an object-store prefix.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The directory of the main catalog, when it is local.
    pub fn local_dir(&self) -> Option<&Path> {
        self.location.as_local()
    }

    /// The files of partition `pixel`, relative to [`Catalog::location`]: its file, or
    /// for a catalog whose partitions are directories (`hats_npix_suffix = /`, as appends
    /// write), the files in its directory in name order (older appends first).
    pub fn partition_files(&self, pixel: &Pixel) -> Vec<String> {
        match &self.leaves {
            Some(l) => l.get(pixel).cloned().unwrap_or_default(),
            None => vec![pixel.relative_path()],
        }
    }

    /// Whether every partition is one file (its rows then sorted by `_healpix_29` when the
    /// catalog has that column); partitions of appended catalogs may hold several files
    /// until they are compacted.
    pub fn single_file_partitions(&self) -> bool {
        self.leaves
            .as_ref()
            .is_none_or(|l| l.values().all(|f| f.len() <= 1))
    }

    /// Partition file `rel` opened for the Parquet reader, with its name for errors.
    fn open_file(&self, rel: &str) -> Result<(PartFile, String)> {
        Ok((self.location.open(rel)?, self.location.name_of(rel)))
    }

    /// Every partition file, in partition order.
    fn all_files(&self) -> impl Iterator<Item = String> + '_ {
        self.partitions.iter().flat_map(|p| self.partition_files(p))
    }

    /// `hats.properties`.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// Partitions in NESTED order.
    pub fn partitions(&self) -> &[Pixel] {
        &self.partitions
    }

    /// Arrow schema of the rows, with column metadata.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Columns with their types, units, UCDs and descriptions.
    pub fn columns(&self) -> Vec<ColumnInfo> {
        self.schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().clone(),
                meta: ColumnMeta::of(f),
            })
            .collect()
    }

    /// Total rows (from `hats_nrows`, else counted from the partition files' footers).
    pub fn total_rows(&self) -> Result<u64> {
        if let Some(n) = self
            .properties
            .get("hats_nrows")
            .and_then(|v| v.parse().ok())
        {
            return Ok(n);
        }
        let mut n = 0;
        for rel in self.all_files() {
            let (f, path) = self.open_file(&rel)?;
            let m = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
                .map_err(|e| Error::parquet(&path, e))?;
            n += m.metadata().file_metadata().num_rows() as u64;
        }
        Ok(n)
    }

    /// RA column name.
    pub fn ra_column(&self) -> &str {
        &self.ra_column
    }

    /// Dec column name.
    pub fn dec_column(&self) -> &str {
        &self.dec_column
    }

    /// The `_healpix_29` column, if the catalog has one.
    pub fn healpix_column(&self) -> Option<&str> {
        self.hpx_column.as_deref()
    }

    /// The margin cache, if any.
    pub fn margin(&self) -> Option<&Catalog> {
        self.margin.as_deref()
    }

    /// Why the margin cache the collection names could not be opened, if it could not.
    pub fn margin_problem(&self) -> Option<&str> {
        self.margin_problem.as_deref()
    }

    /// Reads the rows inside `region` (all rows when `None`), reading only the partitions and
    /// row groups whose `_healpix_29` range overlaps the region's coverage.
    pub fn scan(&self, region: Option<&Region>) -> Result<Scan> {
        let ranges = match region {
            Some(r) => Some(r.hpx29_ranges(coverage_order(r))?),
            None => None,
        };
        let mut stats = ScanStats {
            partitions_total: self.partitions.len(),
            ..Default::default()
        };
        let pixels: Vec<Pixel> = self
            .partitions
            .iter()
            .filter(|p| {
                ranges
                    .as_ref()
                    .is_none_or(|r| overlaps(r, &p.hpx29_range()))
            })
            .copied()
            .collect();
        stats.partitions_read = pixels.len();
        let files = pixels
            .iter()
            .flat_map(|p| self.partition_files(p))
            .collect();
        Ok(Scan {
            catalog: self.clone(),
            region: region.cloned(),
            ranges,
            files,
            current: None,
            stats,
        })
    }
}

impl Catalog {
    /// All rows of one partition, in file order.
    pub fn read_partition(&self, pixel: &Pixel) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for rel in self.partition_files(pixel) {
            let (file, path) = self.open_file(&rel)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Error::parquet(&path, e))?
                .with_batch_size(65_536)
                .build()
                .map_err(|e| Error::parquet(&path, e))?;
            for b in reader {
                let b = b.map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
                out.push(self.conform(b)?);
            }
        }
        Ok(out)
    }

    /// `batch` (read from one of the catalog's files) with the catalog's columns: a file
    /// written before the catalog gained columns reads them as null.
    pub fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.schema().fields() == self.schema.fields() {
            return Ok(batch);
        }
        let n = batch.num_rows();
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
                None => Ok(arrow::array::new_null_array(f.data_type(), n)),
            })
            .collect::<Result<Vec<_>>>()?;
        let schema = Arc::new(arrow::datatypes::Schema::new(self.schema.fields().clone()));
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

impl Catalog {
    /// Rows per HEALPix cell at `order`, as (cell, rows) in cell order, without empty
    /// cells: one pass over the partitions reading only the `_healpix_29` column (or the
    /// positions, for a catalog without it). `progress` hears the rows read so far.
    pub fn cell_counts(&self, order: u8, progress: &dyn Fn(u64)) -> Result<Vec<(u64, u64)>> {
        let mut counts: Vec<(u64, u64)> = Vec::with_capacity(self.cells_bound(order));
        self.fold_cells(
            order,
            None,
            progress,
            &mut |cell, _| match counts.last_mut() {
                Some((c, n)) if *c == cell => *n += 1,
                _ => counts.push((cell, 1)),
            },
        )?;
        // Partitions are in no particular order, and cells of a coarse order span several.
        counts.sort_unstable_by_key(|c| c.0);
        // Merged in place: no second copy of what may be hundreds of megabytes.
        counts.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
        Ok(counts)
    }

    /// The rows and the statistics of numeric `column` (its non-null, finite values) per
    /// HEALPix cell at `order`, in cell order, without empty cells; one pass reading only
    /// that column and the cells.
    pub fn cell_stats(
        &self,
        order: u8,
        column: &str,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<CellStats>> {
        let mut stats: Vec<CellStats> = Vec::with_capacity(self.cells_bound(order));
        self.fold_cells(order, Some(column), progress, &mut |cell, v| {
            if stats.last().is_none_or(|s| s.cell != cell) {
                stats.push(CellStats::new(cell));
            }
            stats.last_mut().expect("pushed").add(v);
        })?;
        stats.sort_unstable_by_key(|c| c.cell);
        stats.dedup_by(|later, kept| {
            let same = later.cell == kept.cell;
            if same {
                kept.merge(later);
            }
            same
        });
        Ok(stats)
    }

    /// The space-time MOC of the rows: each row's time (`time_column`, else the first
    /// column whose UCD is `time.epoch`, as MJD) and cell at `space_order`; `None` when
    /// the catalog has no such column.
    pub fn stmoc(
        &self,
        space_order: u8,
        time_order: u8,
        time_column: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<Option<meridian_sky::StMoc>> {
        let is_time = |c: &ColumnInfo| {
            c.meta
                .ucd
                .as_deref()
                .is_some_and(|u| u.split(';').any(|w| w.trim().starts_with("time.")))
        };
        let column = match time_column {
            Some(c) => {
                let info = self
                    .columns()
                    .into_iter()
                    .find(|x| x.name == c)
                    .ok_or_else(|| Error::Invalid(format!("no column '{c}' in the catalog")))?;
                if !is_time(&info) {
                    return Err(Error::Invalid(format!(
                        "column '{c}' is not a time (its UCD is not time.*)"
                    )));
                }
                Some(c.to_string())
            }
            None => self
                .columns()
                .into_iter()
                .find(|c| {
                    c.meta
                        .ucd
                        .as_deref()
                        .is_some_and(|u| u.split(';').any(|w| w.trim() == "time.epoch"))
                })
                .map(|c| c.name),
        };
        let Some(column) = column else {
            return Ok(None);
        };
        let mut builder = meridian_sky::StMocBuilder::new(time_order, space_order)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.fold_cells(space_order, Some(&column), progress, &mut |cell, t| {
            if let Some(t) = t {
                builder.push(t, cell);
            }
        })?;
        Ok(Some(builder.finish()))
    }

    /// At most how many cells of `order` hold rows (the rows, or the cells there are,
    /// within 2^27): room made once rather than by doubling, which would copy and touch
    /// fresh memory at every step.
    fn cells_bound(&self, order: u8) -> usize {
        let rows = self.total_rows().unwrap_or(0);
        rows.min(healpix::n_cells(order.min(29))).min(1 << 27) as usize
    }

    /// Calls `f(cell at order, value of column)` for every row with a position, partition
    /// by partition (rows of a partition in its file's order).
    fn fold_cells(
        &self,
        order: u8,
        column: Option<&str>,
        progress: &dyn Fn(u64),
        f: &mut dyn FnMut(u64, Option<f64>),
    ) -> Result<()> {
        let order = healpix::check_order(order).map_err(|e| Error::Invalid(e.to_string()))?;
        let shift = 2 * (29 - order as u32);
        if let Some(c) = column {
            let field = self
                .schema
                .field_with_name(c)
                .map_err(|_| Error::Invalid(format!("no column '{c}' in the catalog")))?;
            if !field.data_type().is_numeric() {
                return Err(Error::Invalid(format!(
                    "column '{c}' is {}, not a number",
                    field.data_type()
                )));
            }
        }
        let mut rows = 0u64;
        for rel in self.all_files() {
            let (file, path) = self.open_file(&rel)?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Error::parquet(&path, e))?;
            let mut wanted: Vec<&str> = match &self.hpx_column {
                Some(h) => vec![h.as_str()],
                None => vec![self.ra_column.as_str(), self.dec_column.as_str()],
            };
            wanted.extend(column);
            let schema = builder.parquet_schema();
            let leaves: Vec<usize> = wanted
                .iter()
                .map(|name| {
                    (0..schema.num_columns())
                        .find(|&i| schema.column(i).name() == *name)
                        .ok_or_else(|| Error::Invalid(format!("{path}: no column '{name}'")))
                })
                .collect::<Result<_>>()?;
            let mask = parquet::arrow::ProjectionMask::leaves(schema, leaves);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(65_536)
                .build()
                .map_err(|e| Error::parquet(&path, e))?;
            for batch in reader {
                let batch = batch.map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
                let by_name = |name: &str, t: &DataType| {
                    let c = batch
                        .column_by_name(name)
                        .ok_or_else(|| Error::Invalid(format!("{path}: no column '{name}'")))?;
                    arrow::compute::cast(c, t).map_err(|e| Error::Invalid(format!("{path}: {e}")))
                };
                let values = match column {
                    Some(c) => Some(by_name(c, &DataType::Float64)?),
                    None => None,
                };
                let values = values.as_ref().map(|v| v.as_primitive::<Float64Type>());
                let value = |i: usize| {
                    values
                        .and_then(|v| (v.is_valid(i) && v.value(i).is_finite()).then(|| v.value(i)))
                };
                if let Some(h) = &self.hpx_column {
                    let h = by_name(h, &DataType::Int64)?;
                    let h = h.as_primitive::<Int64Type>();
                    for i in 0..batch.num_rows() {
                        if h.is_valid(i) {
                            f((h.value(i) as u64) >> shift, value(i));
                        }
                    }
                } else {
                    let (ra, dec) = (
                        by_name(&self.ra_column, &DataType::Float64)?,
                        by_name(&self.dec_column, &DataType::Float64)?,
                    );
                    let (ra, dec) = (
                        ra.as_primitive::<Float64Type>(),
                        dec.as_primitive::<Float64Type>(),
                    );
                    for i in 0..batch.num_rows() {
                        if ra.is_valid(i)
                            && dec.is_valid(i)
                            && let Ok(p) =
                                SkyPoint::new(ra.value(i).rem_euclid(360.0), dec.value(i))
                        {
                            f(healpix::hash(order, &p), value(i));
                        }
                    }
                }
                rows += batch.num_rows() as u64;
                progress(rows);
            }
        }
        Ok(())
    }

    /// The MOC at `order` of the catalog's rows: the cells holding at least one.
    pub fn moc(&self, order: u8, progress: &dyn Fn(u64)) -> Result<meridian_sky::Moc> {
        let cells = self.cell_counts(order, progress)?;
        meridian_sky::moc_from_cells(order, cells.into_iter().map(|(c, _)| c))
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// A HEALPix order fine enough to prune row groups for this region, coarse enough to keep
/// the range list short.
pub fn coverage_order(region: &Region) -> u8 {
    let size_deg = match region {
        Region::Circle(c) => c.radius_deg(),
        Region::Box(b) => b.width_deg().min(b.height_deg()) / 2.0,
        Region::Polygon(p) => p.area_sr().sqrt().to_degrees() / 2.0,
        Region::Moc(m) => return m.depth_max().min(20),
    };
    (0..=20u8)
        .rev()
        .find(|o| healpix::mean_cell_size_deg(*o) >= size_deg / 2.0)
        .unwrap_or(0)
}

/// Whether sorted disjoint `ranges` overlap `r`.
pub fn overlaps(ranges: &[Range<u64>], r: &Range<u64>) -> bool {
    let i = ranges.partition_point(|x| x.end <= r.start);
    i < ranges.len() && ranges[i].start < r.end
}

/// What a scan read, against the total: the figures `EXPLAIN` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Partitions in the catalog.
    pub partitions_total: usize,
    /// Partitions opened.
    pub partitions_read: usize,
    /// Row groups in the partitions opened.
    pub row_groups_total: usize,
    /// Row groups read.
    pub row_groups_read: usize,
    /// Rows decoded before the exact region test.
    pub rows_scanned: u64,
}

/// The rows of one HEALPix cell and the statistics of a column's values there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellStats {
    /// NESTED cell.
    pub cell: u64,
    /// Rows in the cell.
    pub rows: u64,
    /// Rows with a finite value.
    pub values: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value (+inf when none).
    pub min: f64,
    /// Largest value (-inf when none).
    pub max: f64,
}

impl CellStats {
    /// An empty cell.
    pub fn new(cell: u64) -> Self {
        Self {
            cell,
            rows: 0,
            values: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Counts one row and its value.
    pub fn add(&mut self, v: Option<f64>) {
        self.rows += 1;
        if let Some(v) = v {
            self.values += 1;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    /// Adds another cell's rows and values (the cell number is kept).
    pub fn merge(&mut self, o: &CellStats) {
        self.rows += o.rows;
        self.values += o.values;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// A streaming, pruned read of a catalog.
pub struct Scan {
    catalog: Catalog,
    region: Option<Region>,
    ranges: Option<Vec<Range<u64>>>,
    files: std::collections::VecDeque<String>,
    current: Option<parquet::arrow::arrow_reader::ParquetRecordBatchReader>,
    stats: ScanStats,
}

impl Scan {
    /// Pruning figures so far (complete once the iterator is exhausted).
    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(rel) = self.files.pop_front() else {
            return Ok(false);
        };
        let (file, path) = self.catalog.open_file(&rel)?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&path, e))?;
        let md = builder.metadata().clone();
        self.stats.row_groups_total += md.num_row_groups();
        let hpx_idx = self.catalog.hpx_column.as_ref().and_then(|h| {
            md.file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.name() == h)
        });
        let groups: Vec<usize> = (0..md.num_row_groups())
            .filter(|i| match (&self.ranges, hpx_idx) {
                (Some(ranges), Some(ci)) => match md.row_group(*i).column(ci).statistics() {
                    Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                        (Some(lo), Some(hi)) => overlaps(ranges, &(*lo as u64..*hi as u64 + 1)),
                        _ => true,
                    },
                    _ => true,
                },
                _ => true,
            })
            .collect();
        self.stats.row_groups_read += groups.len();
        let reader = builder
            .with_row_groups(groups)
            .with_batch_size(65_536)
            .build()
            .map_err(|e| Error::parquet(&path, e))?;
        self.current = Some(reader);
        Ok(true)
    }

    fn filter(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        self.stats.rows_scanned += batch.num_rows() as u64;
        let Some(region) = &self.region else {
            return Ok(batch);
        };
        let col = |name: &str| -> Result<Arc<dyn Array>> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| Error::Invalid(format!("column {name} missing in a partition")))?;
            Ok(arrow::compute::cast(c, &DataType::Float64)?)
        };
        let ra = col(&self.catalog.ra_column)?;
        let dec = col(&self.catalog.dec_column)?;
        let (ra, dec) = (
            ra.as_primitive::<Float64Type>(),
            dec.as_primitive::<Float64Type>(),
        );
        let hpx = self
            .catalog
            .hpx_column
            .as_ref()
            .and_then(|h| batch.column_by_name(h))
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
        let ranges = self.ranges.as_deref().unwrap_or(&[]);
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                if ra.is_null(i) || dec.is_null(i) {
                    return Some(false);
                }
                if let Some(h) = &hpx {
                    let v = h.value(i) as u64;
                    if !overlaps(ranges, &(v..v + 1)) {
                        return Some(false);
                    }
                }
                Some(SkyPoint::new(ra.value(i), dec.value(i)).is_ok_and(|p| region.contains(&p)))
            })
            .collect();
        Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
    }
}

impl Iterator for Scan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(reader) = &mut self.current {
                match reader.next() {
                    Some(Ok(b)) => match self.catalog.conform(b).and_then(|b| self.filter(b)) {
                        Ok(b) if b.num_rows() == 0 => continue,
                        other => return Some(other),
                    },
                    Some(Err(e)) => return Some(Err(Error::Arrow(e))),
                    None => self.current = None,
                }
            }
            match self.open_next() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}
