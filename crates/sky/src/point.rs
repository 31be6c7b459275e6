use crate::{Error, Result};

/// A position on the celestial sphere, in degrees (longitude in [0, 360), latitude in
/// [-90, 90]). Construct it with [`SkyPoint::new`], which validates and normalises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkyPoint {
    ra_deg: f64,
    dec_deg: f64,
}

impl SkyPoint {
    /// Validates `dec_deg` in [-90, 90] and finite `ra_deg`, wrapping RA into [0, 360).
    pub fn new(ra_deg: f64, dec_deg: f64) -> Result<Self> {
        if !ra_deg.is_finite() {
            return Err(Error::Coordinate(format!(
                "RA {ra_deg} is not a finite number"
            )));
        }
        if !dec_deg.is_finite() || !(-90.0..=90.0).contains(&dec_deg) {
            return Err(Error::Coordinate(format!(
                "Dec {dec_deg} is outside [-90, 90] degrees"
            )));
        }
        Ok(Self {
            ra_deg: ra_deg.rem_euclid(360.0),
            dec_deg,
        })
    }

    /// Right ascension (longitude) in degrees, in [0, 360).
    pub fn ra_deg(&self) -> f64 {
        self.ra_deg
    }

    /// Declination (latitude) in degrees, in [-90, 90].
    pub fn dec_deg(&self) -> f64 {
        self.dec_deg
    }

    /// Unit vector (x, y, z) of this position.
    pub fn to_unit_vector(&self) -> [f64; 3] {
        let (sa, ca) = self.ra_deg.to_radians().sin_cos();
        let (sd, cd) = self.dec_deg.to_radians().sin_cos();
        [cd * ca, cd * sa, sd]
    }

    /// The position of a unit (or non-zero) vector.
    pub fn from_vector(v: [f64; 3]) -> Self {
        let ra = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0);
        let dec = v[2].atan2(v[0].hypot(v[1])).to_degrees();
        Self {
            ra_deg: ra,
            dec_deg: dec,
        }
    }

    /// Angular separation to `other`, in degrees.
    pub fn separation_deg(&self, other: &SkyPoint) -> f64 {
        angular_separation_deg(self.ra_deg, self.dec_deg, other.ra_deg, other.dec_deg)
    }
}

/// Angular separation between two positions given in degrees, in degrees.
///
/// Uses the Vincenty formula (the special case of an ellipsoid with equal axes), which stays
/// accurate from sub-milliarcsecond separations to antipodal points, unlike the haversine
/// (poor near 180 degrees) or the cosine law (poor below about one arcsecond).
pub fn angular_separation_deg(ra1_deg: f64, dec1_deg: f64, ra2_deg: f64, dec2_deg: f64) -> f64 {
    let (s1, c1) = dec1_deg.to_radians().sin_cos();
    let (s2, c2) = dec2_deg.to_radians().sin_cos();
    let (sdl, cdl) = (ra2_deg - ra1_deg).to_radians().sin_cos();
    let num1 = c2 * sdl;
    let num2 = c1 * s2 - s1 * c2 * cdl;
    let denom = s1 * s2 + c1 * c2 * cdl;
    // Both terms are at most 1 in magnitude: the plain square root neither overflows nor
    // loses precision (at 0.1 mas they are about 5e-10, their squares far above the
    // smallest double), and it is several times faster than libm's `hypot`.
    (num1 * num1 + num2 * num2).sqrt().atan2(denom).to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_coordinates() {
        assert!(SkyPoint::new(f64::NAN, 0.0).is_err());
        assert!(SkyPoint::new(10.0, 90.0001).is_err());
        assert!(SkyPoint::new(10.0, -91.0).is_err());
        assert!(SkyPoint::new(f64::INFINITY, 0.0).is_err());
        assert_eq!(SkyPoint::new(-10.0, 0.0).unwrap().ra_deg(), 350.0);
        assert_eq!(SkyPoint::new(360.0, 0.0).unwrap().ra_deg(), 0.0);
    }

    #[test]
    fn separation_extremes() {
        assert!((angular_separation_deg(0.0, 0.0, 180.0, 0.0) - 180.0).abs() < 1e-12);
        assert!((angular_separation_deg(0.0, 90.0, 123.0, -90.0) - 180.0).abs() < 1e-12);
        // 0.1 mas across the RA seam.
        let d = 0.1e-3 / 3600.0;
        let s = angular_separation_deg(359.9999999999 + 0.0, 0.0, 359.9999999999 + d, 0.0);
        assert!((s - d).abs() / d < 1e-4, "{s} vs {d}");
        let s = angular_separation_deg(360.0 - d / 2.0, 0.0, d / 2.0, 0.0);
        assert!((s - d).abs() / d < 1e-4, "{s} vs {d}");
    }
}
