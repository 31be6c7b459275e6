//! Reproducible synthetic spectra for tests and benchmarks.
//!
//! Each target gets a spectrum drawn from a template at its redshift, scaled to its r
//! magnitude, with noise from an inverse-variance model and masked pixel runs:
//! - galaxies: a continuum with a 4000 Å break, Ca H and K, Mg b and Na D absorption, and
//!   [O II], Hβ, [O III], Hα and [N II] emission whose strength varies from galaxy to
//!   galaxy; redshifts 0.02 to 1.2;
//! - quasars (one galaxy in ten): a power law with broad Lyα, C IV, C III], Mg II, Hβ and Hα;
//!   redshifts 0.3 to 3.5;
//! - stars: a black body (3,500 to 12,000 K) with Balmer absorption, at a radial velocity
//!   of a few hundred km/s.
//!
//! The noise σ(λ) grows towards both ends of the range and at a few sky lines; `ivar` is
//! 1/σ² except in masked runs (bit 1), where it is 0. `model` holds the noiseless template.
//! Every spectrum depends only on the seed and its target's id, so any subset can be
//! regenerated exactly, in any order and in parallel.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::Spectrum;

/// A target to make a spectrum of.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its id (the spectrum's specid and targetid).
    pub id: i64,
    /// Right ascension, degrees.
    pub ra_deg: f64,
    /// Declination, degrees.
    pub dec_deg: f64,
    /// r-band AB magnitude.
    pub r_mag: f64,
    /// A galaxy (or quasar); otherwise a star.
    pub is_galaxy: bool,
}

/// The wavelength grid of synthetic spectra.
#[derive(Debug, Clone, Copy)]
pub struct SynthGrid {
    /// First pixel, Å.
    pub start_aa: f64,
    /// Pixel step, Å.
    pub step_aa: f64,
    /// Pixels.
    pub pixels: usize,
}

impl Default for SynthGrid {
    /// 3600 to 9800 Å at 2 Å: DESI's range at a coarser step.
    fn default() -> Self {
        Self {
            start_aa: 3600.0,
            step_aa: 2.0,
            pixels: 3101,
        }
    }
}

impl SynthGrid {
    /// The pixel wavelengths.
    pub fn wavelengths(&self) -> Vec<f64> {
        (0..self.pixels)
            .map(|i| self.start_aa + self.step_aa * i as f64)
            .collect()
    }
}

/// Speed of light, km/s.
const C_KM_S: f64 = 299_792.458;

/// (rest wavelength Å, relative strength) of galaxy emission lines.
const GALAXY_EMISSION: [(f64, f64); 7] = [
    (3727.1, 1.0),
    (3729.9, 1.3),
    (4862.7, 0.8),
    (4960.3, 0.5),
    (5008.2, 1.5),
    (6564.6, 2.5),
    (6585.3, 0.8),
];
/// (rest wavelength Å, depth) of galaxy absorption lines.
const GALAXY_ABSORPTION: [(f64, f64); 5] = [
    (3934.8, 0.35),
    (3969.6, 0.3),
    (5176.7, 0.15),
    (5895.6, 0.12),
    (4305.0, 0.1),
];
/// (rest wavelength Å, relative strength) of broad quasar lines.
const QSO_LINES: [(f64, f64); 6] = [
    (1215.7, 3.0),
    (1549.1, 1.5),
    (1908.7, 0.8),
    (2799.1, 1.0),
    (4862.7, 0.6),
    (6564.6, 1.8),
];
/// Balmer lines (Hα to Hε), rest Å.
const BALMER: [f64; 5] = [6564.6, 4862.7, 4341.7, 4102.9, 3971.2];
/// Sky lines whose noise shows in every spectrum, Å.
const SKY: [f64; 6] = [5578.5, 5891.6, 6302.0, 7246.0, 8344.6, 8827.1];

fn gauss(x: f64, mu: f64, sigma: f64) -> f64 {
    let t = (x - mu) / sigma;
    (-0.5 * t * t).exp()
}

/// Flux density of AB magnitude `mag` at `lambda_aa`, in 10^-17 erg s^-1 cm^-2 Å^-1.
fn ab_flux(mag: f64, lambda_aa: f64) -> f64 {
    let f_nu = 10f64.powf(-0.4 * (mag + 48.6)); // erg s^-1 cm^-2 Hz^-1
    f_nu * 2.997_924_58e18 / (lambda_aa * lambda_aa) * 1e17
}

/// The spectrum of `t` on `grid`, from `seed`.
pub fn spectrum(t: &Target, grid: &SynthGrid, seed: u64) -> Spectrum {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (t.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    let wave = grid.wavelengths();
    let n = wave.len();
    let r_mag = t.r_mag.clamp(12.0, 24.0);
    let norm = ab_flux(r_mag, 6200.0);
    let (kind, z): (&str, f64) = if !t.is_galaxy {
        ("STAR", rng.random_range(-300.0..300.0) / C_KM_S)
    } else if rng.random::<f64>() < 0.1 {
        ("QSO", rng.random_range(0.3..3.5))
    } else {
        // Most galaxies nearby, a tail to z ~ 1.2.
        let u: f64 = rng.random();
        ("GALAXY", 0.02 + 1.18 * u * u)
    };
    let mut model = vec![0f64; n];
    match kind {
        "STAR" => {
            let temp_k: f64 = rng.random_range(3500.0..12_000.0);
            let planck = |l_aa: f64| {
                let l_cm = l_aa * 1e-8;
                1.0 / (l_cm.powi(5) * ((1.438_777 / (l_cm * temp_k)).exp() - 1.0))
            };
            let at_norm = planck(6200.0);
            for (m, &w) in model.iter_mut().zip(&wave) {
                let rest = w / (1.0 + z);
                let mut f = planck(rest) / at_norm;
                for (k, &b) in BALMER.iter().enumerate() {
                    let depth = 0.5 * (temp_k / 12_000.0) / (1.0 + k as f64 * 0.3);
                    f *= 1.0 - depth * gauss(rest, b, 6.0);
                }
                *m = norm * f;
            }
        }
        "QSO" => {
            let alpha: f64 = rng.random_range(-1.8..-1.2);
            for (m, &w) in model.iter_mut().zip(&wave) {
                let rest = w / (1.0 + z);
                let mut f = (w / 6200.0).powf(alpha);
                for (l, s) in QSO_LINES {
                    f += 0.6 * s * gauss(rest, l, l * 4000.0 / C_KM_S);
                }
                // The Lyman-alpha forest absorbs blueward of Lyα.
                if rest < 1215.7 {
                    f *= 0.5;
                }
                *m = norm * f;
            }
        }
        _ => {
            let strength: f64 = rng.random_range(0.0..3.0);
            let dispersion_km_s = rng.random_range(80.0..250.0);
            for (m, &w) in model.iter_mut().zip(&wave) {
                let rest = w / (1.0 + z);
                let mut f = (rest / 5500.0).powf(0.5);
                if rest < 4000.0 {
                    f *= 0.55 + 0.45 * ((rest - 3800.0) / 200.0).clamp(0.0, 1.0);
                }
                for (l, d) in GALAXY_ABSORPTION {
                    f *= 1.0 - d * gauss(rest, l, l * dispersion_km_s / C_KM_S + 1.0);
                }
                for (l, s) in GALAXY_EMISSION {
                    f += 0.4 * strength * s * gauss(rest, l, l * dispersion_km_s / C_KM_S + 0.8);
                }
                *m = norm * f;
            }
            // Normalise at the observed r band.
            let at = model
                [((6200.0 - grid.start_aa) / grid.step_aa).clamp(0.0, (n - 1) as f64) as usize]
                .max(1e-30);
            let scale = norm / at;
            model.iter_mut().for_each(|m| *m *= scale);
        }
    }
    // Noise: a floor that rises at both ends and at sky lines, plus the object's photon
    // noise.
    let floor = 0.4 * rng.random_range(0.7..1.4);
    let mut flux = vec![0f32; n];
    let mut ivar = vec![0f32; n];
    let mut mask = vec![0u32; n];
    for i in 0..n {
        let w = wave[i];
        let edge = 1.0 + 2.0 * ((w - 6700.0) / 3100.0).powi(4);
        let sky: f64 = SKY.iter().map(|&s| 3.0 * gauss(w, s, 1.5)).sum();
        let sigma = floor * edge * (1.0 + sky) + 0.05 * model[i].abs().sqrt();
        flux[i] = (model[i] + sigma * unit.sample(&mut rng)) as f32;
        ivar[i] = (1.0 / (sigma * sigma)) as f32;
    }
    // A few masked runs (bad columns, cosmic rays).
    for _ in 0..rng.random_range(0..4) {
        let start = rng.random_range(0..n);
        let len = rng.random_range(1..12).min(n - start);
        for i in start..start + len {
            mask[i] |= 1;
            ivar[i] = 0.0;
        }
    }
    let year = rng.random_range(2021..2026);
    let day = rng.random_range(1..29);
    let month = rng.random_range(1..13);
    Spectrum {
        specid: t.id,
        targetid: Some(t.id),
        ra_deg: t.ra_deg,
        dec_deg: t.dec_deg,
        redshift: Some(z),
        redshift_err: Some(1e-4 * (1.0 + z.abs())),
        redshift_warning: Some(if rng.random::<f64>() < 0.02 { 4 } else { 0 }),
        spectype: Some(kind.to_string()),
        dateobs: Some(format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:00",
            rng.random_range(0..24),
            rng.random_range(0..60)
        )),
        exptime_s: Some(900.0),
        survey: Some("synthetic".into()),
        instrument: Some("SYNTH".into()),
        telescope: Some("Meridian".into()),
        site: None,
        specprimary: Some(1),
        source_key: format!("synthetic;seed={seed}"),
        file: String::new(),
        wavelength_aa: wave,
        flux,
        ivar,
        mask,
        model: Some(model.iter().map(|&m| m as f32).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: i64, is_galaxy: bool) -> Target {
        Target {
            id,
            ra_deg: 10.0,
            dec_deg: -5.0,
            r_mag: 19.0,
            is_galaxy,
        }
    }

    #[test]
    fn spectra_are_reproducible_and_valid() {
        let g = SynthGrid::default();
        for id in 0..40 {
            let a = spectrum(&target(id, id % 3 != 0), &g, 7);
            let b = spectrum(&target(id, id % 3 != 0), &g, 7);
            assert_eq!(a, b);
            a.check().unwrap();
            assert_ne!(a.flux, spectrum(&target(id, id % 3 != 0), &g, 8).flux);
            assert!(a.flux.iter().all(|f| f.is_finite()));
            assert!(a.ivar.iter().all(|v| *v >= 0.0));
        }
    }

    #[test]
    fn flux_follows_the_magnitude_and_lines_sit_at_the_redshift() {
        let g = SynthGrid::default();
        // Find a plain galaxy with Hα in range.
        let s = (0..200)
            .map(|id| spectrum(&target(id, true), &g, 1))
            .find(|s| s.spectype.as_deref() == Some("GALAXY") && s.redshift.unwrap() < 0.4)
            .unwrap();
        let z = s.redshift.unwrap();
        let model = s.model.as_ref().unwrap();
        let at = |l: f64| model[((l - g.start_aa) / g.step_aa).round() as usize] as f64;
        let r = at(6200.0);
        let expected = ab_flux(19.0, 6200.0);
        assert!((r / expected - 1.0).abs() < 0.05, "{r} vs {expected}");
        // The 4000 Å break: redward brighter than blueward.
        let brk = 4000.0 * (1.0 + z);
        if brk > 3900.0 && brk < 9500.0 {
            assert!(at(brk + 100.0) > at(brk - 150.0));
        }
    }
}
