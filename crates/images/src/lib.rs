//! FITS images for Meridian: the world coordinate systems of their headers (pixel to sky
//! and back), with footprints and pixel access to come on top.
//!
//! Angles crossing this API are in degrees and say so in their names; pixel coordinates
//! follow FITS, the centre of the first pixel being 1.

mod error;
pub mod wcs;

pub use error::{Error, Result};
pub use wcs::{Frame, Wcs};
