//! Operations on spectra: flux-conserving resampling onto a wavelength grid, shifts to the
//! rest frame, and stacks of many spectra on one grid.
//!
//! Arrays follow [`crate::Spectrum`]: wavelengths in Å (f64, ascending, bin centres), flux
//! (f32), its inverse variance `ivar` (f32, 0 = no information) and a bit mask (u32, 0 =
//! good). A typical stack: [`to_rest_frame`] each spectrum, [`resample`] it onto
//! [`Grid::centres`], [`Stacker::add`] it, then [`Stacker::finish`].

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The most pixels a [`Grid`] may have.
pub const MAX_GRID_PIXELS: usize = 1_000_000;

/// A regular wavelength grid: bin centres `start_aa + i·step_aa` for `i = 0, 1, …` up to
/// `stop_aa`, which is included when it falls on the lattice (within 10^-9 of a step).
///
/// Written `start:stop:step` in Å on the command line, e.g. `3600:9800:1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// The first bin centre, Å.
    pub start_aa: f64,
    /// The last bin centre at most, Å.
    pub stop_aa: f64,
    /// The distance between bin centres, Å.
    pub step_aa: f64,
}

impl Grid {
    /// A grid, checked: finite numbers, `start_aa > 0`, `step_aa > 0`,
    /// `stop_aa > start_aa`, and from 2 to [`MAX_GRID_PIXELS`] pixels.
    pub fn new(start_aa: f64, stop_aa: f64, step_aa: f64) -> Result<Self> {
        let bad = |why: String| Err(Error::Invalid(format!("wavelength grid: {why}")));
        if !(start_aa.is_finite() && stop_aa.is_finite() && step_aa.is_finite()) {
            return bad(format!(
                "{start_aa}:{stop_aa}:{step_aa} has a number that is not finite"
            ));
        }
        if start_aa <= 0.0 {
            return bad(format!("start {start_aa} Å is not a positive wavelength"));
        }
        if step_aa <= 0.0 {
            return bad(format!("step {step_aa} Å is not positive"));
        }
        if stop_aa <= start_aa {
            return bad(format!("stop {stop_aa} Å is not beyond start {start_aa} Å"));
        }
        let grid = Self {
            start_aa,
            stop_aa,
            step_aa,
        };
        let steps = grid.lattice_steps();
        if steps >= MAX_GRID_PIXELS as f64 {
            return bad(format!(
                "{start_aa}:{stop_aa}:{step_aa} has {:.0} pixels, more than the {MAX_GRID_PIXELS} \
                 allowed: use a larger step or a shorter range",
                steps + 1.0
            ));
        }
        if grid.len() < 2 {
            return bad(format!(
                "step {step_aa} Å is larger than the range {start_aa}–{stop_aa} Å: \
                 fewer than 2 pixels"
            ));
        }
        Ok(grid)
    }

    /// The number of pixels (0 for a grid that [`Grid::new`] would refuse).
    pub fn len(&self) -> usize {
        let steps = self.lattice_steps();
        if steps.is_finite() && steps >= 0.0 && steps < MAX_GRID_PIXELS as f64 && self.step_aa > 0.0
        {
            steps as usize + 1
        } else {
            0
        }
    }

    /// Whole steps from start to stop, a stop within 10^-9 of a step of the lattice
    /// counting as on it (3600:9824:0.8 has 7780 steps although 6224/0.8 may come out a
    /// hair below 7780); NaN or infinite for grids that [`Grid::new`] would refuse.
    fn lattice_steps(&self) -> f64 {
        let steps = (self.stop_aa - self.start_aa) / self.step_aa;
        (steps + 1e-9 * steps.max(1.0)).floor()
    }

    /// Whether the grid has no pixels (only for grids [`Grid::new`] would refuse).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bin centres, Å: `start_aa + i·step_aa` (each computed from `i`, so rounding
    /// does not accumulate).
    pub fn centres(&self) -> Vec<f64> {
        (0..self.len())
            .map(|i| self.start_aa + i as f64 * self.step_aa)
            .collect()
    }
}

impl FromStr for Grid {
    type Err = Error;

    /// Parses `start:stop:step` in Å, e.g. `3600:9800:1`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').map(str::trim).collect();
        let [start, stop, step] = parts[..] else {
            return Err(Error::Invalid(format!(
                "wavelength grid \"{s}\" is not start:stop:step in Å, e.g. 3600:9800:1"
            )));
        };
        let number = |what: &str, text: &str| {
            text.parse::<f64>().map_err(|_| {
                Error::Invalid(format!(
                    "wavelength grid \"{s}\": {what} \"{text}\" is not a number"
                ))
            })
        };
        Self::new(
            number("start", start)?,
            number("stop", stop)?,
            number("step", step)?,
        )
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start_aa, self.stop_aa, self.step_aa)
    }
}

/// A spectrum resampled onto new wavelengths by [`resample`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resampled {
    /// Flux density, in the unit of the input.
    pub flux: Vec<f32>,
    /// Its inverse variance (0 = no information).
    pub ivar: Vec<f32>,
}

/// Resamples a spectrum onto the bin centres `dst_wave_aa`, conserving flux; the same
/// computation as specutils' `FluxConservingResampler` (specutils 2.4, after Carnall 2017,
/// arXiv:1705.05165), with inverse variances.
///
/// Exactly:
/// 1. A source pixel is *bad* when `mask != 0`, `ivar <= 0`, `ivar` is not finite or
///    `flux` is not finite. A bad pixel is given flux 0 and ivar 0 (variance +∞) before
///    resampling; to reproduce with specutils, set them so and pass
///    `InverseVariance(ivar)`.
/// 2. Bin edges come from centres as in specutils' `SpectralAxis.bin_edges`: interior
///    edges halfway between neighbouring centres, outer edges half a neighbour distance
///    beyond the first and last centres (`((2c₀ − c₁) + c₀)/2` and likewise at the end).
/// 3. An output bin inside the input edges gets the overlap-weighted mean
///    `f = Σ pᵢ fᵢ / Σ pᵢ` and variance `σ² = Σ pᵢ² σᵢ² / (Σ pᵢ)²`, where `pᵢ` is the width
///    of the overlap of input bin `i` with it (an output bin within one input bin copies
///    that pixel). So an output bin that overlaps a bad pixel has ivar 0.
/// 4. Coverage follows specutils' asymmetric rule. Output bins entirely below the input
///    are not covered. The output bin that straddles the lowest input edge *is* computed,
///    its first overlap width measured from its own lower edge (as if the first input
///    pixel extended that far). From the output bin whose upper edge passes the highest
///    input edge onwards, bins are not covered.
/// 5. Bins not covered get flux 0 and ivar 0 (specutils writes NaN there, with its
///    default `nan_fill`).
///
/// Sums run in f64; the answer is rounded to f32. One sweep over both arrays:
/// O(n_src + n_dst), no allocation besides the answer.
///
/// Fails when the source arrays differ in length, either wavelength array has fewer than
/// 2 pixels, or wavelengths are not finite and strictly ascending.
pub fn resample(
    src_wave_aa: &[f64],
    flux: &[f32],
    ivar: &[f32],
    mask: &[u32],
    dst_wave_aa: &[f64],
) -> Result<Resampled> {
    let n_in = src_wave_aa.len();
    if flux.len() != n_in || ivar.len() != n_in || mask.len() != n_in {
        return Err(Error::Invalid(format!(
            "cannot resample: {n_in} wavelengths but {} flux, {} ivar and {} mask values",
            flux.len(),
            ivar.len(),
            mask.len()
        )));
    }
    check_wavelengths("source", src_wave_aa)?;
    check_wavelengths("output", dst_wave_aa)?;
    let n_out = dst_wave_aa.len();
    let mut out = Resampled {
        flux: vec![0.0; n_out],
        ivar: vec![0.0; n_out],
    };

    let e_in = |k: usize| edge(src_wave_aa, k);
    let e_out = |k: usize| edge(dst_wave_aa, k);
    // Flux and variance of source pixel j, bad pixels as flux 0 and variance +∞.
    let pixel = |j: usize| {
        let (f, iv) = (flux[j], ivar[j]);
        if mask[j] == 0 && iv > 0.0 && iv.is_finite() && f.is_finite() {
            (f64::from(f), 1.0 / f64::from(iv))
        } else {
            (0.0, f64::INFINITY)
        }
    };
    let (in_lo, in_hi) = (e_in(0), e_in(n_in));

    // Output bins [min_idx, max_idx) are computed, as specutils does: min_idx is the last
    // output edge at or below the first input edge (the bin starting there straddles it);
    // max_idx is the bin whose upper edge is the first beyond the last input edge.
    let min_idx = (0..=n_out)
        .take_while(|&k| e_out(k) <= in_lo)
        .last()
        .unwrap_or(0);
    let max_idx = match (0..=n_out).find(|&k| e_out(k) > in_hi) {
        Some(k) => k.saturating_sub(1),
        None => n_out,
    };
    if min_idx >= max_idx {
        return Ok(out);
    }

    // The first input bin that overlaps output bin min_idx.
    let mut idx = 0;
    let first_out_edge = e_out(min_idx);
    while idx + 1 < n_in && e_in(idx + 1) <= first_out_edge {
        idx += 1;
    }
    for i in min_idx..max_idx {
        let (bin_start, bin_stop) = (e_out(i), e_out(i + 1));
        let first = idx.min(n_in - 1);
        idx = first;
        while idx + 1 < n_in && e_in(idx + 1) < bin_stop {
            idx += 1;
        }
        let last = idx;
        // An input bin ending exactly where this output bin ends does not overlap the next.
        if e_in(idx + 1) <= bin_stop {
            idx += 1;
        }
        let (f, var) = if first == last {
            pixel(first)
        } else {
            let (mut sum_p, mut sum_pf, mut sum_p2v) = (0.0, 0.0, 0.0);
            for j in first..=last {
                let lo = if j == first { bin_start } else { e_in(j) };
                let hi = if j == last { bin_stop } else { e_in(j + 1) };
                let p = hi - lo;
                let (fj, vj) = pixel(j);
                sum_p += p;
                sum_pf += p * fj;
                sum_p2v += p * p * vj;
            }
            (sum_pf / sum_p, sum_p2v / (sum_p * sum_p))
        };
        out.flux[i] = f as f32;
        out.ivar[i] = (1.0 / var) as f32;
    }
    Ok(out)
}

/// Edge `k` (0 ..= n) of the bins centred on `c` (n ≥ 2), as specutils computes it:
/// `(a + b) / 2` with `a = [2c₀ − c₁, c…]` and `b = [c…, 2cₙ₋₁ − cₙ₋₂]`.
#[inline]
fn edge(c: &[f64], k: usize) -> f64 {
    let n = c.len();
    if k == 0 {
        ((2.0 * c[0] - c[1]) + c[0]) / 2.0
    } else if k == n {
        (c[n - 1] + (2.0 * c[n - 1] - c[n - 2])) / 2.0
    } else {
        (c[k - 1] + c[k]) / 2.0
    }
}

/// Fails unless `wave_aa` has 2 or more finite, strictly ascending values.
fn check_wavelengths(which: &str, wave_aa: &[f64]) -> Result<()> {
    if wave_aa.len() < 2 {
        return Err(Error::Invalid(format!(
            "cannot resample: the {which} wavelengths have {} pixels, fewer than 2",
            wave_aa.len()
        )));
    }
    if let Some(i) = wave_aa.iter().position(|w| !w.is_finite()) {
        return Err(Error::Invalid(format!(
            "cannot resample: {which} wavelength {i} is {}",
            wave_aa[i]
        )));
    }
    if let Some(i) = wave_aa.windows(2).position(|w| w[1] <= w[0]) {
        return Err(Error::Invalid(format!(
            "cannot resample: the {which} wavelengths do not ascend at pixel {} ({} then {} Å)",
            i + 1,
            wave_aa[i],
            wave_aa[i + 1]
        )));
    }
    Ok(())
}

/// Shifts a spectrum observed at redshift `z` to its rest frame, in place:
/// `λ_rest = λ_obs / (1 + z)`, `f_rest = f_obs · (1 + z)` and
/// `ivar_rest = ivar_obs / (1 + z)²`.
///
/// `f` is a flux density per unit wavelength, and this convention keeps the integrated flux
/// `∫ f dλ` (it is not a luminosity density: no distance enters). Computed in f64, rounded
/// to f32. The arrays need not have the same length. Fails, changing nothing, when `z` is
/// not finite or `z <= -1`.
pub fn to_rest_frame(
    wave_aa: &mut [f64],
    flux: &mut [f32],
    ivar: &mut [f32],
    z: f64,
) -> Result<()> {
    if !z.is_finite() || z <= -1.0 {
        return Err(Error::Invalid(format!(
            "redshift {z} is not a finite number above -1"
        )));
    }
    let a = 1.0 + z;
    for w in wave_aa {
        *w /= a;
    }
    for f in flux {
        *f = (f64::from(*f) * a) as f32;
    }
    let a2 = a * a;
    for iv in ivar {
        *iv = (f64::from(*iv) / a2) as f32;
    }
    Ok(())
}

/// How [`Stacker`] combines the spectra at each pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackMethod {
    /// The plain mean (`mean`).
    Mean,
    /// The mean weighted by inverse variance (`ivar` or `weighted`).
    WeightedMean,
    /// The median (`median`); its memory grows with the number of spectra.
    Median,
}

impl StackMethod {
    /// The name that [`StackMethod::from_str`] parses.
    pub fn name(self) -> &'static str {
        match self {
            StackMethod::Mean => "mean",
            StackMethod::WeightedMean => "ivar",
            StackMethod::Median => "median",
        }
    }
}

impl FromStr for StackMethod {
    type Err = Error;

    /// Parses `mean`, `ivar` or `weighted`, or `median` (any case).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(StackMethod::Mean),
            "ivar" | "weighted" => Ok(StackMethod::WeightedMean),
            "median" => Ok(StackMethod::Median),
            _ => Err(Error::Invalid(format!(
                "stack method \"{s}\" is not one of mean, ivar (or weighted), median"
            ))),
        }
    }
}

impl fmt::Display for StackMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stack made by [`Stacker::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// The stacked flux, per pixel (0 where no spectrum contributed).
    pub flux: Vec<f32>,
    /// Its inverse variance (0 where no spectrum contributed).
    pub ivar: Vec<f32>,
    /// How many spectra contributed to each pixel.
    pub n: Vec<u32>,
}

/// Pixels of the median's column block gathered at a time in [`Stacker::finish`].
const MEDIAN_BLOCK: usize = 16;

/// Stacks spectra that are already on one grid, one at a time.
///
/// A pixel *contributes* when its ivar is positive and finite and its flux finite; other
/// pixels (ivar 0 in particular) are left out of every method. With `n` contributing
/// values `fᵢ` of inverse variance `wᵢ` at a pixel:
/// - [`StackMethod::Mean`]: flux `Σ fᵢ / n`, ivar `n² / Σ (1/wᵢ)` (the variance of a mean).
/// - [`StackMethod::WeightedMean`]: flux `Σ wᵢ fᵢ / Σ wᵢ`, ivar `Σ wᵢ`.
/// - [`StackMethod::Median`]: flux the median of the `fᵢ` (for even `n` the mean of the two
///   middle values, as `numpy.median`), ivar `(2/π) · n² / Σ (1/wᵢ)`: the mean's, scaled by
///   the asymptotic efficiency of the median of Gaussian values (its variance is `π/2`
///   times the mean's).
/// - A pixel without contributions has flux 0, ivar 0 and `n` 0.
///
/// Sums are kept in f64. Mean and weighted mean use constant memory (28 bytes a pixel);
/// the median keeps every flux value (4 bytes a pixel a spectrum, plus 68) and refuses a
/// spectrum that would take it past its memory budget.
#[derive(Debug)]
pub struct Stacker {
    method: StackMethod,
    n_pix: usize,
    budget_bytes: usize,
    n: Vec<u32>,
    /// Mean and median: Σ 1/w; weighted mean: Σ w.
    sum_a: Vec<f64>,
    /// Mean: Σ f; weighted mean: Σ w f; median: unused.
    sum_b: Vec<f64>,
    /// Median: the flux of each spectrum in turn, NaN where it does not contribute.
    values: Vec<f32>,
    n_spectra: usize,
}

impl Stacker {
    /// A stacker of spectra of `n_pix` pixels by `method`, in at most `budget_bytes` of
    /// memory; fails with [`Error::TooLarge`] when not even the sums fit.
    pub fn new(n_pix: usize, method: StackMethod, budget_bytes: usize) -> Result<Self> {
        let fixed = Self::fixed_bytes(n_pix, method);
        if fixed > budget_bytes {
            return Err(Error::TooLarge(format!(
                "a {method} stack of {n_pix} pixels needs {fixed} bytes, more than the \
                 memory budget of {budget_bytes} bytes: use a coarser grid"
            )));
        }
        let sums = |used: bool| if used { vec![0.0; n_pix] } else { Vec::new() };
        Ok(Self {
            method,
            n_pix,
            budget_bytes,
            n: vec![0; n_pix],
            sum_a: sums(true),
            sum_b: sums(method != StackMethod::Median),
            values: Vec::new(),
            n_spectra: 0,
        })
    }

    /// Memory that does not grow with the number of spectra, bytes: the counts, the sums
    /// and the answer's flux and ivar.
    fn fixed_bytes(n_pix: usize, method: StackMethod) -> usize {
        let per_pixel = match method {
            StackMethod::Median => 4 + 8 + 8,
            StackMethod::Mean | StackMethod::WeightedMean => 4 + 8 + 8 + 8,
        };
        n_pix.saturating_mul(per_pixel)
    }

    /// Memory each spectrum adds to a median: its values and its share of the buffers
    /// that [`Stacker::finish`] gathers them in, bytes.
    fn bytes_per_spectrum(&self) -> usize {
        (self.n_pix + MEDIAN_BLOCK + 1).saturating_mul(4)
    }

    /// How many spectra the median can hold within the budget (unbounded for the means).
    pub fn max_spectra(&self) -> Option<usize> {
        (self.method == StackMethod::Median).then(|| {
            (self.budget_bytes - Self::fixed_bytes(self.n_pix, self.method))
                / self.bytes_per_spectrum()
        })
    }

    /// Spectra added so far.
    pub fn n_spectra(&self) -> usize {
        self.n_spectra
    }

    /// Adds one spectrum on the grid: `flux` and `ivar` of the grid's length.
    ///
    /// Fails with [`Error::Invalid`] on another length, and for the median with
    /// [`Error::TooLarge`] when this spectrum would not fit in the memory budget; the
    /// stacker is then unchanged and can still be finished.
    pub fn add(&mut self, flux: &[f32], ivar: &[f32]) -> Result<()> {
        if flux.len() != self.n_pix || ivar.len() != self.n_pix {
            return Err(Error::Invalid(format!(
                "cannot stack a spectrum of {} flux and {} ivar values on a grid of {} pixels",
                flux.len(),
                ivar.len(),
                self.n_pix
            )));
        }
        if let Some(max) = self.max_spectra()
            && self.n_spectra >= max
        {
            return Err(Error::TooLarge(format!(
                "a median stack of {}-pixel spectra holds at most {max} spectra in its memory \
                 budget of {} bytes; stack at most {max} spectra, or use the method \"ivar\" \
                 (inverse-variance weighted mean) or \"mean\", whose memory does not grow \
                 with the number of spectra",
                self.n_pix, self.budget_bytes
            )));
        }
        let contributes = |f: f32, w: f32| w > 0.0 && w.is_finite() && f.is_finite();
        match self.method {
            StackMethod::Mean => {
                for i in 0..self.n_pix {
                    let (f, w) = (flux[i], ivar[i]);
                    if contributes(f, w) {
                        self.n[i] += 1;
                        self.sum_a[i] += 1.0 / f64::from(w);
                        self.sum_b[i] += f64::from(f);
                    }
                }
            }
            StackMethod::WeightedMean => {
                for i in 0..self.n_pix {
                    let (f, w) = (flux[i], ivar[i]);
                    if contributes(f, w) {
                        self.n[i] += 1;
                        self.sum_a[i] += f64::from(w);
                        self.sum_b[i] += f64::from(w) * f64::from(f);
                    }
                }
            }
            StackMethod::Median => {
                if self.values.capacity() < self.values.len() + self.n_pix {
                    // Grow by doubling, but never past what the budget allows.
                    let max = self.max_spectra().unwrap_or(0);
                    let target = (2 * self.n_spectra).clamp(self.n_spectra + 1, max);
                    self.values
                        .reserve_exact(target * self.n_pix - self.values.len());
                }
                for i in 0..self.n_pix {
                    let (f, w) = (flux[i], ivar[i]);
                    if contributes(f, w) {
                        self.n[i] += 1;
                        self.sum_a[i] += 1.0 / f64::from(w);
                        self.values.push(f);
                    } else {
                        self.values.push(f32::NAN);
                    }
                }
            }
        }
        self.n_spectra += 1;
        Ok(())
    }
    /// Adds the spectra `other` has taken (same grid and method): the stack is the same
    /// as if they had been added here, in this order after the ones already here.
    pub fn merge(&mut self, other: Stacker) -> Result<()> {
        if other.n_pix != self.n_pix || other.method != self.method {
            return Err(Error::Invalid(format!(
                "cannot merge a {} stack of {} pixels into a {} stack of {} pixels",
                other.method, other.n_pix, self.method, self.n_pix
            )));
        }
        if let Some(max) = self.max_spectra()
            && self.n_spectra + other.n_spectra > max
        {
            return Err(Error::TooLarge(format!(
                "a median stack of {}-pixel spectra holds at most {max} spectra in its memory \
                 budget of {} bytes",
                self.n_pix, self.budget_bytes
            )));
        }
        for i in 0..self.n_pix {
            self.n[i] += other.n[i];
            self.sum_a[i] += other.sum_a[i];
        }
        for (a, b) in self.sum_b.iter_mut().zip(&other.sum_b) {
            *a += b;
        }
        self.values.extend_from_slice(&other.values);
        self.n_spectra += other.n_spectra;
        Ok(())
    }

    /// The stack.
    pub fn finish(self) -> Stack {
        let n_pix = self.n_pix;
        let mut flux = vec![0.0f32; n_pix];
        let mut ivar = vec![0.0f32; n_pix];
        match self.method {
            StackMethod::Mean => {
                for i in 0..n_pix {
                    let n = f64::from(self.n[i]);
                    if n > 0.0 {
                        flux[i] = (self.sum_b[i] / n) as f32;
                        ivar[i] = (n * n / self.sum_a[i]) as f32;
                    }
                }
            }
            StackMethod::WeightedMean => {
                for i in 0..n_pix {
                    if self.n[i] > 0 {
                        flux[i] = (self.sum_b[i] / self.sum_a[i]) as f32;
                        ivar[i] = self.sum_a[i] as f32;
                    }
                }
            }
            StackMethod::Median => {
                let n_spec = self.n_spectra;
                // Values of MEDIAN_BLOCK pixels, pixel-major, gathered from the
                // spectrum-major store a cache line at a time.
                let mut block = vec![0.0f32; MEDIAN_BLOCK * n_spec];
                let mut column = Vec::with_capacity(n_spec);
                for p0 in (0..n_pix).step_by(MEDIAN_BLOCK) {
                    let width = MEDIAN_BLOCK.min(n_pix - p0);
                    for s in 0..n_spec {
                        let row = &self.values[s * n_pix + p0..s * n_pix + p0 + width];
                        for (b, &v) in row.iter().enumerate() {
                            block[b * n_spec + s] = v;
                        }
                    }
                    for b in 0..width {
                        let i = p0 + b;
                        if self.n[i] == 0 {
                            continue;
                        }
                        column.clear();
                        column.extend(
                            block[b * n_spec..(b + 1) * n_spec]
                                .iter()
                                .copied()
                                .filter(|v| !v.is_nan()),
                        );
                        flux[i] = median(&mut column);
                        let n = f64::from(self.n[i]);
                        ivar[i] = (2.0 / PI * n * n / self.sum_a[i]) as f32;
                    }
                }
            }
        }
        Stack {
            flux,
            ivar,
            n: self.n,
        }
    }
}

/// The median of `v` (not empty, no NaN), reordering it; for an even length the mean of
/// the two middle values, as `numpy.median`.
fn median(v: &mut [f32]) -> f32 {
    let m = v.len();
    let k = m / 2;
    let (below, &mut hi, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    if m % 2 == 1 {
        return hi;
    }
    let lo = below.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ((f64::from(lo) + f64::from(hi)) / 2.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rtol: f64) -> bool {
        (a - b).abs() <= rtol * a.abs().max(b.abs()) + 1e-30
    }

    #[test]
    fn grids_parse_with_clear_errors() {
        let g: Grid = "3600:9800:1".parse().unwrap();
        assert_eq!(g.len(), 6201);
        let c = g.centres();
        assert_eq!((c[0], c[6200]), (3600.0, 9800.0));
        // The DESI merged grid: 7781 pixels, stop included despite rounding.
        let g: Grid = " 3600 : 9824 : 0.8 ".parse().unwrap();
        assert_eq!(g.len(), 7781);
        assert!((g.centres()[7780] - 9824.0).abs() < 1e-9);
        // Stop off the lattice: not included.
        let g: Grid = "4000:4010.5:2".parse().unwrap();
        assert_eq!(
            g.centres(),
            [4000.0, 4002.0, 4004.0, 4006.0, 4008.0, 4010.0]
        );
        assert_eq!(g.to_string(), "4000:4010.5:2");

        let err = |s: &str| s.parse::<Grid>().unwrap_err().to_string();
        assert!(err("3600:9800").contains("not start:stop:step"));
        assert!(err("3600:9800:1:2").contains("not start:stop:step"));
        assert!(err("3600:abc:1").contains("stop \"abc\" is not a number"));
        assert!(err("3600:9800:0").contains("step 0 Å is not positive"));
        assert!(err("3600:9800:-1").contains("not positive"));
        assert!(err("9800:3600:1").contains("not beyond start"));
        assert!(err("3600:3600:1").contains("not beyond start"));
        assert!(err("0:3600:1").contains("not a positive wavelength"));
        assert!(err("3600:inf:1").contains("not finite"));
        assert!(err("3600:9800:NaN").contains("not finite"));
        assert!(err("3600:9800:0.001").contains("more than the 1000000 allowed"));
        assert!(err("3600:3601:5").contains("fewer than 2 pixels"));
        // 10^6 pixels exactly is allowed.
        assert_eq!(
            Grid::new(1000.0, 1000.0 + 999_999.0, 1.0).unwrap().len(),
            1_000_000
        );
        assert!(Grid::new(1000.0, 1000.0 + 1_000_000.0, 1.0).is_err());
        let bad = Grid {
            start_aa: 1.0,
            stop_aa: 2.0,
            step_aa: -1.0,
        };
        assert!(bad.is_empty() && bad.centres().is_empty());
    }

    /// specutils' own docstring example of FluxConservingResampler.
    #[test]
    fn resample_matches_the_specutils_docstring() {
        let out = resample(
            &[2.0, 4.0, 12.0, 16.0, 20.0],
            &[1.0, 3.0, 7.0, 6.0, 20.0],
            &[1.0; 5],
            &[0; 5],
            &[1.0, 5.0, 9.0, 13.0, 14.0, 17.0, 21.0, 22.0, 23.0],
        )
        .unwrap();
        // specutils: [1, 3, 6, 7, 6.25, 10, 20, nan, nan]; NaN is 0 with ivar 0 here.
        assert_eq!(out.flux, [1.0, 3.0, 6.0, 7.0, 6.25, 10.0, 20.0, 0.0, 0.0]);
        assert_eq!(out.ivar[7..], [0.0, 0.0]);
        assert!(out.ivar[..7].iter().all(|&w| w > 0.0));
    }

    #[test]
    fn identical_grids_copy_and_constants_stay_constant() {
        let wave: Vec<f64> = (0..50).map(|i| 4000.0 + 0.8 * i as f64).collect();
        let flux: Vec<f32> = (0..50).map(|i| (i as f32).sin()).collect();
        let ivar: Vec<f32> = (0..50).map(|i| 1.0 + i as f32).collect();
        let out = resample(&wave, &flux, &ivar, &[0; 50], &wave).unwrap();
        assert_eq!(out.flux, flux);
        assert_eq!(out.ivar, ivar);

        // Irregular source, irregular output reaching beyond both ends.
        let src: Vec<f64> = (0..300)
            .map(|i| 5000.0 + 0.7 * i as f64 + 0.2 * (i as f64).sin())
            .collect();
        let dst: Vec<f64> = (0..90)
            .map(|i| 4990.0 + 2.5 * i as f64 + 0.01 * (i * i) as f64)
            .collect();
        let out = resample(&src, &[3.25; 300], &[2.0; 300], &[0; 300], &dst).unwrap();
        let covered: Vec<usize> = (0..90).filter(|&i| out.ivar[i] > 0.0).collect();
        // Bin 4 straddles the first input edge (computed, as in specutils); bin 69 straddles
        // the last one (not covered).
        assert_eq!(covered, (4..69).collect::<Vec<_>>());
        assert!(edge(&dst, 4) < edge(&src, 0) && edge(&dst, 5) > edge(&src, 0));
        assert!(edge(&dst, 69) < edge(&src, 300) && edge(&dst, 70) > edge(&src, 300));
        for i in 0..90 {
            if out.ivar[i] > 0.0 {
                assert!(
                    close(out.flux[i].into(), 3.25, 1e-6),
                    "{i}: {}",
                    out.flux[i]
                );
            } else {
                assert_eq!(out.flux[i], 0.0);
            }
        }
    }

    /// ∫ of the input's step function from its first edge to `x`, pixel by pixel.
    fn integral_to(src: &[f64], flux: &[f32], x: f64) -> f64 {
        let n = src.len();
        let mut edges = vec![(3.0 * src[0] - src[1]) / 2.0];
        edges.extend(src.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        edges.push((3.0 * src[n - 1] - src[n - 2]) / 2.0);
        (0..n)
            .map(|i| f64::from(flux[i]) * (x.min(edges[i + 1]) - edges[i]).max(0.0))
            .sum()
    }

    #[test]
    fn resampling_conserves_the_integrated_flux() {
        let src: Vec<f64> = (0..400)
            .map(|i| 6000.0 + 0.8 * i as f64 + 0.3 * (0.1 * i as f64).cos())
            .collect();
        let flux: Vec<f32> = (0..400)
            .map(|i| 10.0 + 5.0 * (0.37 * i as f32).sin() + (i % 7) as f32)
            .collect();
        for step in [0.3, 0.8, 1.0, 2.7, 11.0] {
            let dst: Vec<f64> = (0..(300.0 / step) as usize)
                .map(|i| 6010.0 + step * i as f64)
                .collect();
            let out = resample(&src, &flux, &[1.0; 400], &[0; 400], &dst).unwrap();
            // Every output bin lies inside the input: its flux times its width is the
            // integral of the input over it, and so are their sums.
            let n = dst.len();
            let mut total = 0.0;
            for i in 0..n {
                let (lo, hi) = (edge(&dst, i), edge(&dst, i + 1));
                let want = integral_to(&src, &flux, hi) - integral_to(&src, &flux, lo);
                let got = f64::from(out.flux[i]) * (hi - lo);
                assert!(
                    close(got, want, 1e-6),
                    "step {step} bin {i}: {got} vs {want}"
                );
                total += got;
            }
            let want =
                integral_to(&src, &flux, edge(&dst, n)) - integral_to(&src, &flux, edge(&dst, 0));
            assert!(close(total, want, 1e-6), "step {step}: {total} vs {want}");
        }
    }

    #[test]
    fn inverse_variance_propagates() {
        let src: Vec<f64> = (0..8).map(|i| 100.5 + i as f64).collect(); // edges 100..108
        let ivar = [4.0, 4.0, 1.0, 4.0, 4.0, 4.0, 4.0, 4.0];
        let flux = [1.0, 3.0, 5.0, 7.0, 2.0, 2.0, 2.0, 2.0];
        // Output bins of 2 Å aligned on input edges: p = 1, 1.
        let dst = [101.0, 103.0, 105.0, 107.0];
        let out = resample(&src, &flux, &ivar, &[0; 8], &dst).unwrap();
        assert_eq!(out.flux, [2.0, 6.0, 2.0, 2.0]);
        // σ² = (σ₁² + σ₂²)/4: (0.25 + 0.25)/4 → 8; (1 + 0.25)/4 → 3.2.
        assert_eq!(out.ivar, [8.0, 3.2, 8.0, 8.0]);
        // Output bins of 0.5 Å inside one input pixel copy it.
        let dst: Vec<f64> = (0..14).map(|i| 100.75 + 0.5 * i as f64).collect();
        let out = resample(&src, &flux, &ivar, &[0; 8], &dst).unwrap();
        assert_eq!(out.ivar[3..5], [1.0, 1.0]);
        assert_eq!(out.flux[3..5], [5.0, 5.0]);
        assert_eq!((out.flux[5], out.ivar[5]), (7.0, 4.0));
        // Output bin 101.5..103.0 (centre 102.25, widths 1.5): p = 0.5, 1 → unequal weights.
        let dst = [100.75, 102.25, 103.75];
        let out = resample(&src, &flux, &ivar, &[0; 8], &dst).unwrap();
        assert!(close(
            out.flux[1].into(),
            (0.5 * 3.0 + 1.0 * 5.0) / 1.5,
            1e-7
        ));
        let var = (0.25 * 0.25 + 1.0 * 1.0) / (1.5 * 1.5);
        assert!(close(out.ivar[1].into(), 1.0 / var, 1e-7));
    }

    #[test]
    fn bad_pixels_count_as_flux_0_with_ivar_0() {
        let src: Vec<f64> = (0..8).map(|i| 100.5 + i as f64).collect();
        let flux = [1.0, 3.0, 5.0, f32::NAN, 2.0, 2.0, 2.0, 9.0];
        let ivar = [4.0, 0.0, 4.0, 4.0, 4.0, -1.0, 4.0, 4.0];
        let mask = [0, 0, 0, 0, 0, 0, 0, 8];
        let out = resample(&src, &flux, &ivar, &mask, &[101.0, 103.0, 105.0, 107.0]).unwrap();
        // Each output bin has a bad pixel: ivar 0; its flux is the mean with 0 for it.
        assert_eq!(out.flux, [0.5, 2.5, 1.0, 1.0]);
        assert_eq!(out.ivar, [0.0; 4]);
        let out = resample(&src, &flux, &ivar, &mask, &src).unwrap();
        assert_eq!(out.flux, [1.0, 0.0, 5.0, 0.0, 2.0, 0.0, 2.0, 0.0]);
        assert_eq!(out.ivar, [4.0, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0]);
    }

    #[test]
    fn uncovered_bins_and_bad_arguments() {
        let src = [10.0, 11.0, 12.0];
        let f = [1.0, 1.0, 1.0];
        let w = [1.0, 1.0, 1.0];
        // All below, all above, one bin covering everything.
        for dst in [&[1.0, 2.0, 3.0][..], &[20.0, 21.0], &[11.0, 31.0]] {
            let out = resample(&src, &f, &w, &[0; 3], dst).unwrap();
            assert!(
                out.flux.iter().chain(&out.ivar).all(|&x| x == 0.0),
                "{dst:?}"
            );
        }
        let err = |r: Result<Resampled>| r.unwrap_err().to_string();
        assert!(err(resample(&src, &f[..2], &w, &[0; 3], &src)).contains("2 flux"));
        assert!(err(resample(&src[..1], &f[..1], &w[..1], &[0], &src)).contains("fewer than 2"));
        assert!(
            err(resample(&[10.0, 10.0, 12.0], &f, &w, &[0; 3], &src)).contains("do not ascend")
        );
        assert!(
            err(resample(&src, &f, &w, &[0; 3], &[1.0, f64::NAN]))
                .contains("output wavelength 1 is NaN")
        );
    }

    #[test]
    fn rest_frame_divides_wavelengths_and_keeps_the_integral() {
        let mut wave = vec![4000.0, 6000.0];
        let mut flux = vec![2.0f32, 4.0];
        let mut ivar = vec![1.0f32, 0.0];
        to_rest_frame(&mut wave, &mut flux, &mut ivar, 1.0).unwrap();
        assert_eq!(wave, [2000.0, 3000.0]);
        assert_eq!(flux, [4.0, 8.0]);
        assert_eq!(ivar, [0.25, 0.0]);
        to_rest_frame(&mut wave, &mut flux, &mut ivar, -0.5).unwrap();
        assert_eq!((wave[0], flux[0], ivar[0]), (4000.0, 2.0, 1.0));
        for z in [-1.0, -2.0, f64::NAN, f64::INFINITY] {
            let err = to_rest_frame(&mut wave, &mut flux, &mut ivar, z).unwrap_err();
            assert!(
                err.to_string().contains("not a finite number above -1"),
                "{err}"
            );
        }
        assert_eq!(wave[0], 4000.0);
    }

    #[test]
    fn stack_methods_parse() {
        for (s, m) in [
            ("mean", StackMethod::Mean),
            ("ivar", StackMethod::WeightedMean),
            ("Weighted", StackMethod::WeightedMean),
            ("median", StackMethod::Median),
        ] {
            assert_eq!(s.parse::<StackMethod>().unwrap(), m);
            assert_eq!(m.name().parse::<StackMethod>().unwrap(), m);
        }
        assert!(
            "mode"
                .parse::<StackMethod>()
                .unwrap_err()
                .to_string()
                .contains("not one of")
        );
    }

    fn stack(method: StackMethod, spectra: &[(&[f32], &[f32])]) -> Stack {
        let mut s = Stacker::new(spectra[0].0.len(), method, 1 << 20).unwrap();
        for (f, w) in spectra {
            s.add(f, w).unwrap();
        }
        assert_eq!(s.n_spectra(), spectra.len());
        s.finish()
    }

    // Pixel 0: values 1, 2, 6 with ivar 1, 2, 4. Pixel 1: 3 (ivar 1) and 5 (ivar 0.25); the
    // third is excluded (ivar 0). Pixel 2: nothing contributes (ivar 0, NaN flux, -1).
    // Pixel 3: 4, 1, 2, 8 over four spectra, all with ivar 1 (the fourth spectrum).
    const A: ([f32; 4], [f32; 4]) = ([1.0, 3.0, 7.0, 4.0], [1.0, 1.0, 0.0, 1.0]);
    const B: ([f32; 4], [f32; 4]) = ([2.0, 5.0, f32::NAN, 1.0], [2.0, 0.25, 1.0, 1.0]);
    const C: ([f32; 4], [f32; 4]) = ([6.0, 100.0, 3.0, 2.0], [4.0, 0.0, -1.0, 1.0]);
    const D: ([f32; 4], [f32; 4]) = ([0.0, 0.0, 0.0, 8.0], [0.0, 0.0, 0.0, 1.0]);

    fn all4() -> [(&'static [f32], &'static [f32]); 4] {
        [(&A.0, &A.1), (&B.0, &B.1), (&C.0, &C.1), (&D.0, &D.1)]
    }

    #[test]
    fn mean_stack() {
        let s = stack(StackMethod::Mean, &all4());
        assert_eq!(s.n, [3, 2, 0, 4]);
        assert_eq!(s.flux, [3.0, 4.0, 0.0, 3.75]);
        // n² / Σ 1/w: 9 / (1 + 0.5 + 0.25); 4 / (1 + 4); 16 / 4.
        assert_eq!(s.ivar, [(9.0 / 1.75) as f32, 0.8, 0.0, 4.0]);
    }

    #[test]
    fn weighted_mean_stack() {
        let s = stack(StackMethod::WeightedMean, &all4());
        assert_eq!(s.n, [3, 2, 0, 4]);
        // (1 + 4 + 24) / 7; (3 + 1.25) / 1.25; —; 15 / 4.
        assert_eq!(s.flux, [(29.0f64 / 7.0) as f32, 3.4, 0.0, 3.75]);
        assert_eq!(s.ivar, [7.0, 1.25, 0.0, 4.0]);
    }

    #[test]
    fn median_stack_odd_and_even() {
        let s = stack(StackMethod::Median, &all4());
        assert_eq!(s.n, [3, 2, 0, 4]);
        // Odd: 2; even: (3 + 5)/2 and (2 + 4)/2.
        assert_eq!(s.flux, [2.0, 4.0, 0.0, 3.0]);
        let k = 2.0 / PI;
        assert_eq!(
            s.ivar,
            [
                (k * 9.0 / 1.75) as f32,
                (k * 0.8) as f32,
                0.0,
                (k * 4.0) as f32
            ]
        );
        assert_eq!(median(&mut [5.0, -1.0, 3.0, 9.0, 7.0, 1.0]), 4.0);
        assert_eq!(median(&mut [2.5]), 2.5);
    }

    #[test]
    fn median_over_many_spectra_and_blocks() {
        // 37 pixels (2 full blocks and a partial one), 101 spectra: pixel p has the values
        // (s * 7919 + p) mod 101 over spectra s, i.e. 0..=100 in some order; median 50.
        let n_pix = 37;
        let mut st = Stacker::new(n_pix, StackMethod::Median, 1 << 20).unwrap();
        for s in 0..101usize {
            let f: Vec<f32> = (0..n_pix).map(|p| ((s * 7919 + p) % 101) as f32).collect();
            st.add(&f, &vec![1.0; n_pix]).unwrap();
        }
        let out = st.finish();
        assert!(out.flux.iter().all(|&f| f == 50.0), "{:?}", out.flux);
        assert!(out.n.iter().all(|&n| n == 101));
    }

    #[test]
    fn median_refuses_spectra_past_its_budget() {
        let n_pix = 100;
        // Fixed part 2000 bytes, then 468 bytes a spectrum: room for 3.
        let budget = 2000 + 3 * 468 + 100;
        let mut st = Stacker::new(n_pix, StackMethod::Median, budget).unwrap();
        assert_eq!(st.max_spectra(), Some(3));
        let f = vec![1.0f32; n_pix];
        for _ in 0..3 {
            st.add(&f, &f).unwrap();
        }
        let err = st.add(&f, &f).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("at most 3 spectra") && msg.contains("\"ivar\""),
            "{msg}"
        );
        assert!(st.values.capacity() <= 3 * n_pix);
        // Still usable.
        assert_eq!(st.finish().n, vec![3; n_pix]);

        // The means are not limited by the number of spectra.
        let mut st = Stacker::new(n_pix, StackMethod::Mean, 2800).unwrap();
        assert_eq!(st.max_spectra(), None);
        for _ in 0..1000 {
            st.add(&f, &f).unwrap();
        }
        let err = Stacker::new(n_pix, StackMethod::WeightedMean, 2799).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }

    const SPECUTILS_PY: &str = r#"
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np, astropy.units as u
from astropy.nddata import InverseVariance
from specutils import Spectrum
from specutils.manipulation import FluxConservingResampler
d = sys.argv[1]
w = np.fromfile(d + "/wave.f8", dtype="<f8")
f = np.fromfile(d + "/flux.f4", dtype="<f4")
iv = np.fromfile(d + "/ivar.f4", dtype="<f4")
m = np.fromfile(d + "/mask.u4", dtype="<u4")
# What resample's doc comment says it does to bad pixels.
with np.errstate(invalid="ignore"):
    bad = (m != 0) | ~(iv > 0) | ~np.isfinite(iv) | ~np.isfinite(f)
f = np.where(bad, 0, f).astype(np.float32)
iv = np.where(bad, 0, iv).astype(np.float32)
spec = Spectrum(flux=f * u.Unit("1e-17 erg / (cm2 s AA)"), spectral_axis=w * u.AA,
                uncertainty=InverseVariance(iv))
for k in range(int(sys.argv[2])):
    g = np.fromfile(f"{d}/grid{k}.f8", dtype="<f8")
    out = FluxConservingResampler()(spec, g * u.AA)
    np.concatenate([out.flux.value, out.uncertainty.array]).astype("<f8").tofile(f"{d}/out{k}.f8")
print("ok")
"#;

    fn write_le<T: Copy, const N: usize>(path: &std::path::Path, v: &[T], le: fn(T) -> [u8; N]) {
        let bytes: Vec<u8> = v.iter().flat_map(|&x| le(x)).collect();
        std::fs::write(path, bytes).unwrap();
    }

    /// specutils' FluxConservingResampler on random spectra and grids, as the oracle.
    #[test]
    fn resample_matches_specutils() {
        use rand::{Rng, SeedableRng};
        let py = "/root/.cache/meridian/sparcl-venv/bin/python";
        let has_specutils = std::process::Command::new(py)
            .args(["-c", "import specutils"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_specutils {
            eprintln!("skipped: {py} with specutils is not available");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20250517);
        let n = 600;
        let mut wave = Vec::with_capacity(n);
        let mut w = 4000.0;
        for _ in 0..n {
            w += rng.random_range(0.5..1.0);
            wave.push(w);
        }
        let mut flux: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..10.0)).collect();
        let mut ivar: Vec<f32> = (0..n).map(|_| rng.random_range(0.1..5.0)).collect();
        let mut mask = vec![0u32; n];
        for _ in 0..20 {
            mask[rng.random_range(0..n)] = 1 << rng.random_range(0..32);
        }
        for _ in 0..10 {
            ivar[rng.random_range(0..n)] = 0.0;
        }
        flux[77] = f32::NAN;
        ivar[78] = -1.0;
        ivar[79] = f32::INFINITY;
        let (lo, hi) = (wave[0], wave[n - 1]);
        let grids: Vec<Vec<f64>> = vec![
            // Finer, irregular, beyond both ends.
            {
                let mut g = vec![lo - 3.3];
                while *g.last().unwrap() < hi + 4.0 {
                    let last = *g.last().unwrap();
                    g.push(last + rng.random_range(0.2..0.6));
                }
                g
            },
            // Coarser, regular, beyond both ends.
            Grid::new(lo - 10.0, hi + 10.0, 2.7).unwrap().centres(),
            // Coarser, inside.
            Grid::new(lo + 5.0, hi - 5.0, 3.3).unwrap().centres(),
            // The input's own.
            wave.clone(),
            // Log-uniform, about the input's resolution.
            (0..500)
                .map(|i| 4005.0 * 10f64.powf(i as f64 * 5e-5))
                .collect(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_le(&d.join("wave.f8"), &wave, f64::to_le_bytes);
        write_le(&d.join("flux.f4"), &flux, f32::to_le_bytes);
        write_le(&d.join("ivar.f4"), &ivar, f32::to_le_bytes);
        write_le(&d.join("mask.u4"), &mask, u32::to_le_bytes);
        for (k, g) in grids.iter().enumerate() {
            write_le(&d.join(format!("grid{k}.f8")), g, f64::to_le_bytes);
        }
        let out = std::process::Command::new(py)
            .arg("-c")
            .arg(SPECUTILS_PY)
            .arg(d)
            .arg(grids.len().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (k, g) in grids.iter().enumerate() {
            let bytes = std::fs::read(d.join(format!("out{k}.f8"))).unwrap();
            let oracle: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let (want_flux, want_ivar) = oracle.split_at(g.len());
            let ours = resample(&wave, &flux, &ivar, &mask, g).unwrap();
            let (mut n_covered, mut n_zero_ivar) = (0, 0);
            for i in 0..g.len() {
                let (f, iv) = (f64::from(ours.flux[i]), f64::from(ours.ivar[i]));
                if want_flux[i].is_nan() {
                    assert_eq!((f, iv), (0.0, 0.0), "grid {k} bin {i}: not covered");
                    continue;
                }
                n_covered += 1;
                assert!(
                    (f - want_flux[i]).abs() <= 1e-5 * want_flux[i].abs().max(1.0),
                    "grid {k} bin {i}: flux {f} vs specutils {}",
                    want_flux[i]
                );
                if want_ivar[i] == 0.0 {
                    n_zero_ivar += 1;
                }
                assert!(
                    close(iv, want_ivar[i], 1e-5),
                    "grid {k} bin {i}: ivar {iv} vs specutils {}",
                    want_ivar[i]
                );
            }
            assert!(n_covered > g.len() / 2 && n_zero_ivar > 0, "grid {k}");
        }
    }
}
