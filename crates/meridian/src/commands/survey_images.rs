//! `meridian generate --images N`: survey images of the synthetic objects, so that image
//! services are tested and measured far beyond the few real files, and a source measured
//! on an image can be checked against its Object row.

use std::path::Path;

use anyhow::Context;
use meridian_images::synth::{BANDS, Exposure, Layout, Star};
use meridian_synth::SkyObject;
use rand::{Rng, SeedableRng};

/// Pixel scale of the synthetic camera, arcseconds.
const PIXEL_ARCSEC: f64 = 0.2;
/// Epochs per band of each pointing.
const EPOCHS: u64 = 2;
/// Survey start, MJD (as the synthetic catalog's).
const MJD_START: f64 = 60_949.0;

/// Objects sorted by declination, for finding those in a field.
struct ByDec<'a> {
    objects: Vec<&'a SkyObject>,
}

impl<'a> ByDec<'a> {
    fn new(objects: &'a [SkyObject]) -> Self {
        let mut objects: Vec<&SkyObject> = objects.iter().collect();
        objects.sort_by(|a, b| a.dec_deg.total_cmp(&b.dec_deg));
        Self { objects }
    }

    /// Objects within `radius_deg` of (ra, dec).
    fn near(&self, ra: f64, dec: f64, radius_deg: f64) -> impl Iterator<Item = &'a SkyObject> + '_ {
        let lo = self
            .objects
            .partition_point(|o| o.dec_deg < dec - radius_deg);
        let hi = self
            .objects
            .partition_point(|o| o.dec_deg <= dec + radius_deg);
        self.objects[lo..hi].iter().copied().filter(move |o| {
            meridian_sky::angular_separation_deg(ra, dec, o.ra_deg, o.dec_deg) <= radius_deg
        })
    }
}

/// Renders `n` images of `objects` into `dir` (`img-000000.fits`, ...): pointings on
/// objects of r between 16 and 21 (offset from them by up to a quarter of the field), each
/// seen in the six bands at [`EPOCHS`] epochs, at random rotations.
pub fn generate(
    dir: &Path,
    objects: &[SkyObject],
    n: u64,
    size: u32,
    seed: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (16..=8192).contains(&size),
        "--image-size {size}: use 16 to 8192 pixels"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x1A4_6E5);
    let targets: Vec<&SkyObject> = objects
        .iter()
        .filter(|o| (16.0..21.0).contains(&o.mags[2]))
        .collect();
    anyhow::ensure!(
        !targets.is_empty(),
        "no object of r 16 to 21 to point at: generate more objects"
    );
    let index = ByDec::new(objects);
    let field_deg = f64::from(size) * PIXEL_ARCSEC / 3600.0;
    let pb = crate::bar(
        quiet,
        n,
        "images   [{bar:30}] {human_pos}/{human_len} images {per_sec} ETA {eta}",
    );
    let per_target = BANDS.len() as u64 * EPOCHS;
    let (mut ra, mut dec, mut rotation) = (0.0, 0.0, 0.0);
    for i in 0..n {
        if i % per_target == 0 {
            let target = targets[rng.random_range(0..targets.len())];
            let (dx, dy) = (
                (rng.random::<f64>() - 0.5) * 0.5 * field_deg,
                (rng.random::<f64>() - 0.5) * 0.5 * field_deg,
            );
            dec = (target.dec_deg + dy).clamp(-89.9, 89.9);
            ra = (target.ra_deg + dx / dec.to_radians().cos().max(0.05)).rem_euclid(360.0);
            rotation = rng.random::<f64>() * 360.0;
        }
        let k = i % per_target;
        let (band, epoch) = ((k % BANDS.len() as u64) as usize, k / BANDS.len() as u64);
        let layout = match i % 10 {
            3 => Layout::Rice,
            7 => Layout::TwoDetectors,
            _ => Layout::Plain,
        };
        let e = Exposure {
            ra_deg: ra,
            dec_deg: dec,
            rotation_deg: rotation,
            band,
            mjd: MJD_START
                + (i / per_target) as f64 * 0.01
                + epoch as f64 * 30.0
                + band as f64 * 0.002,
            exptime_s: 30.0,
            size,
            pixel_arcsec: PIXEL_ARCSEC,
            fwhm_arcsec: 0.8,
            layout,
            seed: seed.wrapping_mul(1_000_003).wrapping_add(i),
        };
        let reach = field_deg
            * if layout == Layout::TwoDetectors {
                1.2
            } else {
                0.75
            };
        let stars: Vec<Star> = index
            .near(ra, dec, reach)
            .map(|o| Star {
                ra_deg: o.ra_deg,
                dec_deg: o.dec_deg,
                mag: o.mags[band],
            })
            .collect();
        let path = dir.join(format!("img-{i:06}.fits"));
        meridian_images::synth::write(&path, &e, &stars)
            .with_context(|| format!("writing {}", path.display()))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!(
        "images: {n} of {size} x {size} pixels under {}",
        dir.display()
    );
    Ok(())
}
