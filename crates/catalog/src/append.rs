//! Appending rows to a catalog, for tables that grow while they are served (the DIA tables
//! of an alert stream).
//!
//! Each append publishes a new version of the catalog in which only the partitions that
//! receive rows are rewritten (their old rows with the new ones, in `_healpix_29` order);
//! every other partition file is a hard link to the previous version's. Readers keep the
//! version they opened (the previous version stays for [`crate::SUPERSEDED_KEPT`]),
//! so they never see a half-written state, and an append costs the size of the partitions
//! it touches, never of the whole catalog. A partition that outgrows `max_rows` is split
//! into its four children, as HATS' adaptive tiling does, so that cost stays bounded and
//! each partition stays one file (no compaction is needed).
//!
//! Rows may carry a key (a source or object id): a row whose key is already stored is
//! dropped ([`Keep::First`], for sources repeated in later alerts' histories) or replaces
//! the stored one ([`Keep::Last`], for an object's summary, whose position may move a
//! little between alerts: the stored row is looked for within `max_shift_arcsec`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use meridian_sky::{Circle, Region, SkyPoint, healpix};

use crate::ingest::{HPX_COLUMN, hpx_field, set_provenance};
use crate::layout::{Pixel, write_partition_info};
use crate::properties::Properties;
use crate::write::{PartitionWriter, write_common_metadata, writer_properties};
use crate::{Catalog, Error, Result, Store, coverage_order};

/// Which row a key keeps when it comes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The stored row (the first seen); later ones are dropped.
    First,
    /// The newest row; it replaces the stored one.
    Last,
}

/// How rows are appended to a catalog.
#[derive(Debug, Clone)]
pub struct AppendSpec {
    /// Right ascension column (degrees).
    pub ra: String,
    /// Declination column (degrees).
    pub dec: String,
    /// Column identifying a row (an integer), if rows repeat across appends.
    pub key: Option<String>,
    /// Which row of a repeated key is kept.
    pub keep: Keep,
    /// HEALPix order of new partitions.
    pub order: u8,
    /// Rows above which a partition is split into its children.
    pub max_rows: usize,
    /// With [`Keep::Last`]: how far (arcseconds) a row's position may have moved since its
    /// stored row.
    pub max_shift_arcsec: f64,
    /// Title of a new catalog (`obs_title`).
    pub title: Option<String>,
}

impl AppendSpec {
    /// Rows placed by `ra`/`dec` columns of these names, without keys, new partitions at
    /// order 5 (about 3.4 square degrees, a few per Rubin visit), split above 200,000 rows.
    pub fn new(ra: &str, dec: &str) -> Self {
        Self {
            ra: ra.into(),
            dec: dec.into(),
            key: None,
            keep: Keep::First,
            order: 5,
            max_rows: 200_000,
            max_shift_arcsec: 10.0,
            title: None,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Rows given.
    pub rows_in: usize,
    /// Rows stored (new keys, and with [`Keep::Last`] the replacing rows).
    pub rows_added: usize,
    /// Stored rows replaced by newer ones ([`Keep::Last`]).
    pub rows_replaced: usize,
    /// Partitions written (the others are shared with the previous version).
    pub partitions_written: usize,
    /// Partitions of the new version.
    pub partitions: usize,
    /// Rows of the new version.
    pub total_rows: u64,
}

impl Store {
    /// Appends `rows` (of `schema`, without `_healpix_29`) to catalog `name`, creating it if
    /// absent (with no rows, an empty catalog with this schema). One append at a time per
    /// catalog, across processes. A catalog served in place (not written by Meridian) is
    /// refused, and so is a row without a valid position or a column the catalog lacks:
    /// nothing is published then.
    pub fn append(
        &self,
        name: &str,
        schema: &SchemaRef,
        rows: &[RecordBatch],
        spec: &AppendSpec,
    ) -> Result<Appended> {
        healpix::check_order(spec.order)?;
        if spec.max_rows == 0 {
            return Err(Error::Invalid("max_rows must be at least 1".into()));
        }
        let _lock = self.lock(name)?;
        let current = match self.current_version(name)? {
            Some(dir) => {
                let c = Catalog::open(&dir)?;
                if c.local_dir() != Some(dir.as_path()) {
                    return Err(Error::Invalid(format!(
                        "catalog '{name}' was ingested (a collection, with its margin): rows \
                         are appended only to catalogs that appends created"
                    )));
                }
                Some((c, dir))
            }
            None if self.location(name).is_ok() => {
                return Err(Error::Invalid(format!(
                    "catalog '{name}' is served in place from elsewhere: rows can only be \
                     appended to catalogs Meridian writes"
                )));
            }
            None => None,
        };
        let table_schema = match &current {
            Some((c, _)) => widened(&c.schema(), schema),
            None => with_healpix(schema),
        };
        let mut input = Vec::with_capacity(rows.len());
        for b in rows.iter().filter(|b| b.num_rows() > 0) {
            input.push(align(b, &table_schema, name)?);
        }
        let new = concat_batches(&table_schema, &input)?;
        let rows_in = new.num_rows();
        if rows_in == 0
            && let Some((c, _)) = &current
        {
            return Ok(Appended {
                partitions: c.partitions().len(),
                total_rows: c.total_rows()?,
                ..Appended::default()
            });
        }
        let new = locate(&new, spec, name)?;
        let new = match (&spec.key, spec.keep) {
            (Some(k), keep) => unique(&new, k, keep == Keep::Last)?,
            (None, _) => new,
        };
        let hpx = hpx_values(&new)?;

        let existing: Vec<Pixel> = current
            .as_ref()
            .map(|(c, _)| c.partitions().to_vec())
            .unwrap_or_default();
        let layout = Layout::new(existing.clone());
        let stored_pixels: HashSet<Pixel> = existing.iter().copied().collect();
        let mut assigned: BTreeMap<Pixel, Vec<u32>> = BTreeMap::new();
        for (i, h) in hpx.iter().enumerate() {
            assigned
                .entry(layout.assign(*h, spec.order))
                .or_default()
                .push(i as u32);
        }
        // With Keep::Last, a stored row of a key may sit in a neighbouring partition.
        let mut touched: BTreeSet<Pixel> = assigned.keys().copied().collect();
        let new_keys: HashSet<i64> = match &spec.key {
            Some(k) if spec.keep == Keep::Last => {
                for p in neighbourhood(&new, spec, &layout)? {
                    touched.insert(p);
                }
                keys(&new, k)?.iter().flatten().collect()
            }
            _ => HashSet::new(),
        };

        let staging = self.begin_staging(name)?;
        let dir = staging.path().to_path_buf();
        let props = writer_properties(100_000, 4096, HPX_COLUMN, &table_schema);
        let mut outputs: Vec<Pixel> = Vec::new();
        let mut replaced = 0usize;
        let mut added = 0usize;
        let mut rewritten: HashSet<Pixel> = HashSet::new();
        for pixel in &touched {
            let stored = match (&current, stored_pixels.contains(pixel)) {
                (Some((c, _)), true) => {
                    let b = c
                        .read_partition(pixel)?
                        .iter()
                        .map(|b| align(b, &table_schema, name))
                        .collect::<Result<Vec<_>>>()?;
                    Some(concat_batches(&table_schema, &b)?)
                }
                _ => None,
            };
            let mut incoming = match assigned.get(pixel) {
                Some(idx) => take_record_batch(&new, &UInt32Array::from(idx.clone()))?,
                None => RecordBatch::new_empty(table_schema.clone()),
            };
            let mut stored = stored.unwrap_or_else(|| RecordBatch::new_empty(table_schema.clone()));
            let stored_before = stored.num_rows();
            if let Some(k) = &spec.key {
                match spec.keep {
                    Keep::First => {
                        let old: HashSet<i64> = keys(&stored, k)?.iter().flatten().collect();
                        let keep: BooleanArray = keys(&incoming, k)?
                            .iter()
                            .map(|v| Some(v.is_some_and(|v| !old.contains(&v))))
                            .collect();
                        incoming = filter_record_batch(&incoming, &keep)?;
                    }
                    Keep::Last => {
                        let keep: BooleanArray = keys(&stored, k)?
                            .iter()
                            .map(|v| Some(!v.is_some_and(|v| new_keys.contains(&v))))
                            .collect();
                        stored = filter_record_batch(&stored, &keep)?;
                        replaced += stored_before - stored.num_rows();
                    }
                }
            }
            if incoming.num_rows() == 0 && stored.num_rows() == stored_before {
                // A neighbour searched for replaced rows, holding none.
                continue;
            }
            added += incoming.num_rows();
            rewritten.insert(*pixel);
            let merged = concat_batches(&table_schema, &[stored, incoming])?;
            for (p, rows) in split(*pixel, &merged, spec.max_rows)? {
                let mut w = PartitionWriter::create(&dir, p, &table_schema, &props)?;
                w.write(&rows)?;
                w.close()?;
                outputs.push(p);
            }
        }
        // Every other partition is shared with the previous version.
        if let Some((_, old_dir)) = &current {
            for p in existing.iter().filter(|p| !rewritten.contains(p)) {
                let (from, to) = (p.path_in(old_dir), p.path_in(&dir));
                let parent = to.parent().expect("partition path has a parent");
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                std::fs::hard_link(&from, &to).map_err(|e| Error::io(&to, e))?;
                outputs.push(*p);
            }
        }
        outputs.sort_by_key(|p| p.hpx29_range().start);
        write_common_metadata(&dir, &table_schema, &props)?;
        write_partition_info(&dir, &outputs)?;
        let old_rows = match &current {
            Some((c, _)) => c.total_rows()?,
            None => 0,
        };
        let total_rows = old_rows + added as u64 - replaced as u64;
        let mut hats = match &current {
            Some((c, _)) => c.properties().clone(),
            None => new_properties(name, spec),
        };
        hats.set("hats_nrows", total_rows);
        hats.set(
            "hats_order",
            outputs.iter().map(|p| p.order).max().unwrap_or(spec.order),
        );
        let sky_fraction: f64 = outputs
            .iter()
            .map(|p| 1.0 / healpix::n_cells(p.order) as f64)
            .sum();
        hats.set("moc_sky_fraction", format!("{sky_fraction:.5}"));
        let bytes: u64 = outputs
            .iter()
            .map(|p| std::fs::metadata(p.path_in(&dir)).map_or(0, |m| m.len()))
            .sum();
        hats.set("hats_estsize", bytes / 1024);
        set_provenance(&mut hats);
        hats.write(&dir.join("hats.properties"), "HATS catalog")?;
        hats.write(&dir.join("properties"), "HATS catalog")?;
        self.publish_keeping_old(staging)?;
        tracing::info!(
            catalog = name,
            rows_in,
            rows_added = added,
            rows_replaced = replaced,
            partitions_written = rewritten.len(),
            partitions = outputs.len(),
            total_rows,
            "rows appended"
        );
        Ok(Appended {
            rows_in,
            rows_added: added,
            rows_replaced: replaced,
            partitions_written: rewritten.len(),
            partitions: outputs.len(),
            total_rows,
        })
    }
}

/// The properties of a new appendable catalog.
fn new_properties(name: &str, spec: &AppendSpec) -> Properties {
    let mut hats = Properties::default();
    hats.set("obs_collection", name);
    hats.set("dataproduct_type", "object");
    hats.set("hats_col_ra", &spec.ra);
    hats.set("hats_col_dec", &spec.dec);
    hats.set("hats_col_healpix", HPX_COLUMN);
    hats.set("hats_col_healpix_order", 29);
    hats.set("hats_npix_suffix", ".parquet");
    hats.set("hats_max_rows", spec.max_rows);
    if let Some(t) = &spec.title {
        hats.set("obs_title", t);
    }
    hats
}

/// `schema` with `_healpix_29` first and every other field nullable.
fn with_healpix(schema: &SchemaRef) -> SchemaRef {
    let mut fields = vec![Arc::new(hpx_field())];
    fields.extend(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != HPX_COLUMN)
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true))),
    );
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The table's schema `table` with the columns of `rows` it lacks added at its end
/// (nullable): alerts of a newer schema version bring new fields. Rows of the partitions
/// written before read them as null.
fn widened(table: &SchemaRef, rows: &SchemaRef) -> SchemaRef {
    let extra: Vec<_> = rows
        .fields()
        .iter()
        .filter(|f| f.name() != HPX_COLUMN && table.field_with_name(f.name()).is_err())
        .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
        .collect();
    if extra.is_empty() {
        return table.clone();
    }
    tracing::info!(
        columns = ?extra.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        "new columns added to the catalog"
    );
    let mut fields: Vec<_> = table.fields().iter().cloned().collect();
    fields.extend(extra);
    Arc::new(Schema::new_with_metadata(fields, table.metadata().clone()))
}

/// `batch` with the columns of the table's `schema` (cast where the type differs, null
/// where the batch lacks them; `_healpix_29` is computed later). A column the table lacks
/// is refused (see [`widened`]).
fn align(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    for f in batch.schema().fields() {
        if f.name() != HPX_COLUMN && schema.field_with_name(f.name()).is_err() {
            return Err(Error::Invalid(format!(
                "catalog '{table}' has no column '{}' (its columns are those of its first \
                 rows)",
                f.name()
            )));
        }
    }
    let n = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef> {
            if f.name() == HPX_COLUMN && batch.column_by_name(HPX_COLUMN).is_none() {
                return Ok(Arc::new(Int64Array::from(vec![0i64; n])));
            }
            Ok(match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => c.clone(),
                // A value that does not convert is an error, never a silent null.
                Some(c) => arrow::compute::cast_with_options(
                    c,
                    f.data_type(),
                    &arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )
                .map_err(|e| {
                    Error::Invalid(format!(
                        "catalog '{table}', column '{}': {} values cannot be stored as {}: {e}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    ))
                })?,
                None => new_null_array(f.data_type(), n),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `batch` with `_healpix_29` computed from its positions; a row without a valid position
/// is refused with its index and values.
fn locate(batch: &RecordBatch, spec: &AppendSpec, table: &str) -> Result<RecordBatch> {
    let col = |name: &str| -> Result<ArrayRef> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            Error::Invalid(format!("catalog '{table}' has no position column '{name}'"))
        })?;
        Ok(arrow::compute::cast(c, &DataType::Float64)?)
    };
    let (ra, dec) = (col(&spec.ra)?, col(&spec.dec)?);
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let mut hpx = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let (r, d) = (
            ra.is_valid(i).then(|| ra.value(i)),
            dec.is_valid(i).then(|| dec.value(i)),
        );
        match (r, d) {
            (Some(r), Some(d)) if r.is_finite() && d.is_finite() && (-90.0..=90.0).contains(&d) => {
                hpx.push(healpix::hpx29_deg(r.rem_euclid(360.0), d) as i64)
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "catalog '{table}', row {} of the rows appended: ({}, {}) = ({r:?}, {d:?}) \
                     is not a position",
                    i + 1,
                    spec.ra,
                    spec.dec
                )));
            }
        }
    }
    let i = batch
        .schema()
        .index_of(HPX_COLUMN)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut columns = batch.columns().to_vec();
    columns[i] = Arc::new(Int64Array::from(hpx));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn hpx_values(batch: &RecordBatch) -> Result<Vec<u64>> {
    let c = batch
        .column_by_name(HPX_COLUMN)
        .ok_or_else(|| Error::Invalid(format!("no {HPX_COLUMN} column")))?;
    Ok(c.as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|&h| h as u64)
        .collect())
}

/// The key column as integers (null where absent).
fn keys(batch: &RecordBatch, key: &str) -> Result<Int64Array> {
    let c = batch
        .column_by_name(key)
        .ok_or_else(|| Error::Invalid(format!("no key column '{key}'")))?;
    let c = arrow::compute::cast(c, &DataType::Int64).map_err(|e| {
        Error::Invalid(format!(
            "key column '{key}' ({}) is not an integer: {e}",
            c.data_type()
        ))
    })?;
    Ok(c.as_primitive::<Int64Type>().clone())
}

/// The rows of `batch` with the first (or, with `last`, the last) row of each key; rows
/// without a key are dropped.
fn unique(batch: &RecordBatch, key: &str, last: bool) -> Result<RecordBatch> {
    let k = keys(batch, key)?;
    let mut seen = HashSet::with_capacity(k.len());
    let mut keep = vec![false; k.len()];
    let order: Box<dyn Iterator<Item = usize>> = if last {
        Box::new((0..k.len()).rev())
    } else {
        Box::new(0..k.len())
    };
    for i in order {
        if k.is_valid(i) && seen.insert(k.value(i)) {
            keep[i] = true;
        }
    }
    Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
}

/// The stored partitions within `max_shift_arcsec` of the rows of `batch`.
fn neighbourhood(batch: &RecordBatch, spec: &AppendSpec, layout: &Layout) -> Result<Vec<Pixel>> {
    let ra = arrow::compute::cast(
        batch
            .column_by_name(&spec.ra)
            .ok_or_else(|| Error::Invalid(format!("no column '{}'", spec.ra)))?,
        &DataType::Float64,
    )?;
    let dec = arrow::compute::cast(
        batch
            .column_by_name(&spec.dec)
            .ok_or_else(|| Error::Invalid(format!("no column '{}'", spec.dec)))?,
        &DataType::Float64,
    )?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let mut out = BTreeSet::new();
    for i in 0..batch.num_rows() {
        let centre = SkyPoint::new(ra.value(i).rem_euclid(360.0), dec.value(i))?;
        let region = Region::Circle(Circle::new(centre, spec.max_shift_arcsec / 3600.0)?);
        for r in region.hpx29_ranges(coverage_order(&region))? {
            out.extend(layout.overlapping(&r));
        }
    }
    Ok(out.into_iter().collect())
}

/// The rows of `pixel` sorted by `_healpix_29`, as partitions of at most `max_rows` rows
/// (a partition above it is split into its non-empty children, down to order 29).
fn split(pixel: Pixel, rows: &RecordBatch, max_rows: usize) -> Result<Vec<(Pixel, RecordBatch)>> {
    let hpx_col = rows
        .column_by_name(HPX_COLUMN)
        .ok_or_else(|| Error::Invalid(format!("no {HPX_COLUMN} column")))?;
    let order = sort_to_indices(hpx_col, None, None)?;
    let sorted = take_record_batch(rows, &order)?;
    let mut out = Vec::new();
    split_sorted(pixel, sorted, max_rows, &mut out)?;
    Ok(out)
}

fn split_sorted(
    pixel: Pixel,
    rows: RecordBatch,
    max_rows: usize,
    out: &mut Vec<(Pixel, RecordBatch)>,
) -> Result<()> {
    if rows.num_rows() <= max_rows || pixel.order >= 29 {
        out.push((pixel, rows));
        return Ok(());
    }
    let hpx = hpx_values(&rows)?;
    let mut start = 0;
    for child in 0..4 {
        let c = Pixel::new(pixel.order + 1, pixel.pix * 4 + child)?;
        let end = c.hpx29_range().end;
        let n = hpx[start..].partition_point(|&h| h < end);
        if n > 0 {
            split_sorted(c, rows.slice(start, n), max_rows, out)?;
        }
        start += n;
    }
    Ok(())
}

/// The partitions of a catalog, for placing new rows.
struct Layout {
    /// Sorted by the start of their `_healpix_29` range (partitions are disjoint).
    pixels: Vec<Pixel>,
}

impl Layout {
    fn new(mut pixels: Vec<Pixel>) -> Self {
        pixels.sort_by_key(|p| p.hpx29_range().start);
        Self { pixels }
    }

    /// The partitions overlapping an order-29 range.
    fn overlapping(&self, r: &std::ops::Range<u64>) -> Vec<Pixel> {
        let end = self
            .pixels
            .partition_point(|p| p.hpx29_range().start < r.end);
        self.pixels[..end]
            .iter()
            .rev()
            .take_while(|p| p.hpx29_range().end > r.start)
            .copied()
            .collect()
    }

    /// The partition a row at `hpx29` goes to: the stored one containing it, else the
    /// cell of order `base` containing it, or, where stored partitions lie inside that
    /// cell (it was split), the largest cell around the row that holds none of them.
    fn assign(&self, hpx29: u64, base: u8) -> Pixel {
        if let Some(p) = self.overlapping(&(hpx29..hpx29 + 1)).first() {
            return *p;
        }
        for order in base..=29 {
            let pix = hpx29 >> (2 * (29 - order as u32));
            let cell = Pixel { order, pix };
            if self.overlapping(&cell.hpx29_range()).is_empty() {
                return cell;
            }
        }
        unreachable!("an order-29 cell holding no partition is free")
    }
}
