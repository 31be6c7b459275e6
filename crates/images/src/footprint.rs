//! Where an image lies on the sky, in ICRS: its corners, centre, extent and pixel scale.

use crate::frames::to_icrs;
use crate::{Error, Result, Wcs};

/// An image's footprint, ICRS degrees.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    /// Centre (the middle pixel's position).
    pub ra_deg: f64,
    pub dec_deg: f64,
    /// The outer corners of the corner pixels, in pixel order (1,1), (n1,1), (n1,n2),
    /// (1,n2): a polygon whose edges follow the image's edges.
    pub corners_deg: Vec<(f64, f64)>,
    /// Diameter of the smallest circle about the centre holding the corners, degrees.
    pub fov_deg: f64,
    /// Side of a pixel at the centre, arcseconds.
    pub pixel_arcsec: f64,
}

fn separation_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (ra1, d1) = (a.0.to_radians(), a.1.to_radians());
    let (ra2, d2) = (b.0.to_radians(), b.1.to_radians());
    // Vincenty's formula: accurate at every separation.
    let dra = ra2 - ra1;
    let num = ((d2.cos() * dra.sin()).powi(2)
        + (d1.cos() * d2.sin() - d1.sin() * d2.cos() * dra.cos()).powi(2))
    .sqrt();
    let den = d1.sin() * d2.sin() + d1.cos() * d2.cos() * dra.cos();
    num.atan2(den).to_degrees()
}

impl Footprint {
    /// The footprint of an image of `size` (NAXIS1, NAXIS2) pixels under `wcs`.
    pub fn of(wcs: &Wcs, size: (u64, u64)) -> Result<Self> {
        let (nx, ny) = (size.0 as f64, size.1 as f64);
        let sky = |p: [f64; 2]| -> Result<(f64, f64)> {
            let (lon, lat) = wcs.pixel_to_world(p).ok_or_else(|| {
                Error::Wcs(format!(
                    "pixel ({}, {}) has no sky position: the image reaches past its projection",
                    p[0], p[1]
                ))
            })?;
            Ok(to_icrs(wcs.frame(), lon, lat))
        };
        let centre_pixel = [(nx + 1.0) / 2.0, (ny + 1.0) / 2.0];
        let centre = sky(centre_pixel)?;
        let corners = [
            [0.5, 0.5],
            [nx + 0.5, 0.5],
            [nx + 0.5, ny + 0.5],
            [0.5, ny + 0.5],
        ]
        .into_iter()
        .map(sky)
        .collect::<Result<Vec<_>>>()?;
        let fov_deg = 2.0
            * corners
                .iter()
                .map(|c| separation_deg(centre, *c))
                .fold(0.0, f64::max);
        // A pixel's side: the geometric mean of the separations to its neighbours.
        let right = sky([centre_pixel[0] + 1.0, centre_pixel[1]])?;
        let up = sky([centre_pixel[0], centre_pixel[1] + 1.0])?;
        let pixel_arcsec =
            (separation_deg(centre, right) * separation_deg(centre, up)).sqrt() * 3600.0;
        Ok(Footprint {
            ra_deg: centre.0,
            dec_deg: centre.1,
            corners_deg: corners,
            fov_deg,
            pixel_arcsec,
        })
    }

    /// The polygon as STC-S (`Polygon ICRS ra1 dec1 ...`).
    pub fn stcs(&self) -> String {
        let mut s = String::from("Polygon ICRS");
        for (ra, dec) in &self.corners_deg {
            s.push_str(&format!(" {ra:.8} {dec:.8}"));
        }
        s
    }
}
