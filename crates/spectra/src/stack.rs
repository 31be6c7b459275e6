//! Stacks of stored spectra: each spectrum (optionally shifted to its rest frame) is
//! resampled onto a common grid, conserving flux, and combined by a [`Stacker`]. Blocks of
//! spectra are stacked in parallel into partial stacks merged in order, so the memory used
//! is the stacker's plus a group of blocks whatever the number of spectra, and the answer
//! does not depend on the number of threads.

use rayon::prelude::*;

use crate::ops::{Grid, Stack, StackMethod, Stacker, resample, to_rest_frame};

use crate::store::Dataset;
use crate::{Error, Result};

/// Spectra stacked into one partial stack.
const BLOCK: usize = 256;
/// Blocks handled in parallel before their partial stacks are merged.
const GROUP: usize = 16;

/// Whether `wave` is `grid` (to within 10^-9 of a pixel): the spectrum is already on it.
fn same_grid(wave: &[f64], grid: &[f64]) -> bool {
    if wave.len() != grid.len() || wave.len() < 2 {
        return false;
    }
    let tol = 1e-9 * (grid[1] - grid[0]).abs();
    wave.iter().zip(grid).all(|(a, b)| (a - b).abs() <= tol)
}

/// Spectrum `r` of `d` on `grid` as (flux, ivar), shifted to its rest frame when `spec`
/// asks (None: it has no redshift). A spectrum already on the grid is taken as it is (what
/// resampling onto the same grid gives), its bad pixels given ivar 0.
fn on_grid(
    d: &Dataset,
    r: u32,
    spec: &StackSpec,
    grid: &[f64],
) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let a = d.arrays(r);
    if spec.rest_frame {
        let Some(z) = d.redshift(r).filter(|z| z.is_finite() && *z > -1.0) else {
            return Ok(None);
        };
        let mut wave = a.wavelength_aa.to_vec();
        let mut flux = a.flux.to_vec();
        let mut ivar = a.ivar.to_vec();
        to_rest_frame(&mut wave, &mut flux, &mut ivar, z)?;
        let out = resample(&wave, &flux, &ivar, a.mask, grid)?;
        return Ok(Some((out.flux, out.ivar)));
    }
    if same_grid(a.wavelength_aa, grid) {
        return Ok(Some(identity(a.flux, a.ivar, a.mask)));
    }
    let out = resample(a.wavelength_aa, a.flux, a.ivar, a.mask, grid)?;
    Ok(Some((out.flux, out.ivar)))
}

/// A spectrum resampled onto its own grid: bad pixels (masked, ivar not positive and
/// finite, flux not finite) get flux 0 and ivar 0, the others stay.
fn identity(flux: &[f32], ivar: &[f32], mask: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut f = Vec::with_capacity(flux.len());
    let mut w = Vec::with_capacity(flux.len());
    for i in 0..flux.len() {
        let good = mask[i] == 0 && ivar[i] > 0.0 && ivar[i].is_finite() && flux[i].is_finite();
        f.push(if good { flux[i] } else { 0.0 });
        w.push(if good { ivar[i] } else { 0.0 });
    }
    (f, w)
}

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
    // Blocks of BLOCK spectra are stacked in parallel into partial stacks, merged in block
    // order: the answer depends on the block size, never on the number of threads. A
    // median keeps its values in order instead, so its spectra are added one by one.
    let partial = spec.method != StackMethod::Median;
    for group in rows.chunks(BLOCK * GROUP) {
        if partial {
            let parts: Vec<(Stacker, u64, u64)> = group
                .par_chunks(BLOCK)
                .map(|block| -> Result<(Stacker, u64, u64)> {
                    let mut st = Stacker::new(grid.len(), spec.method, spec.budget_bytes)?;
                    let (mut used, mut skipped) = (0, 0);
                    for &(d, r) in block {
                        match on_grid(d, r, spec, &grid)? {
                            Some((flux, ivar)) => {
                                st.add(&flux, &ivar)?;
                                used += 1;
                            }
                            None => skipped += 1,
                        }
                    }
                    Ok((st, used, skipped))
                })
                .collect::<Result<_>>()?;
            for (st, u, s) in parts {
                stacker.merge(st)?;
                used += u;
                no_redshift += s;
            }
        } else {
            for block in group.chunks(BLOCK) {
                let on: Vec<Option<(Vec<f32>, Vec<f32>)>> = block
                    .par_iter()
                    .map(|&(d, r)| on_grid(d, r, spec, &grid))
                    .collect::<Result<_>>()?;
                for x in on {
                    match x {
                        Some((flux, ivar)) => {
                            stacker.add(&flux, &ivar)?;
                            used += 1;
                        }
                        None => no_redshift += 1,
                    }
                }
            }
        }
        done += group.len() as u64;
        progress(done);
    }
    Ok(Stacked {
        stack: stacker.finish(),
        wavelength_aa: grid,
        used,
        no_redshift,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spectrum_on_the_grid_is_what_resampling_onto_it_gives() {
        let wave: Vec<f64> = (0..300).map(|i| 3600.0 + 2.0 * i as f64).collect();
        let flux: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 - 20.0) * 0.37)
            .collect();
        let mut ivar: Vec<f32> = (0..300).map(|i| 0.5 + (i % 7) as f32).collect();
        let mut mask = vec![0u32; 300];
        mask[10] = 4;
        ivar[20] = 0.0;
        ivar[30] = f32::INFINITY;
        let r = resample(&wave, &flux, &ivar, &mask, &wave).unwrap();
        let (f, w) = identity(&flux, &ivar, &mask);
        assert_eq!(r.flux, f);
        assert_eq!(r.ivar, w);
        assert!(same_grid(&wave, &wave));
        assert!(!same_grid(&wave[1..], &wave[..299]));
    }
}
