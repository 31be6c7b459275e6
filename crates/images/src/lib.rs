//! FITS images for Meridian: the world coordinate systems of their headers (pixel to sky
//! and back), their pixels (plain, gzip and tile-compressed) and cutouts.
//!
//! Angles crossing this API are in degrees and say so in their names; pixel coordinates
//! follow FITS, the centre of the first pixel being 1.

pub mod collection;
pub mod cutout;
mod error;
pub mod footprint;
pub mod frames;
pub mod obscore;
pub mod preview;
pub mod sia;
pub mod soda;
pub mod synth;
pub mod wcs;

pub use cutout::{ImageHdu, PixelBox, Values, circle_box, image_hdus, read_box, write_cutout};
pub use error::{Error, Result};
pub use footprint::Footprint;
pub use wcs::{Frame, Wcs};
