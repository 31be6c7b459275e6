//! HATS directory layout: pixels, partition file paths and `partition_info.csv`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use meridian_sky::healpix;

use crate::location::Location;
use crate::{Error, Result};

/// A HEALPix NESTED cell identifying a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pixel {
    /// HEALPix order (Norder).
    pub order: u8,
    /// NESTED index at that order (Npix).
    pub pix: u64,
}

impl Pixel {
    /// A pixel, checked against its order.
    pub fn new(order: u8, pix: u64) -> Result<Self> {
        healpix::check_order(order)?;
        if pix >= healpix::n_cells(order) {
            return Err(Error::Invalid(format!(
                "pixel {pix} does not exist at order {order}"
            )));
        }
        Ok(Self { order, pix })
    }

    /// The `_healpix_29` range of this pixel.
    pub fn hpx29_range(&self) -> Range<u64> {
        healpix::hpx29_range(self.order, self.pix)
    }

    /// `dataset/Norder=K/Dir=D/Npix=N.parquet` relative to a catalog directory.
    pub fn relative_path(&self) -> String {
        format!(
            "dataset/Norder={}/Dir={}/Npix={}.parquet",
            self.order,
            self.pix / 10_000 * 10_000,
            self.pix
        )
    }

    /// The file of this partition in catalog directory `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.relative_path())
    }

    /// `dataset/Norder=K/Dir=D/Npix=N` relative to a catalog directory: the partition as a
    /// directory of files (a catalog with `hats_npix_suffix = /`, as appends write).
    pub fn relative_dir(&self) -> String {
        format!(
            "dataset/Norder={}/Dir={}/Npix={}",
            self.order,
            self.pix / 10_000 * 10_000,
            self.pix
        )
    }

    /// The partition a file path relative to a catalog directory belongs to:
    /// `dataset/Norder=K/Dir=D/Npix=N.parquet` or a file in `dataset/Norder=K/Dir=D/Npix=N/`.
    pub fn of_path(rel: &str) -> Option<Pixel> {
        let mut parts = rel.split('/');
        if parts.next() != Some("dataset") {
            return None;
        }
        let value = |s: Option<&str>, prefix: &str| s?.strip_prefix(prefix)?.parse::<u64>().ok();
        let order = value(parts.next(), "Norder=")?;
        value(parts.next(), "Dir=")?;
        let name = parts.next()?;
        let pix = name
            .strip_prefix("Npix=")?
            .split('.')
            .next()?
            .parse::<u64>()
            .ok()?;
        Pixel::new(u8::try_from(order).ok()?, pix).ok()
    }
}

impl std::fmt::Display for Pixel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Norder={}/Npix={}", self.order, self.pix)
    }
}

/// The fraction of the sky `pixels` (disjoint) cover, for `moc_sky_fraction`.
pub(crate) fn sky_fraction(pixels: &[Pixel]) -> f64 {
    pixels
        .iter()
        .map(|p| 1.0 / healpix::n_cells(p.order) as f64)
        .sum()
}

/// Writes `partition_info.csv`.
pub fn write_partition_info(dir: &Path, pixels: &[Pixel]) -> Result<()> {
    let mut s = String::from("Norder,Npix\n");
    for p in pixels {
        s.push_str(&format!("{},{}\n", p.order, p.pix));
    }
    let path = dir.join("partition_info.csv");
    std::fs::write(&path, s).map_err(|e| Error::io(path, e))
}

/// Reads `partition_info.csv` (columns Norder and Npix, in any position), or, when absent,
/// lists the partition files under `dataset/`.
pub fn read_partitions(dir: &Location) -> Result<Vec<Pixel>> {
    let mut pixels = if dir.exists("partition_info.csv")? {
        let csv = dir.name_of("partition_info.csv");
        let text = dir.read_to_string("partition_info.csv")?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        let pos = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| Error::Invalid(format!("{csv}: no '{name}' column")))
        };
        let (io, ip) = (pos("Norder")?, pos("Npix")?);
        let mut out = Vec::new();
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || Error::Invalid(format!("{csv}: line {}: bad pixel '{line}'", n + 2));
            let order = cells
                .get(io)
                .and_then(|v| v.parse::<u8>().ok())
                .ok_or_else(bad)?;
            let pix = cells
                .get(ip)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(bad)?;
            out.push(Pixel::new(order, pix).map_err(|_| bad())?);
        }
        out
    } else {
        scan_dataset(dir)?
    };
    pixels.sort_by_key(|p| p.hpx29_range().start);
    Ok(pixels)
}

/// The partition files under `dataset/`: `Norder=K/Dir=D/Npix=N.parquet` (or a directory
/// `Npix=N/` of files).
fn scan_dataset(dir: &Location) -> Result<Vec<Pixel>> {
    let pixels: std::collections::BTreeSet<Pixel> = dir
        .list_files("dataset")?
        .iter()
        .filter_map(|f| Pixel::of_path(f))
        .collect();
    Ok(pixels.into_iter().collect())
}

/// The files of each partition directory (`dataset/Norder=K/Dir=D/Npix=N/*.parquet`, a
/// catalog with `hats_npix_suffix = /`), as paths relative to the catalog, in name order.
/// Hidden files and files not ending in `.parquet` are not data.
pub fn leaf_files(dir: &Location) -> Result<BTreeMap<Pixel, Vec<String>>> {
    let mut out: BTreeMap<Pixel, Vec<String>> = BTreeMap::new();
    if dir.as_local().is_some_and(|d| !d.join("dataset").exists()) {
        return Ok(out);
    }
    for f in dir.list_files("dataset")? {
        let name = f.rsplit('/').next().unwrap_or("");
        // Only files inside a partition directory: dataset/Norder/Dir/Npix=N/file.
        if f.split('/').count() != 5
            || name.starts_with('.')
            || name.starts_with('_')
            || !name.ends_with(".parquet")
        {
            continue;
        }
        if let Some(p) = Pixel::of_path(&f) {
            out.entry(p).or_default().push(f);
        }
    }
    for files in out.values_mut() {
        files.sort();
    }
    Ok(out)
}
