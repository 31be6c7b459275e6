//! Spherical geometry for Meridian: positions, angular separation, HEALPix NESTED indexing
//! and sky regions with ADQL semantics (circle, box, polygon, MOC).
//!
//! All angles crossing this API carry their unit in the name (`_deg`, `_rad`) or in a type.
//! HEALPix indexing is delegated to `cdshealpix` and MOC algebra to `moc` (CDS); this crate
//! adds input validation and the ADQL meaning of each region.

mod angle;
pub mod bounds;
mod error;
pub mod healpix;
pub mod moc_io;
mod point;
pub mod region;
pub mod stcs;

pub use angle::parse_angle_deg;
pub use error::{Error, Result};
pub use moc_io::{
    StMoc, StMocBuilder, mjd_to_us, moc_ascii, moc_fits, moc_from_cells, moc_from_ranges,
    moc_parse, moc_union, stmoc_fits, stmoc_from_points, stmoc_from_spans,
};
pub use point::{SkyPoint, angular_separation_deg};
pub use region::{Circle, CoordRange, Moc, Polygon, Region, SkyBox, moc_json};
