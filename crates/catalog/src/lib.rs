//! The Meridian catalog store: catalogs in the HATS layout (Hierarchical Adaptive Tiling
//! Scheme, IVOA note; as written by `hats-import` and read by LSDB), streaming ingest with
//! adaptive partitioning and margin caches, atomic publication, and spatially pruned reads.
//!
//! A catalog named `gaia` in a store is a HATS *collection*:
//!
//! ```text
//! <store>/gaia -> .versions/gaia.<stamp>       (symlink, swapped atomically on re-ingest)
//!     collection.properties                     (main catalog and default margin)
//!     gaia/hats.properties, partition_info.csv, dataset/Norder=K/Dir=D/Npix=N.parquet,
//!          dataset/_metadata, dataset/_common_metadata
//!     gaia_10arcs/...                           (margin cache, same layout)
//! ```
//!
//! HATS catalogs written by other tools are served in place: the store entry is a symlink to
//! the catalog or collection directory.

pub mod append;
mod catalog;
pub mod check;
pub mod compact;
mod error;
pub mod ingest;
pub mod layout;
pub mod location;
mod margin;
pub mod objects;
pub mod partitioning;
pub mod properties;
mod store;
mod write;

pub use catalog::{Catalog, CellStats, ColumnInfo, Scan, ScanStats, coverage_order, overlaps};
pub use error::{Error, Result};
pub use ingest::{IngestOptions, IngestProgress, IngestReport, Stage};
pub use layout::Pixel;
pub use location::Location;
pub use store::{SUPERSEDED_KEPT, Store, pid_alive};
