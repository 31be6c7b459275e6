//! HiPS (IVOA Hierarchical Progressive Surveys 1.0) sky maps: the tile geometry, FITS and
//! PNG tiles, `properties`, the `Norder3/Allsky` mosaic, and HiPS built from catalogs
//! (density maps of source counts per HEALPix cell).
//!
//! Tile geometry: the tile of order `k` and index `n` is a `w` x `w` image (`w` a power of
//! two) of the HEALPix cells of order `k + log2(w)` inside cell `n`; the cell of a pixel is
//! `n * w^2 + s`, where the sub-index `s` interleaves the bits of the pixel's row counted
//! from the top of the PNG image (even bits) and its column (odd bits). FITS tiles hold
//! the same image with its rows from the bottom, as FITS stores them.

pub mod catalog;
pub mod density;
pub mod hips2fits;
pub mod image;
pub mod tile;

pub use tile::{Properties, TileGeometry, tile_path};

/// Errors of HiPS building.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A parameter out of range, or input that cannot make a HiPS.
    #[error("{0}")]
    Invalid(String),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] meridian_catalog::Error),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `out` with `.suffix` appended (not replacing a dot in its name: `dss.red` builds in
/// `dss.red.building`, apart from `dss.blue`'s).
pub(crate) fn beside(out: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}

/// An empty directory beside `out` to build a new HiPS in (an earlier, unfinished build's
/// removed).
pub(crate) fn fresh_building(out: &std::path::Path) -> Result<std::path::PathBuf> {
    let building = beside(out, "building");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| Error::io(&building, e))?;
    }
    std::fs::create_dir_all(&building).map_err(|e| Error::io(&building, e))?;
    Ok(building)
}

/// `Moc.fits`'s bytes: `moc` as MOC 2.0 FITS named `name`.
pub(crate) fn moc_file(moc: &meridian_sky::Moc, name: &str) -> Result<Vec<u8>> {
    meridian_sky::moc_fits(moc, Some(name)).map_err(|e| Error::Invalid(e.to_string()))
}

/// Puts the finished HiPS in `building` in place of `out`: readers see the old one or the
/// new one, whole.
pub(crate) fn swap_in(building: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let old = crate::beside(out, "old");
    if out.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(building, out).map_err(|e| Error::io(out, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}
