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

/// Stacks `rows` (dataset and row) by `spec`; `progress` hears the spectra done so far and
/// answers whether to go on (false stops the stack with [`Error::Stopped`]).
///
/// Memory stays within `spec.budget_bytes`: a median holds its values plus one block of
/// resampled spectra (the block shrinks on fine grids); means hold a group of partial
/// stacks, as many as the budget allows.
pub fn stack(
    rows: &[(&Dataset, u32)],
    spec: &StackSpec,
    progress: &(dyn Fn(u64) -> bool + Sync),
) -> Result<Stacked> {
    let grid = spec.grid.centres();
    let n_pix = grid.len();
    // A resampled spectrum in flight: its flux and ivar.
    let spectrum_bytes = n_pix.saturating_mul(8).max(1);
    let median = spec.method == StackMethod::Median;
    let (block_len, group_len, stacker_budget) = if median {
        let block = (spec.budget_bytes / 4 / spectrum_bytes).clamp(1, BLOCK);
        (
            block,
            1,
            spec.budget_bytes
                .saturating_sub(block.saturating_mul(spectrum_bytes)),
        )
    } else {
        // Each partial stack: its sums (28 bytes a pixel) and one spectrum in flight.
        let per_partial = n_pix.saturating_mul(28).saturating_add(spectrum_bytes);
        let group = (spec.budget_bytes / 2 / per_partial.max(1)).clamp(1, GROUP);
        (BLOCK, group, spec.budget_bytes / 2)
    };
    let mut stacker = Stacker::new(n_pix, spec.method, stacker_budget)?;
    if let Some(max) = stacker.max_spectra()
        && rows.len() > max
    {
        return Err(Error::TooLarge(format!(
            "a {} stack of {} spectra on {} pixels needs more than the memory budget of {} \
             bytes (it holds {max} spectra): select fewer spectra, use a coarser grid, or \
             stack by mean or ivar, which use constant memory",
            spec.method,
            rows.len(),
            n_pix,
            spec.budget_bytes
        )));
    }
    let stopped = || Error::Stopped("the stack was stopped before its end".into());
    let mut used = 0u64;
    let mut no_redshift = 0u64;
    let mut done = 0u64;
    // Blocks are stacked in parallel into partial stacks, merged in block order: the answer
    // depends on the block size, never on the number of threads. A median keeps its values
    // in order instead, so its spectra are added one by one.
    for group in rows.chunks(block_len * group_len) {
        if !median {
            let parts: Vec<(Stacker, u64, u64)> = group
                .par_chunks(block_len)
                .map(|block| -> Result<(Stacker, u64, u64)> {
                    let mut st = Stacker::new(n_pix, spec.method, stacker_budget)?;
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
            let on: Vec<Option<(Vec<f32>, Vec<f32>)>> = group
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
        done += group.len() as u64;
        if !progress(done) {
            return Err(stopped());
        }
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
