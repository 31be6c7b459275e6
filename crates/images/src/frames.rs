//! Celestial frames to ICRS, for footprints and ObsCore positions.
//!
//! Rotations from the IAU definitions: Galactic coordinates by the 1958 pole and origin
//! given in FK5 J2000 (as astropy and the Hipparcos catalogue do), FK5 at other equinoxes
//! by the IAU 1976 precession, FK4 B1950 by the Explanatory Supplement's rotation for
//! positions without FK5 proper motion, with the E-terms of aberration removed first, ecliptic coordinates by the J2000 mean obliquity. FK5 J2000 is
//! taken as ICRS: the frame bias (about 20 mas) is far below what a footprint needs.

use crate::Frame;

type Matrix = [[f64; 3]; 3];

fn unit(lon_deg: f64, lat_deg: f64) -> [f64; 3] {
    let (sl, cl) = lon_deg.to_radians().sin_cos();
    let (sb, cb) = lat_deg.to_radians().sin_cos();
    [cb * cl, cb * sl, sb]
}

fn angles(v: [f64; 3]) -> (f64, f64) {
    let lon = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0);
    let lat = v[2].atan2(v[0].hypot(v[1])).to_degrees();
    (lon, lat)
}

fn apply(m: &Matrix, v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2])
}

fn transpose(m: &Matrix) -> Matrix {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[j][i]))
}

/// Equatorial FK5 J2000 to Galactic (the rows are the Galactic axes in FK5 J2000).
const FK5_TO_GALACTIC: Matrix = [
    [-0.054_875_539_390, -0.873_437_104_725, -0.483_834_991_775],
    [0.494_109_453_633, -0.444_829_594_298, 0.746_982_248_696],
    [-0.867_666_135_681, -0.198_076_389_622, 0.455_983_794_523],
];

/// FK4 B1950 (without E-terms) to FK5 J2000 for a position whose FK5 proper motion is
/// zero (the Explanatory Supplement, 1992, section 3.59): what a footprint is.
const FK4_TO_FK5: Matrix = [
    [
        0.999_925_679_495_687_7,
        -0.011_181_483_220_466_2,
        -0.004_859_003_815_359_2,
    ],
    [
        0.011_181_483_239_171_7,
        0.999_937_484_893_313_5,
        -0.000_027_162_594_714_2,
    ],
    [
        0.004_859_003_772_314_3,
        -0.000_027_170_293_744_0,
        0.999_988_194_602_374_2,
    ],
];

/// IAU 1976 precession matrix from Julian epoch `from` to J2000.
fn precession_to_j2000(from: f64) -> Matrix {
    // Lieske et al. 1977, with T the interval from J2000 to `from` in centuries; the
    // rotation from J2000 to `from` is inverted by transposing.
    let t = (from - 2000.0) / 100.0;
    let arcsec = |x: f64| (x / 3600.0).to_radians();
    let zeta = arcsec(2306.2181 * t + 0.30188 * t * t + 0.017998 * t * t * t);
    let z = arcsec(2306.2181 * t + 1.09468 * t * t + 0.018203 * t * t * t);
    let theta = arcsec(2004.3109 * t - 0.42665 * t * t - 0.041833 * t * t * t);
    let (sz, cz) = zeta.sin_cos();
    let (szz, czz) = z.sin_cos();
    let (st, ct) = theta.sin_cos();
    let forward: Matrix = [
        [
            cz * ct * czz - sz * szz,
            -sz * ct * czz - cz * szz,
            -st * czz,
        ],
        [
            cz * ct * szz + sz * czz,
            -sz * ct * szz + cz * czz,
            -st * szz,
        ],
        [cz * st, -sz * st, ct],
    ];
    transpose(&forward)
}

/// Removes the E-terms of aberration from an FK4 direction (Standish 1982).
fn remove_e_terms(v: [f64; 3]) -> [f64; 3] {
    let a = [-1.62557e-6, -0.31919e-6, -0.13843e-6];
    let dot = v[0] * a[0] + v[1] * a[1] + v[2] * a[2];
    let w = [0, 1, 2].map(|i| v[i] - a[i] + dot * v[i]);
    let n = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
    w.map(|x| x / n)
}

/// `(lon_deg, lat_deg)` in `frame`, as ICRS (ra, dec), degrees.
pub fn to_icrs(frame: Frame, lon_deg: f64, lat_deg: f64) -> (f64, f64) {
    let v = unit(lon_deg, lat_deg);
    let icrs = match frame {
        Frame::Icrs => v,
        Frame::Fk5 { equinox } if (equinox - 2000.0).abs() < 1e-9 => v,
        Frame::Fk5 { equinox } => apply(&precession_to_j2000(equinox), v),
        Frame::Galactic => apply(&transpose(&FK5_TO_GALACTIC), v),
        Frame::Ecliptic => {
            let eps = (84381.406_f64 / 3600.0).to_radians();
            let (s, c) = eps.sin_cos();
            [v[0], c * v[1] - s * v[2], s * v[1] + c * v[2]]
        }
        Frame::Fk4 { equinox } => {
            // To B1950 first (a Besselian equinox as the nearest Julian epoch: the
            // difference is far below a footprint's needs), then the rotation to FK5.
            let b1950 = if (equinox - 1950.0).abs() < 1e-9 {
                v
            } else {
                let to_2000 = precession_to_j2000(equinox);
                let from_1950 = transpose(&precession_to_j2000(1950.0));
                apply(&from_1950, apply(&to_2000, v))
            };
            apply(&FK4_TO_FK5, remove_e_terms(b1950))
        }
    };
    angles(icrs)
}

/// ICRS (ra, dec) as `(lon_deg, lat_deg)` in `frame`, degrees: [`to_icrs`] inverted. Each
/// frame is a rotation (FK4 with its E-terms, well under an arcsecond, added): the
/// rotation's matrix, read off [`to_icrs`] of the axes, gives the first answer, and its
/// transpose applied to the remaining difference corrects it to double precision.
pub fn from_icrs(frame: Frame, ra_deg: f64, dec_deg: f64) -> (f64, f64) {
    if frame == Frame::Icrs {
        return (ra_deg, dec_deg);
    }
    let forward = |v: [f64; 3]| {
        let (lon, lat) = angles(v);
        let (ra, dec) = to_icrs(frame, lon, lat);
        unit(ra, dec)
    };
    // Columns: the images of the frame's axes.
    let cols = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]].map(forward);
    let back = |w: [f64; 3]| [0, 1, 2].map(|i| (0..3).map(|k| cols[i][k] * w[k]).sum::<f64>());
    let target = unit(ra_deg, dec_deg);
    let mut v = back(target);
    for _ in 0..4 {
        let got = forward(v);
        let step = back([0, 1, 2].map(|i| target[i] - got[i]));
        let w = [0, 1, 2].map(|i| v[i] + step[i]);
        let n = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
        v = w.map(|x| x / n);
    }
    angles(v)
}

#[cfg(test)]
mod inverse_tests {
    use super::*;

    #[test]
    fn from_icrs_inverts_to_icrs() {
        for frame in [
            Frame::Galactic,
            Frame::Ecliptic,
            Frame::Fk5 { equinox: 1975.0 },
            Frame::Fk4 { equinox: 1950.0 },
        ] {
            for (ra, dec) in [(10.0, 20.0), (359.9, -89.0), (180.0, 45.0)] {
                let (l, b) = from_icrs(frame, ra, dec);
                let (ra2, dec2) = to_icrs(frame, l, b);
                let d = ((ra2 - ra)
                    .rem_euclid(360.0)
                    .min((ra - ra2).rem_euclid(360.0))
                    * dec.to_radians().cos())
                .hypot(dec2 - dec);
                assert!(d < 1e-10, "{frame:?} {ra} {dec}: {d}");
            }
        }
    }
}
