//! Generic (stub).
use crate::readers::fits::Fits;
use crate::{Result, Spectrum};
pub(crate) fn read_fits(_f: Fits) -> Result<Vec<Spectrum>> {
    Ok(vec![])
}
/// x
pub fn read(_p: &std::path::Path) -> Result<Vec<Spectrum>> {
    Ok(vec![])
}
