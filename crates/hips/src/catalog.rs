//! Catalog HiPS (progressive catalogs, `dataproduct_type = catalog`): a catalog's rows
//! spread over HEALPix tiles so that a viewer showing the sky at order `k` draws the best
//! rows first and more as it zooms in.
//!
//! Placement: rows are ranked (by a magnitude ascending, a flux descending, or, with no
//! rank column, by a hash of their position, which samples the sky evenly); ties go to the
//! smaller `_healpix_29`. At each order `k` from 1, every cell takes its best `per_tile`
//! rows not placed at a lower order; at the deepest order a cell takes all it has left.
//! Orders 1 and 2 are written whole as `Norder1/Allsky.tsv` and `Norder2/Allsky.tsv`,
//! deeper orders as tiles `Norder{k}/Dir{d}/Npix{n}.tsv`; `Metadata.xml` declares the
//! columns (a VOTable without rows), as Aladin reads them.
//!
//! Scale: the rows placed in a cell at orders up to `k` are always the best of that cell,
//! so a partition of order `p` gives at most `per_tile * (p + 1)` rows to orders up to `p`.
//! A first pass keeps only those candidates of every partition and decides the low orders
//! from them; a second pass fills each partition's deeper tiles from its own rows. Memory
//! holds the candidates and one partition at a time per thread, never the catalog.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use meridian_catalog::{Catalog, Pixel};
use rayon::prelude::*;

use crate::tile::write_new;
use crate::{Error, Properties, Result, tile_path};

/// How to build a catalog HiPS.
#[derive(Debug, Clone)]
pub struct CatalogHipsOptions {
    /// The HiPS's name (its directory and its ID's last part).
    pub name: String,
    /// The column that ranks rows; `None` picks a magnitude (UCD `phot.mag`, or a name
    /// holding "mag"), else ranks by position hash.
    pub rank: Option<String>,
    /// Larger values first (fluxes); magnitudes rank smaller first.
    pub descending: bool,
    /// Rows per cell at each order (the last order takes all).
    pub per_tile: usize,
    /// Deepest order (raised to one past the deepest partition when that is deeper).
    pub max_order: u8,
}

impl Default for CatalogHipsOptions {
    fn default() -> Self {
        Self {
            name: String::new(),
            rank: None,
            descending: false,
            per_tile: 50,
            max_order: 10,
        }
    }
}

/// What a build made.
#[derive(Debug, Clone, Default)]
pub struct CatalogHipsReport {
    /// Rows placed (all rows with a position).
    pub rows: u64,
    /// Tile files written (Allsky files included).
    pub tiles: usize,
    /// Deepest order holding rows.
    pub order: u8,
    /// The rank column used, if any.
    pub rank: Option<String>,
}

/// The order of the coverage map written as `Moc.fits`.
const MOC_ORDER: u8 = 10;

/// One row's place in the ranking.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    /// `_healpix_29` of the row.
    cell: u64,
    /// Sort key, smaller first (rank value, negated when descending; +inf when null).
    key: f64,
    /// Row within its partition's batches.
    idx: u32,
}

fn by_rank(a: &Ranked, b: &Ranked) -> std::cmp::Ordering {
    a.key.total_cmp(&b.key).then(a.cell.cmp(&b.cell))
}

/// splitmix64: a hash that spreads positions evenly over [0, 1) for rank-less sampling.
fn spread(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The rank column for `catalog`: the one asked for, else the first magnitude.
fn rank_column(catalog: &Catalog, asked: Option<&str>) -> Result<Option<String>> {
    let columns = catalog.columns();
    if let Some(name) = asked {
        let c = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::Invalid(format!("rank column '{name}': no such column")))?;
        if !c.data_type.is_numeric() {
            return Err(Error::Invalid(format!(
                "rank column '{name}' is {}, not a number",
                c.data_type
            )));
        }
        return Ok(Some(c.name.clone()));
    }
    let numeric = || columns.iter().filter(|c| c.data_type.is_numeric());
    Ok(numeric()
        .find(|c| {
            c.meta
                .ucd
                .as_deref()
                .is_some_and(|u| u.starts_with("phot.mag"))
        })
        .or_else(|| numeric().find(|c| c.name.to_ascii_lowercase().contains("mag")))
        .map(|c| c.name.clone()))
}

/// Columns written to tiles: all but HATS's own.
fn shown(name: &str) -> bool {
    !(name.starts_with("_healpix") || matches!(name, "Norder" | "Dir" | "Npix"))
}

/// One partition read: its rows ranked, and their text lines on demand.
struct PartitionRows {
    batches: Vec<RecordBatch>,
    offsets: Vec<usize>,
    ranked: Vec<Ranked>,
}

impl PartitionRows {
    fn read(
        catalog: &Catalog,
        pixel: &Pixel,
        rank: Option<&str>,
        descending: bool,
    ) -> Result<Self> {
        let batches = catalog.read_partition(pixel)?;
        let mut offsets = Vec::with_capacity(batches.len() + 1);
        let mut ranked = Vec::new();
        let mut base = 0usize;
        for batch in &batches {
            offsets.push(base);
            let cells = cells_of(catalog, batch)?;
            let keys = match rank {
                Some(r) => {
                    let col = batch
                        .column_by_name(r)
                        .ok_or_else(|| Error::Invalid(format!("partition lacks column '{r}'")))?;
                    let v = arrow::compute::cast(col, &DataType::Float64)
                        .map_err(|e| Error::Invalid(format!("rank column '{r}': {e}")))?;
                    let v = v.as_primitive::<Float64Type>();
                    (0..batch.num_rows())
                        .map(|i| {
                            if v.is_null(i) || v.value(i).is_nan() {
                                f64::INFINITY
                            } else if descending {
                                -v.value(i)
                            } else {
                                v.value(i)
                            }
                        })
                        .collect::<Vec<_>>()
                }
                None => cells
                    .iter()
                    .map(|c| c.map_or(f64::INFINITY, spread))
                    .collect(),
            };
            for (i, (cell, key)) in cells.iter().zip(keys).enumerate() {
                if let Some(cell) = cell {
                    ranked.push(Ranked {
                        cell: *cell,
                        key,
                        idx: (base + i) as u32,
                    });
                }
            }
            base += batch.num_rows();
        }
        offsets.push(base);
        ranked.sort_by(by_rank);
        Ok(Self {
            batches,
            offsets,
            ranked,
        })
    }

    /// The tab-separated text of row `idx`.
    fn line(&self, idx: u32, columns: &[usize]) -> Result<String> {
        let idx = idx as usize;
        let b = self.offsets.partition_point(|&o| o <= idx) - 1;
        let batch = &self.batches[b];
        let row = idx - self.offsets[b];
        let opts = FormatOptions::default().with_null("");
        let mut out = String::new();
        for (n, &c) in columns.iter().enumerate() {
            if n > 0 {
                out.push('\t');
            }
            let f = ArrayFormatter::try_new(batch.column(c).as_ref(), &opts)
                .map_err(|e| Error::Invalid(format!("formatting a row: {e}")))?;
            let v = f.value(row).to_string();
            out.push_str(&v.replace(['\t', '\n', '\r'], " "));
        }
        Ok(out)
    }
}

/// The `_healpix_29` of every row of `batch` (`None` without a valid position).
fn cells_of(catalog: &Catalog, batch: &RecordBatch) -> Result<Vec<Option<u64>>> {
    if let Some(h) = catalog
        .healpix_column()
        .and_then(|h| batch.column_by_name(h))
    {
        let h = arrow::compute::cast(h, &DataType::Int64)
            .map_err(|e| Error::Invalid(format!("_healpix_29: {e}")))?;
        return Ok(h
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| v as u64))
            .collect());
    }
    let col = |name: &str| -> Result<arrow::array::ArrayRef> {
        let c = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Invalid(format!("partition lacks column '{name}'")))?;
        arrow::compute::cast(c, &DataType::Float64).map_err(|e| Error::Invalid(e.to_string()))
    };
    let (ra, dec) = (col(catalog.ra_column())?, col(catalog.dec_column())?);
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    Ok((0..batch.num_rows())
        .map(|i| {
            if ra.is_null(i) || dec.is_null(i) {
                return None;
            }
            meridian_sky::SkyPoint::new(ra.value(i).rem_euclid(360.0), dec.value(i))
                .ok()
                .map(|p| meridian_sky::healpix::hash(29, &p))
        })
        .collect())
}

fn cell_at(cell29: u64, order: u8) -> u64 {
    cell29 >> (2 * (29 - order as u32))
}

/// Places `rows` (best first; `done[i]` marks rows placed already) at `orders`: at each
/// order every cell takes up to `per_tile` of its remaining rows, or all of them at
/// `take_all`. `eligible(i, k)` says whether row `i` may be placed at order `k` at all.
/// Returns (row, order) in placement order.
fn place(
    rows: &[Ranked],
    done: &mut [bool],
    orders: std::ops::RangeInclusive<u8>,
    per_tile: usize,
    take_all: Option<u8>,
    eligible: &dyn Fn(usize, u8) -> bool,
) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    for k in orders {
        let mut taken: HashMap<u64, usize> = HashMap::new();
        let mut left = false;
        for (i, r) in rows.iter().enumerate() {
            if done[i] || !eligible(i, k) {
                left |= !done[i];
                continue;
            }
            let n = taken.entry(cell_at(r.cell, k)).or_insert(0);
            if *n < per_tile || take_all == Some(k) {
                *n += 1;
                done[i] = true;
                out.push((i, k));
            } else {
                left = true;
            }
        }
        if !left {
            break;
        }
    }
    out
}

/// Tiles being written: (order, cell) -> lines, and the completeness of each cell.
#[derive(Default)]
struct Tiles {
    lines: HashMap<(u8, u64), Vec<String>>,
}

impl Tiles {
    fn push(&mut self, order: u8, cell: u64, line: String) {
        self.lines.entry((order, cell)).or_default().push(line);
    }
}

/// Writes tile files for every (order >= 3, cell) of `tiles`; `complete(order, cell)`
/// gives (rows placed in the cell up to this order, rows in the cell).
fn write_tiles(
    root: &Path,
    header: &str,
    tiles: &Tiles,
    complete: &dyn Fn(u8, u64) -> (u64, u64),
) -> Result<usize> {
    let mut n = 0;
    for (&(order, cell), lines) in &tiles.lines {
        if order < 3 {
            continue;
        }
        let (a, b) = complete(order, cell);
        let mut text = format!("# Completeness = {a} / {b}\n{header}\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        write_new(&tile_path(root, order, cell, "tsv"), text.as_bytes())?;
        n += 1;
    }
    Ok(n)
}

/// Counts, for each (order, cell) of `placed` (cell29, order) at orders from..=to, the
/// rows placed in the cell at that order or lower.
fn placed_up_to(placed: &[(u64, u8)], to: u8) -> HashMap<(u8, u64), u64> {
    let mut m = HashMap::new();
    for &(cell, o) in placed {
        for k in o..=to {
            *m.entry((k, cell_at(cell, k))).or_insert(0) += 1;
        }
    }
    m
}

/// What the first pass keeps of a partition.
struct Candidates {
    pixel: Pixel,
    rows: u64,
    ranked: Vec<Ranked>,
    lines: Vec<String>,
    moc_cells: Vec<u64>,
}

/// Builds the catalog HiPS of `catalog` into directory `out` (replacing what was there
/// only once the new one is complete). `progress` hears (stage, count).
pub fn build(
    catalog: &Catalog,
    out: &Path,
    opts: &CatalogHipsOptions,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<CatalogHipsReport> {
    if opts.per_tile == 0 {
        return Err(Error::Invalid("rows per tile must be at least 1".into()));
    }
    if !(3..=20).contains(&opts.max_order) {
        return Err(Error::Invalid(format!(
            "order {}: a catalog HiPS's deepest order is from 3 to 20",
            opts.max_order
        )));
    }
    let rank = rank_column(catalog, opts.rank.as_deref())?;
    let schema = catalog.schema();
    let columns: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| shown(schema.field(i).name()))
        .collect();
    let header = columns
        .iter()
        .map(|&i| schema.field(i).name().as_str())
        .collect::<Vec<_>>()
        .join("\t");
    let partitions = catalog.partitions().to_vec();
    let max_part = partitions.iter().map(|p| p.order).max().unwrap_or(0);
    let cap = opts.max_order.max(max_part + 1);
    let per_tile = opts.per_tile;

    // Pass 1: every partition's best rows, its row count and coverage.
    let read = std::sync::atomic::AtomicU64::new(0);
    let firsts: Vec<Candidates> = partitions
        .par_iter()
        .map(|pixel| -> Result<Candidates> {
            let p = PartitionRows::read(catalog, pixel, rank.as_deref(), opts.descending)?;
            let keep = per_tile * (pixel.order as usize + 1);
            let ranked: Vec<Ranked> = p.ranked.iter().take(keep).copied().collect();
            let lines = ranked
                .iter()
                .map(|r| p.line(r.idx, &columns))
                .collect::<Result<_>>()?;
            let mut moc_cells: Vec<u64> = p
                .ranked
                .iter()
                .map(|r| cell_at(r.cell, MOC_ORDER))
                .collect();
            moc_cells.sort_unstable();
            moc_cells.dedup();
            let n = p.ranked.len() as u64;
            progress(
                "rows",
                read.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n,
            );
            Ok(Candidates {
                pixel: *pixel,
                rows: n,
                ranked,
                lines,
                moc_cells,
            })
        })
        .collect::<Result<_>>()?;
    let total: u64 = firsts.iter().map(|c| c.rows).sum();

    // The low orders, decided from the candidates of all partitions together.
    let mut all: Vec<(Ranked, usize, usize)> = firsts
        .iter()
        .enumerate()
        .flat_map(|(p, c)| c.ranked.iter().enumerate().map(move |(j, r)| (*r, p, j)))
        .collect();
    all.sort_by(|a, b| by_rank(&a.0, &b.0));
    let ranked: Vec<Ranked> = all.iter().map(|a| a.0).collect();
    let mut done = vec![false; ranked.len()];
    let part_order: Vec<u8> = all.iter().map(|a| firsts[a.1].pixel.order).collect();
    let low = place(&ranked, &mut done, 1..=max_part, per_tile, None, &|i, k| {
        part_order[i] >= k
    });
    let mut placed_in: Vec<HashSet<u32>> = vec![HashSet::new(); firsts.len()];
    let mut tiles = Tiles::default();
    let mut low_placed = Vec::with_capacity(low.len());
    let mut deepest = 0u8;
    for &(i, k) in &low {
        let (r, p, j) = all[i];
        placed_in[p].insert(r.idx);
        tiles.push(k, cell_at(r.cell, k), firsts[p].lines[j].clone());
        low_placed.push((r.cell, k));
        deepest = deepest.max(k);
    }
    drop(all);

    let building = crate::fresh_building(out)?;

    // Rows in each low cell: the partitions inside it.
    let part_rows: Vec<(Pixel, u64)> = firsts.iter().map(|c| (c.pixel, c.rows)).collect();
    let in_cell = |order: u8, cell: u64| -> u64 {
        part_rows
            .iter()
            .filter(|(px, _)| {
                px.order >= order && px.pix >> (2 * (px.order - order) as u32) == cell
            })
            .map(|(_, n)| n)
            .sum()
    };
    let low_counts = placed_up_to(&low_placed, max_part);
    let mut written = write_tiles(&building, &header, &tiles, &|k, c| {
        (low_counts.get(&(k, c)).copied().unwrap_or(0), in_cell(k, c))
    })?;
    progress("tiles", written as u64);
    // Orders 1 and 2 are kept for the Allsky files (rows of order-0 partitions join them).
    let mut allsky: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for k in 1..=2u8 {
        let mut cells: Vec<&(u8, u64)> = tiles.lines.keys().filter(|t| t.0 == k).collect();
        cells.sort();
        for t in cells {
            allsky[k as usize - 1].extend(tiles.lines[t].iter().cloned());
        }
    }
    drop(tiles);
    let moc_cells: Vec<u64> = {
        let mut v: Vec<u64> = firsts
            .iter()
            .flat_map(|c| c.moc_cells.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    drop(firsts);

    // Pass 2: each partition's deeper tiles from its own rows.
    let tiles_written = std::sync::atomic::AtomicUsize::new(written);
    let deeper: Vec<(u8, [Vec<String>; 2])> = partitions
        .par_iter()
        .zip(placed_in.par_iter())
        .map(|(pixel, placed)| -> Result<(u8, [Vec<String>; 2])> {
            let p = PartitionRows::read(catalog, pixel, rank.as_deref(), opts.descending)?;
            let mut done: Vec<bool> = p.ranked.iter().map(|r| placed.contains(&r.idx)).collect();
            let start = pixel.order + 1;
            let got = place(
                &p.ranked,
                &mut done,
                start..=cap,
                per_tile,
                Some(cap),
                &|_, _| true,
            );
            let mut tiles = Tiles::default();
            let mut deepest = 0u8;
            let mut placed_cells = Vec::with_capacity(got.len());
            for &(i, k) in &got {
                let r = p.ranked[i];
                tiles.push(k, cell_at(r.cell, k), p.line(r.idx, &columns)?);
                placed_cells.push((r.cell, k));
                deepest = deepest.max(k);
            }
            // Rows above this partition's own order, as placed in pass 1.
            let above = p.ranked.iter().filter(|r| placed.contains(&r.idx));
            let mut counts = placed_up_to(&placed_cells, deepest.max(start));
            for r in above {
                for k in start..=deepest.max(start) {
                    *counts.entry((k, cell_at(r.cell, k))).or_insert(0) += 1;
                }
            }
            let mut cell_rows: HashMap<(u8, u64), u64> = HashMap::new();
            for r in &p.ranked {
                for k in start..=deepest.max(start) {
                    *cell_rows.entry((k, cell_at(r.cell, k))).or_insert(0) += 1;
                }
            }
            let n = write_tiles(&building, &header, &tiles, &|k, c| {
                (
                    counts.get(&(k, c)).copied().unwrap_or(0),
                    cell_rows.get(&(k, c)).copied().unwrap_or(0),
                )
            })?;
            let sofar = tiles_written.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            progress("tiles", sofar as u64);
            let mut low: [Vec<String>; 2] = [Vec::new(), Vec::new()];
            for k in 1..=2u8 {
                for (_, lines) in tiles.lines.iter().filter(|(t, _)| t.0 == k) {
                    low[k as usize - 1].extend(lines.iter().cloned());
                }
            }
            Ok((deepest, low))
        })
        .collect::<Result<_>>()?;
    written = tiles_written.load(std::sync::atomic::Ordering::Relaxed);
    for (d, low) in deeper {
        deepest = deepest.max(d);
        for (k, lines) in low.into_iter().enumerate() {
            allsky[k].extend(lines);
        }
    }
    let mut shown_rows = 0u64;
    for (k, lines) in allsky.iter().enumerate() {
        shown_rows += lines.len() as u64;
        let mut text = format!("# Completeness = {shown_rows} / {total}\n{header}\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        write_new(
            &building.join(format!("Norder{}", k + 1)).join("Allsky.tsv"),
            text.as_bytes(),
        )?;
        written += 1;
    }
    metadata(&building, catalog, &columns)?;
    let moc = meridian_sky::moc_from_cells(MOC_ORDER, moc_cells)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    write_new(
        &building.join("Moc.fits"),
        &crate::moc_file(&moc, &opts.name)?,
    )?;
    let mut p = Properties::meridian(
        &opts.name,
        "catalog",
        &format!(
            "Rows of catalog {}, {} per HEALPix cell and order{}",
            opts.name,
            per_tile,
            match &rank {
                Some(r) => format!(
                    ", ranked by {r} ({})",
                    if opts.descending {
                        "largest first"
                    } else {
                        "smallest first"
                    }
                ),
                None => ", sampled evenly".to_string(),
            }
        ),
        "catalog",
    );
    p.set("hips_order", deepest.max(3).to_string())
        .set("hips_order_min", "1")
        .set("hips_tile_format", "tsv")
        .set("hips_cat_nrows", total.to_string())
        .set("hips_initial_fov", "60")
        .set(
            "moc_sky_fraction",
            format!("{:.6}", moc.coverage_percentage()),
        );
    if let Some(r) = &rank {
        p.set("hips_cat_rank", r.clone());
    }
    p.write(&building)?;
    crate::swap_in(&building, out)?;
    Ok(CatalogHipsReport {
        rows: total,
        tiles: written,
        order: deepest,
        rank,
    })
}

/// `Metadata.xml`: the columns as VOTable FIELDs (no rows). The position columns carry the
/// `pos.eq.ra`/`pos.eq.dec` UCDs viewers look for.
fn metadata(root: &Path, catalog: &Catalog, columns: &[usize]) -> Result<()> {
    use meridian_formats::write::xml_escape as escape;
    let schema = catalog.schema();
    let fields = meridian_formats::write::vo_fields(&schema);
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.4\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\">\n\
         <RESOURCE type=\"results\">\n<TABLE>\n",
    );
    for &i in columns {
        let name = schema.field(i).name();
        let Some(f) = fields.iter().find(|f| &f.name == name) else {
            continue;
        };
        let ucd = if name == catalog.ra_column() {
            Some("pos.eq.ra;meta.main".to_string())
        } else if name == catalog.dec_column() {
            Some("pos.eq.dec;meta.main".to_string())
        } else {
            f.meta.ucd.clone()
        };
        x.push_str(&format!(
            "<FIELD name=\"{}\" datatype=\"{}\"",
            escape(name),
            f.datatype
        ));
        if let Some(a) = &f.arraysize {
            x.push_str(&format!(" arraysize=\"{}\"", escape(a)));
        }
        if let Some(u) = &ucd {
            x.push_str(&format!(" ucd=\"{}\"", escape(u)));
        }
        if let Some(u) = &f.meta.unit {
            x.push_str(&format!(" unit=\"{}\"", escape(u)));
        }
        x.push_str("/>\n");
    }
    x.push_str("<DATA><TABLEDATA></TABLEDATA></DATA>\n</TABLE>\n</RESOURCE>\n</VOTABLE>\n");
    write_new(&root.join("Metadata.xml"), x.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cell: u64, key: f64, idx: u32) -> Ranked {
        Ranked { cell, key, idx }
    }

    #[test]
    fn each_order_takes_the_best_rows_left_in_each_cell() {
        // Two order-1 cells (0 and 1 at order 1: cell29 values 0 and 1 << 56).
        let c0 = 0u64;
        let c1 = 1u64 << 56;
        let rows = vec![
            row(c0, 1.0, 0),
            row(c1, 2.0, 1),
            row(c0, 3.0, 2),
            row(c0 + 1, 4.0, 3),
            row(c1, 5.0, 4),
        ];
        let mut done = vec![false; rows.len()];
        let got = place(&rows, &mut done, 1..=3, 1, Some(3), &|_, _| true);
        // Order 1: the best of each cell; order 2: cells of order 2 (c0 and c1 fall in
        // different ones; 2 and 3 share c0's); order 3: the rest.
        assert_eq!(got[..2], [(0, 1), (1, 1)]);
        assert!(done.iter().all(|d| *d));
        let at = |i: usize| got.iter().find(|g| g.0 == i).unwrap().1;
        assert_eq!(at(2), 2);
        assert_eq!(at(4), 2);
        assert_eq!(at(3), 3);
    }

    #[test]
    fn rankless_sampling_is_even_and_fixed() {
        let v: Vec<f64> = (0..10_000u64).map(spread).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.02);
        assert_eq!(spread(42), spread(42));
    }
}
