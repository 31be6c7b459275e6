//! Stacks of stored spectra: each spectrum (optionally shifted to its rest frame) is
//! resampled onto a common grid, conserving flux, and combined by a [`Stacker`]. Spectra
//! are resampled in parallel, a block at a time, and added in their given order, so the
//! memory used is the stacker's plus one block whatever the number of spectra, and the
//! answer does not depend on the number of threads.

use rayon::prelude::*;

use crate::ops::{Grid, Stack, StackMethod, Stacker, resample, to_rest_frame};
use crate::store::Dataset;
use crate::{Error, Result};

/// Spectra resampled at once.
const BLOCK: usize = 512;

/// What to stack and how.
#[derive(Debug, Clone, Copy)]
pub struct StackSpec {
    /// The common grid.
    pub grid: Grid,
    /// How pixels combine.
    pub method: StackMethod,
    /// Shift each spectrum to its rest frame first (spectra without a redshift are left
    /// out).
    pub rest_frame: bool,
    /// Memory the stacker may hold, bytes.
    pub budget_bytes: usize,
}

/// A stack and what went into it.
#[derive(Debug, Clone)]
pub struct Stacked {
    /// The stack.
    pub stack: Stack,
    /// The grid's wavelengths, Å.
    pub wavelength_aa: Vec<f64>,
    /// Spectra combined.
    pub used: u64,
    /// Spectra left out for want of a redshift (rest frame only).
    pub no_redshift: u64,
}

/// Stacks `rows` (dataset and row) by `spec`; `progress` hears the spectra done so far.
pub fn stack(
    rows: &[(&Dataset, u32)],
    spec: &StackSpec,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Stacked> {
    let grid = spec.grid.centres();
    let mut stacker = Stacker::new(grid.len(), spec.method, spec.budget_bytes)?;
    if let Some(max) = stacker.max_spectra()
        && rows.len() > max
    {
        return Err(Error::TooLarge(format!(
            "a {} stack of {} spectra on {} pixels needs more than the memory budget of {} \
             bytes (it holds {max} spectra): select fewer spectra, use a coarser grid, or \
             stack by mean or ivar, which use constant memory",
            spec.method,
            rows.len(),
            grid.len(),
            spec.budget_bytes
        )));
    }
    let mut used = 0u64;
    let mut no_redshift = 0u64;
    let mut done = 0u64;
    for block in rows.chunks(BLOCK) {
        let resampled: Vec<Option<crate::ops::Resampled>> = block
            .par_iter()
            .map(|&(d, r)| -> Result<Option<crate::ops::Resampled>> {
                let a = d.arrays(r);
                if spec.rest_frame {
                    let Some(z) = d.redshift(r).filter(|z| z.is_finite() && *z > -1.0) else {
                        return Ok(None);
                    };
                    let mut wave = a.wavelength_aa.to_vec();
                    let mut flux = a.flux.to_vec();
                    let mut ivar = a.ivar.to_vec();
                    to_rest_frame(&mut wave, &mut flux, &mut ivar, z)?;
                    resample(&wave, &flux, &ivar, a.mask, &grid).map(Some)
                } else {
                    resample(a.wavelength_aa, a.flux, a.ivar, a.mask, &grid).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        for r in resampled {
            match r {
                Some(r) => {
                    stacker.add(&r.flux, &r.ivar)?;
                    used += 1;
                }
                None => no_redshift += 1,
            }
        }
        done += block.len() as u64;
        progress(done);
    }
    Ok(Stacked {
        stack: stacker.finish(),
        wavelength_aa: grid,
        used,
        no_redshift,
    })
}
