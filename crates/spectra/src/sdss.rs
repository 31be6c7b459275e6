//! SDSS (stub).
use crate::readers::fits::Fits;
use crate::{Result, Spectrum};
pub(crate) fn matches(_f: &Fits) -> bool {
    false
}
pub(crate) fn read_fits(_f: Fits) -> Result<Vec<Spectrum>> {
    Ok(vec![])
}
