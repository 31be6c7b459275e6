//! HATS directory layout: pixels, partition file paths and `partition_info.csv`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use meridian_sky::healpix;

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
    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "dataset/Norder={}/Dir={}/Npix={}.parquet",
            self.order,
            self.pix / 10_000 * 10_000,
            self.pix
        ))
    }

    /// The file of this partition in catalog directory `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.relative_path())
    }
}

impl std::fmt::Display for Pixel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Norder={}/Npix={}", self.order, self.pix)
    }
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
pub fn read_partitions(dir: &Path) -> Result<Vec<Pixel>> {
    let csv = dir.join("partition_info.csv");
    let mut pixels = if csv.exists() {
        let text = std::fs::read_to_string(&csv).map_err(|e| Error::io(&csv, e))?;
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
                .ok_or_else(|| Error::Invalid(format!("{}: no '{name}' column", csv.display())))
        };
        let (io, ip) = (pos("Norder")?, pos("Npix")?);
        let mut out = Vec::new();
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || {
                Error::Invalid(format!(
                    "{}: line {}: bad pixel '{line}'",
                    csv.display(),
                    n + 2
                ))
            };
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
        scan_dataset(&dir.join("dataset"))?
    };
    pixels.sort_by_key(|p| p.hpx29_range().start);
    Ok(pixels)
}

fn scan_dataset(dataset: &Path) -> Result<Vec<Pixel>> {
    let mut out = Vec::new();
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| Error::io(p, e));
    for order_dir in read(dataset)? {
        let order_dir = order_dir.map_err(|e| Error::io(dataset, e))?.path();
        let Some(order) = dir_value(&order_dir, "Norder=") else {
            continue;
        };
        for d in read(&order_dir)? {
            let d = d.map_err(|e| Error::io(&order_dir, e))?.path();
            if dir_value(&d, "Dir=").is_none() {
                continue;
            }
            for f in read(&d)? {
                let f = f.map_err(|e| Error::io(&d, e))?.path();
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Some(Ok(pix)) = name
                    .strip_prefix("Npix=")
                    .and_then(|n| n.split('.').next())
                    .map(str::parse)
                {
                    out.push(Pixel::new(order as u8, pix)?);
                }
            }
        }
    }
    Ok(out)
}

fn dir_value(p: &Path, prefix: &str) -> Option<u64> {
    p.file_name()?.to_str()?.strip_prefix(prefix)?.parse().ok()
}
