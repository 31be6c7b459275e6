//! World coordinate systems of FITS images: pixel to sky and back.
//!
//! Follows the FITS WCS papers (Greisen & Calabretta 2002, paper I; Calabretta & Greisen
//! 2002, paper II) for the linear transformation (CD, PC with CDELT, or CROTA2), the
//! projections and the rotation to the celestial frame; the SIP convention (Shupe et al.
//! 2005) and the TPV convention (SCAMP's) for polynomial distortions; and the Digitized Sky Survey's plate solutions
//! (PLTRAH..., AMDX/AMDY), as WCSTools and wcslib read them.
//!
//! Written by hand: wcslib, the reference, has no Rust crate and the build may not carry
//! foreign source, and the Rust crates tried (CDS's `mapproj`/`wcs` 0.4) evaluate TAN-SIP
//! and ZPN wrongly and have no DSS. The tests compare every image of the shared data with
//! `astropy.wcs` (which is wcslib).

use std::f64::consts::PI;

use meridian_formats::FitsHeader;

use crate::{Error, Result};

const D2R: f64 = PI / 180.0;
const R2D: f64 = 180.0 / PI;

/// The celestial frame of a WCS's world coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame {
    /// ICRS.
    Icrs,
    /// FK5 at the given equinox (Julian years).
    Fk5 { equinox: f64 },
    /// FK4 at the given equinox (Besselian years).
    Fk4 { equinox: f64 },
    /// Galactic longitude and latitude.
    Galactic,
    /// Ecliptic longitude and latitude.
    Ecliptic,
}

/// A projection from the native sphere to the plane (paper II's codes).
#[derive(Debug, Clone, PartialEq)]
enum Projection {
    /// Gnomonic.
    Tan,
    /// Orthographic (without slant).
    Sin,
    /// Zenithal equidistant.
    Arc,
    /// Stereographic.
    Stg,
    /// Zenithal equal area.
    Zea,
    /// Zenithal polynomial: R = sum of P_m * zeta^m (zeta = 90 - theta, radians).
    Zpn(Vec<f64>),
    /// Plate carree.
    Car,
    /// Mercator.
    Mer,
    /// Cylindrical equal area, with lambda.
    Cea(f64),
    /// Sanson-Flamsteed.
    Sfl,
    /// Hammer-Aitoff.
    Ait,
}

impl Projection {
    /// Native latitude of the fiducial point, degrees.
    fn theta0_deg(&self) -> f64 {
        match self {
            Projection::Tan
            | Projection::Sin
            | Projection::Arc
            | Projection::Stg
            | Projection::Zea
            | Projection::Zpn(_) => 90.0,
            _ => 0.0,
        }
    }

    /// Plane (x, y), degrees, to native (phi, theta), degrees; `None` outside the
    /// projection's domain.
    fn deproject(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let r = x.hypot(y);
        let zenithal_phi = if r == 0.0 { 0.0 } else { x.atan2(-y) * R2D };
        let zenithal = |theta: f64| Some((zenithal_phi, theta));
        match self {
            Projection::Tan => zenithal(R2D.atan2(r) * R2D),
            Projection::Sin => {
                let c = r * D2R;
                if c > 1.0 + 1e-13 {
                    return None;
                }
                zenithal(c.min(1.0).acos() * R2D)
            }
            Projection::Arc => zenithal(90.0 - r),
            Projection::Stg => zenithal(90.0 - 2.0 * (r * PI / 360.0).atan() * R2D),
            Projection::Zea => {
                let s = r * PI / 360.0;
                if s > 1.0 + 1e-13 {
                    return None;
                }
                zenithal(90.0 - 2.0 * s.min(1.0).asin() * R2D)
            }
            Projection::Zpn(p) => zenithal(90.0 - zpn_zeta(p, r * D2R)? * R2D),
            Projection::Car => Some((x, y)),
            Projection::Mer => Some((x, 2.0 * (y * D2R).exp().atan() * R2D - 90.0)),
            Projection::Cea(lambda) => {
                let s = y * D2R * lambda;
                if s.abs() > 1.0 + 1e-13 {
                    return None;
                }
                Some((x, s.clamp(-1.0, 1.0).asin() * R2D))
            }
            Projection::Sfl => {
                let c = (y * D2R).cos();
                Some((if c == 0.0 { 0.0 } else { x / c }, y))
            }
            Projection::Ait => {
                let z2 = 1.0 - (x * PI / 720.0).powi(2) - (y * PI / 360.0).powi(2);
                if z2 < 0.5 - 1e-13 {
                    return None;
                }
                let z = z2.max(0.5).sqrt();
                let phi = 2.0 * (z * x * PI / 360.0).atan2(2.0 * z * z - 1.0) * R2D;
                let s = y * z * PI / 180.0;
                Some((phi, s.clamp(-1.0, 1.0).asin() * R2D))
            }
        }
    }

    /// Native (phi, theta), degrees, to plane (x, y), degrees; `None` where the projection
    /// has no image (the far hemisphere of TAN or SIN, say).
    fn project(&self, phi: f64, theta: f64) -> Option<(f64, f64)> {
        let zenithal = |r: f64| {
            let p = phi * D2R;
            Some((r * p.sin(), -r * p.cos()))
        };
        let t = theta * D2R;
        match self {
            Projection::Tan => {
                if theta <= 0.0 {
                    return None;
                }
                zenithal(R2D * t.cos() / t.sin())
            }
            Projection::Sin => {
                if theta < 0.0 {
                    return None;
                }
                zenithal(R2D * t.cos())
            }
            Projection::Arc => zenithal(90.0 - theta),
            Projection::Stg => {
                if theta <= -90.0 {
                    return None;
                }
                zenithal(360.0 / PI * ((90.0 - theta) * D2R / 2.0).tan())
            }
            Projection::Zea => zenithal(360.0 / PI * ((90.0 - theta) * D2R / 2.0).sin()),
            Projection::Zpn(p) => {
                let zeta = (90.0 - theta) * D2R;
                zenithal(R2D * polynomial(p, zeta))
            }
            Projection::Car => Some((phi, theta)),
            Projection::Mer => {
                if theta.abs() >= 90.0 {
                    return None;
                }
                Some((phi, R2D * ((90.0 + theta) * D2R / 2.0).tan().ln()))
            }
            Projection::Cea(lambda) => Some((phi, R2D * t.sin() / lambda)),
            Projection::Sfl => Some((phi * t.cos(), theta)),
            Projection::Ait => {
                let half = phi * D2R / 2.0;
                let gamma = R2D * (2.0 / (1.0 + t.cos() * half.cos())).sqrt();
                Some((2.0 * gamma * t.cos() * half.sin(), gamma * t.sin()))
            }
        }
    }
}

/// sum of p[m] * z^m.
fn polynomial(p: &[f64], z: f64) -> f64 {
    p.iter().rev().fold(0.0, |acc, c| acc * z + c)
}

/// The zeta (radians, 0 to pi) at which ZPN's polynomial reaches `r` (radians): on the
/// first rising stretch of the polynomial, by bisection then Newton.
fn zpn_zeta(p: &[f64], r: f64) -> Option<f64> {
    let f = |z: f64| polynomial(p, z) - r;
    // The polynomial must rise from zeta = 0; find where it first stops rising (or pi).
    let steps = 720;
    let mut hi = PI;
    let mut prev = polynomial(p, 0.0);
    for k in 1..=steps {
        let z = PI * k as f64 / steps as f64;
        let v = polynomial(p, z);
        if v < prev {
            hi = PI * (k - 1) as f64 / steps as f64;
            break;
        }
        prev = v;
    }
    let (mut a, mut b) = (0.0, hi);
    if f(a) > 1e-14 || f(b) < -1e-14 {
        return None;
    }
    for _ in 0..200 {
        let m = 0.5 * (a + b);
        if f(m) < 0.0 {
            a = m;
        } else {
            b = m;
        }
        if b - a < 1e-15 {
            break;
        }
    }
    Some(0.5 * (a + b))
}

/// SIP polynomial distortion: forward (A, B) and, when given, inverse (AP, BP).
#[derive(Debug, Clone)]
struct Sip {
    a: Vec<(i32, i32, f64)>,
    b: Vec<(i32, i32, f64)>,
}

fn sip_terms(h: &FitsHeader, name: &str) -> Vec<(i32, i32, f64)> {
    let order = h.float(&format!("{name}_ORDER")).unwrap_or(0.0) as i32;
    let mut out = Vec::new();
    for p in 0..=order {
        for q in 0..=(order - p) {
            if let Some(c) = h.float(&format!("{name}_{p}_{q}"))
                && c != 0.0
            {
                out.push((p, q, c));
            }
        }
    }
    out
}

fn sip_eval(terms: &[(i32, i32, f64)], u: f64, v: f64) -> f64 {
    terms
        .iter()
        .map(|(p, q, c)| c * u.powi(*p) * v.powi(*q))
        .sum()
}

impl Sip {
    fn forward(&self, u: f64, v: f64) -> (f64, f64) {
        (u + sip_eval(&self.a, u, v), v + sip_eval(&self.b, u, v))
    }

    /// The (u, v) whose distorted position is (u1, v1), by Newton's method.
    fn inverse(&self, u1: f64, v1: f64) -> Option<(f64, f64)> {
        newton2(|u, v| self.forward(u, v), u1, v1, (u1, v1))
    }
}

/// TPV polynomial distortion (the TPV registry convention, as SCAMP writes it): after the
/// linear transformation, the intermediate coordinates (x, y), degrees, become
/// xi = sum PV1_k T_k(x, y) and eta = sum PV2_k T_k(y, x), with the 40 terms T_k of
/// [`tpv_terms`]. A coefficient not given is 0, PVi_1 included, as wcslib reads TPV; an axis
/// with no PV cards at all would map the whole image to one line and is refused.
#[derive(Debug, Clone)]
struct Tpv {
    xi: [f64; 40],
    eta: [f64; 40],
}

/// The 40 TPV terms of (u, v), in PV order: 1, u, v, r, then for each degree d from 2 to
/// 7 the monomials u^d, u^(d-1) v, ..., v^d, followed by r^d when d is odd
/// (r = sqrt(u^2 + v^2)).
fn tpv_terms(u: f64, v: f64) -> [f64; 40] {
    let r = u.hypot(v);
    let mut t = [0.0; 40];
    t[0] = 1.0;
    t[1] = u;
    t[2] = v;
    t[3] = r;
    let mut k = 4;
    for d in 2..=7 {
        for j in 0..=d {
            t[k] = u.powi(d - j) * v.powi(j);
            k += 1;
        }
        if d % 2 == 1 {
            t[k] = r.powi(d);
            k += 1;
        }
    }
    t
}

impl Tpv {
    /// The coefficients of the header's PV cards on the longitude (`lon`) and latitude
    /// (`lat`) axes (0-based), if it has any.
    fn from_header(h: &FitsHeader, lon: usize, lat: usize) -> Result<Self> {
        let coefficients = |axis: usize| {
            let mut c = [0.0; 40];
            let mut any = false;
            for (m, v) in c.iter_mut().enumerate() {
                if let Some(x) = h.float(&format!("PV{}_{m}", axis + 1)) {
                    *v = x;
                    any = true;
                }
            }
            if any {
                Ok(c)
            } else {
                Err(Error::Wcs(format!(
                    "TPV without any PV{}_m card: the distortion is undefined",
                    axis + 1
                )))
            }
        };
        Ok(Tpv {
            xi: coefficients(lon)?,
            eta: coefficients(lat)?,
        })
    }

    fn forward(&self, x: f64, y: f64) -> (f64, f64) {
        let dot = |c: &[f64; 40], t: [f64; 40]| c.iter().zip(t).map(|(a, b)| a * b).sum::<f64>();
        (
            dot(&self.xi, tpv_terms(x, y)),
            dot(&self.eta, tpv_terms(y, x)),
        )
    }

    /// The (x, y) whose distorted position is (xi, eta), by Newton's method.
    fn inverse(&self, xi: f64, eta: f64) -> Option<(f64, f64)> {
        newton2(|x, y| self.forward(x, y), xi, eta, (xi, eta))
    }
}

/// Solves f(x, y) = (tx, ty) from `start` by Newton's method with a numerical Jacobian.
fn newton2(
    f: impl Fn(f64, f64) -> (f64, f64),
    tx: f64,
    ty: f64,
    start: (f64, f64),
) -> Option<(f64, f64)> {
    let (mut x, mut y) = start;
    for _ in 0..50 {
        let (fx, fy) = f(x, y);
        let (ex, ey) = (fx - tx, fy - ty);
        if ex.abs() < 1e-12 && ey.abs() < 1e-12 {
            return Some((x, y));
        }
        let h = 1e-6 * (1.0 + x.abs().max(y.abs()));
        let (ax, ay) = f(x + h, y);
        let (bx, by) = f(x, y + h);
        let (j11, j21) = ((ax - fx) / h, (ay - fy) / h);
        let (j12, j22) = ((bx - fx) / h, (by - fy) / h);
        let det = j11 * j22 - j12 * j21;
        if det == 0.0 || !det.is_finite() {
            return None;
        }
        x -= (j22 * ex - j12 * ey) / det;
        y -= (-j21 * ex + j11 * ey) / det;
    }
    let (fx, fy) = f(x, y);
    ((fx - tx).abs() < 1e-9 && (fy - ty).abs() < 1e-9).then_some((x, y))
}

/// The DSS plate model's polynomial of (u, v): the 13 position terms of AMDX (with u = x)
/// or AMDY (with u = y); the magnitude and colour terms are not used.
fn plate_polynomial(c: &[f64; 13], u: f64, v: f64) -> f64 {
    let (u2, v2) = (u * u, v * v);
    let r2 = u2 + v2;
    c[0] * u
        + c[1] * v
        + c[2]
        + c[3] * u2
        + c[4] * u * v
        + c[5] * v2
        + c[6] * r2
        + c[7] * u2 * u
        + c[8] * u2 * v
        + c[9] * u * v2
        + c[10] * v2 * v
        + c[11] * u * r2
        + c[12] * u * r2 * r2
}

/// A Digitized Sky Survey plate solution.
#[derive(Debug, Clone)]
struct Dss {
    ra0_rad: f64,
    dec0_rad: f64,
    offset: (f64, f64),
    pixel_um: (f64, f64),
    ppo3: f64,
    ppo6: f64,
    a: [f64; 13],
    b: [f64; 13],
}

impl Dss {
    fn from_header(h: &FitsHeader) -> Option<Self> {
        let ra = h.float("PLTRAH")? + h.float("PLTRAM")? / 60.0 + h.float("PLTRAS")? / 3600.0;
        let sign = if h.string("PLTDECSN").is_some_and(|s| s.trim() == "-") {
            -1.0
        } else {
            1.0
        };
        let dec = sign
            * (h.float("PLTDECD")? + h.float("PLTDECM")? / 60.0 + h.float("PLTDECS")? / 3600.0);
        let mut a = [0.0; 13];
        let mut b = [0.0; 13];
        for i in 0..13 {
            a[i] = h.float(&format!("AMDX{}", i + 1)).unwrap_or(0.0);
            b[i] = h.float(&format!("AMDY{}", i + 1)).unwrap_or(0.0);
        }
        Some(Dss {
            ra0_rad: ra * 15.0 * D2R,
            dec0_rad: dec * D2R,
            offset: (h.float("CNPIX1")?, h.float("CNPIX2")?),
            pixel_um: (h.float("XPIXELSZ")?, h.float("YPIXELSZ")?),
            ppo3: h.float("PPO3")?,
            ppo6: h.float("PPO6")?,
            a,
            b,
        })
    }

    /// Pixel to plate millimetres.
    fn plate_mm(&self, px: f64, py: f64) -> (f64, f64) {
        let x = px + self.offset.0 - 0.5;
        let y = py + self.offset.1 - 0.5;
        (
            (self.ppo3 - x * self.pixel_um.0) / 1000.0,
            (y * self.pixel_um.1 - self.ppo6) / 1000.0,
        )
    }

    /// Plate millimetres to standard coordinates (xi, eta), arcseconds: eta's polynomial
    /// is xi's with the roles of x and y exchanged.
    fn standard(&self, x: f64, y: f64) -> (f64, f64) {
        (
            plate_polynomial(&self.a, x, y),
            plate_polynomial(&self.b, y, x),
        )
    }

    fn pixel_to_world(&self, px: f64, py: f64) -> (f64, f64) {
        let (x, y) = self.plate_mm(px, py);
        let (xi, eta) = self.standard(x, y);
        let (xi, eta) = (xi / 3600.0 * D2R, eta / 3600.0 * D2R);
        let (t, c) = (self.dec0_rad.tan(), self.dec0_rad.cos());
        let ra_off = (xi / c).atan2(1.0 - eta * t);
        let ra = (ra_off + self.ra0_rad) * R2D;
        let dec = (ra_off.cos() * (eta + t) / (1.0 - eta * t)).atan() * R2D;
        (ra.rem_euclid(360.0), dec)
    }

    fn world_to_pixel(&self, ra_deg: f64, dec_deg: f64) -> Option<(f64, f64)> {
        // Standard coordinates of the position about the plate centre (gnomonic).
        let (ra, dec) = (ra_deg * D2R, dec_deg * D2R);
        let d = ra - self.ra0_rad;
        let den = dec.sin() * self.dec0_rad.sin() + dec.cos() * self.dec0_rad.cos() * d.cos();
        if den <= 0.0 {
            return None;
        }
        let xi = dec.cos() * d.sin() / den * R2D * 3600.0;
        let eta = (dec.sin() * self.dec0_rad.cos() - dec.cos() * self.dec0_rad.sin() * d.cos())
            / den
            * R2D
            * 3600.0;
        // Plate millimetres by Newton from the linear guess, then pixels.
        let (x, y) = newton2(
            |x, y| self.standard(x, y),
            xi,
            eta,
            (xi / self.a[0], eta / self.b[0]),
        )?;
        let px = (self.ppo3 - x * 1000.0) / self.pixel_um.0 - self.offset.0 + 0.5;
        let py = (y * 1000.0 + self.ppo6) / self.pixel_um.1 - self.offset.1 + 0.5;
        Some((px, py))
    }
}

/// The celestial WCS of one image HDU.
#[derive(Debug, Clone)]
pub struct Wcs {
    /// Pixel axes (0-based) of longitude and latitude.
    lon_axis: usize,
    lat_axis: usize,
    crpix: [f64; 2],
    /// Pixel offsets (lon axis, lat axis) to intermediate (x, y) degrees, and back.
    matrix: [[f64; 2]; 2],
    inverse: [[f64; 2]; 2],
    projection: Projection,
    /// Celestial coordinates of the native pole and native longitude of the celestial
    /// pole, radians.
    alpha_p: f64,
    delta_p: f64,
    phi_p: f64,
    sip: Option<Sip>,
    tpv: Option<Tpv>,
    dss: Option<Dss>,
    frame: Frame,
}

fn projection_of(code: &str, h: &FitsHeader, lat: usize) -> Result<Projection> {
    let pv = |m: usize| h.float(&format!("PV{}_{m}", lat + 1));
    Ok(match code {
        "TAN" | "TPV" => Projection::Tan,
        "SIN" => {
            if pv(1).unwrap_or(0.0) != 0.0 || pv(2).unwrap_or(0.0) != 0.0 {
                return Err(Error::Wcs(
                    "slant orthographic (SIN with PV xi, eta) is not supported".into(),
                ));
            }
            Projection::Sin
        }
        "ARC" => Projection::Arc,
        "STG" => Projection::Stg,
        "ZEA" => Projection::Zea,
        "ZPN" => {
            let mut p: Vec<f64> = (0..=20).map(|m| pv(m).unwrap_or(0.0)).collect();
            while p.len() > 1 && p.last() == Some(&0.0) {
                p.pop();
            }
            Projection::Zpn(p)
        }
        "CAR" => Projection::Car,
        "MER" => Projection::Mer,
        "CEA" => Projection::Cea(pv(1).unwrap_or(1.0)),
        "SFL" | "GLS" => Projection::Sfl,
        "AIT" => Projection::Ait,
        other => {
            return Err(Error::Wcs(format!(
                "the {other} projection is not supported"
            )));
        }
    })
}

/// Longitude or latitude axis kind of a CTYPE, and its projection code.
fn celestial_axis(ctype: &str) -> Option<(bool, &str, String)> {
    let (axis, rest) = ctype.split_at_checked(4)?;
    let code = rest.trim_start_matches('-');
    let code = code.split('-').next().unwrap_or("").to_string();
    match axis {
        "RA--" | "GLON" | "ELON" => Some((true, axis, code)),
        "DEC-" | "GLAT" | "ELAT" => Some((false, axis, code)),
        _ => None,
    }
}

impl Wcs {
    /// The celestial WCS of `header` (the image's own HDU header).
    pub fn from_header(h: &FitsHeader) -> Result<Self> {
        let naxis = h
            .float("NAXIS")
            .or_else(|| h.float("ZNAXIS"))
            .unwrap_or(2.0) as usize;
        let naxis = naxis.max(2);
        let dss = if h.float("PLTRAH").is_some() && h.float("AMDX1").is_some() {
            Dss::from_header(h)
        } else {
            None
        };
        let mut lon = None;
        let mut lat = None;
        let mut code = String::new();
        let mut kind = String::from("RA--");
        for i in 0..naxis {
            let ctype = h.string(&format!("CTYPE{}", i + 1)).unwrap_or_default();
            if let Some((is_lon, k, c)) = celestial_axis(&ctype) {
                if is_lon {
                    lon = Some(i);
                    kind = k.to_string();
                } else {
                    lat = Some(i);
                }
                code = c;
            }
        }
        let frame = match kind.as_str() {
            "GLON" => Frame::Galactic,
            "ELON" => Frame::Ecliptic,
            _ => equatorial_frame(h),
        };
        if let Some(dss) = dss {
            return Ok(Self::dss(dss, frame));
        }
        let (Some(lon_axis), Some(lat_axis)) = (lon, lat) else {
            return Err(Error::Wcs(
                "no celestial axes: no CTYPEi of RA/DEC, GLON/GLAT or ELON/ELAT".into(),
            ));
        };
        let projection = projection_of(&code, h, lat_axis)?;
        let axes = [lon_axis, lat_axis];
        let key = |k: &str, i: usize| format!("{k}{}", i + 1);
        let crpix = axes.map(|i| h.float(&key("CRPIX", i)).unwrap_or(0.0));
        let crval = axes.map(|i| h.float(&key("CRVAL", i)).unwrap_or(0.0));
        let cd = |i: usize, j: usize| h.float(&format!("CD{}_{}", i + 1, j + 1));
        let has_cd = axes
            .iter()
            .any(|&i| axes.iter().any(|&j| cd(i, j).is_some()));
        let has_pc = axes.iter().any(|&i| {
            axes.iter()
                .any(|&j| h.float(&format!("PC{}_{}", i + 1, j + 1)).is_some())
        });
        let mut matrix = [[0.0; 2]; 2];
        if has_cd {
            for (r, &i) in axes.iter().enumerate() {
                for (c, &j) in axes.iter().enumerate() {
                    matrix[r][c] = cd(i, j).unwrap_or(0.0);
                }
            }
        } else {
            let cdelt = axes.map(|i| h.float(&key("CDELT", i)).unwrap_or(1.0));
            let crota = h.float(&key("CROTA", lat_axis)).unwrap_or(0.0);
            if !has_pc && crota != 0.0 {
                let (s, c) = (crota * D2R).sin_cos();
                // Paper II, eq. 189, with the axes in (lon, lat) order.
                matrix = [[cdelt[0] * c, -cdelt[1] * s], [cdelt[0] * s, cdelt[1] * c]];
            } else {
                for (r, &i) in axes.iter().enumerate() {
                    for (c, &j) in axes.iter().enumerate() {
                        let pc = h
                            .float(&format!("PC{}_{}", i + 1, j + 1))
                            .unwrap_or(if i == j { 1.0 } else { 0.0 });
                        matrix[r][c] = cdelt[r] * pc;
                    }
                }
            }
        }
        let det = matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0];
        if det == 0.0 || !det.is_finite() {
            return Err(Error::Wcs("the linear transformation is singular".into()));
        }
        let inverse = [
            [matrix[1][1] / det, -matrix[0][1] / det],
            [-matrix[1][0] / det, matrix[0][0] / det],
        ];
        let theta0 = projection.theta0_deg();
        let default_lonpole = if crval[1] >= theta0 { 0.0 } else { 180.0 };
        let lonpole = h.float("LONPOLE").unwrap_or(default_lonpole);
        let latpole = h.float("LATPOLE").unwrap_or(90.0);
        let (alpha_p, delta_p) = celestial_pole(crval[0], crval[1], theta0, lonpole, latpole)?;
        let sip = if h
            .string(&key("CTYPE", lon_axis))
            .is_some_and(|c| c.ends_with("-SIP"))
        {
            Some(Sip {
                a: sip_terms(h, "A"),
                b: sip_terms(h, "B"),
            })
        } else {
            None
        };
        let tpv = if code == "TPV" {
            Some(Tpv::from_header(h, lon_axis, lat_axis)?)
        } else {
            None
        };
        Ok(Wcs {
            lon_axis,
            lat_axis,
            crpix,
            matrix,
            inverse,
            projection,
            alpha_p,
            delta_p,
            phi_p: lonpole * D2R,
            sip,
            tpv,
            dss: None,
            frame,
        })
    }

    fn dss(dss: Dss, frame: Frame) -> Self {
        Wcs {
            lon_axis: 0,
            lat_axis: 1,
            crpix: [0.0; 2],
            matrix: [[1.0, 0.0], [0.0, 1.0]],
            inverse: [[1.0, 0.0], [0.0, 1.0]],
            projection: Projection::Tan,
            alpha_p: 0.0,
            delta_p: 0.0,
            phi_p: 0.0,
            sip: None,
            tpv: None,
            dss: Some(dss),
            frame,
        }
    }

    /// The frame of the world coordinates.
    pub fn frame(&self) -> Frame {
        self.frame
    }

    /// World coordinates (longitude, latitude), degrees, of the pixel at `pixel` (FITS
    /// pixel coordinates on the image's first two axes); `None` where the projection has
    /// no sky.
    pub fn pixel_to_world(&self, pixel: [f64; 2]) -> Option<(f64, f64)> {
        if let Some(dss) = &self.dss {
            return Some(dss.pixel_to_world(pixel[0], pixel[1]));
        }
        let mut d = [pixel[0] - self.crpix_of(0), pixel[1] - self.crpix_of(1)];
        if let Some(sip) = &self.sip {
            let (u, v) = sip.forward(d[0], d[1]);
            d = [u, v];
        }
        // Offsets in (lon axis, lat axis) order.
        let (dl, db) = if self.lon_axis < self.lat_axis {
            (d[0], d[1])
        } else {
            (d[1], d[0])
        };
        let m = &self.matrix;
        let mut x = m[0][0] * dl + m[0][1] * db;
        let mut y = m[1][0] * dl + m[1][1] * db;
        if let Some(tpv) = &self.tpv {
            (x, y) = tpv.forward(x, y);
        }
        let (phi, theta) = self.projection.deproject(x, y)?;
        Some(self.native_to_celestial(phi * D2R, theta * D2R))
    }

    /// The FITS pixel coordinates of world position (`lon_deg`, `lat_deg`); `None` where
    /// the projection has no image of it.
    pub fn world_to_pixel(&self, lon_deg: f64, lat_deg: f64) -> Option<[f64; 2]> {
        if let Some(dss) = &self.dss {
            return dss.world_to_pixel(lon_deg, lat_deg).map(|(x, y)| [x, y]);
        }
        let (phi, theta) = self.celestial_to_native(lon_deg * D2R, lat_deg * D2R);
        let (mut x, mut y) = self.projection.project(phi * R2D, theta * R2D)?;
        if let Some(tpv) = &self.tpv {
            (x, y) = tpv.inverse(x, y)?;
        }
        let m = &self.inverse;
        let dl = m[0][0] * x + m[0][1] * y;
        let db = m[1][0] * x + m[1][1] * y;
        let mut d = if self.lon_axis < self.lat_axis {
            [dl, db]
        } else {
            [db, dl]
        };
        if let Some(sip) = &self.sip {
            let (u, v) = sip.inverse(d[0], d[1])?;
            d = [u, v];
        }
        Some([d[0] + self.crpix_of(0), d[1] + self.crpix_of(1)])
    }

    /// CRPIX of the image's first (`0`) or second (`1`) celestial pixel axis.
    fn crpix_of(&self, k: usize) -> f64 {
        let first_is_lon = self.lon_axis < self.lat_axis;
        match (k, first_is_lon) {
            (0, true) | (1, false) => self.crpix[0],
            _ => self.crpix[1],
        }
    }

    /// Paper II, eq. 2: native (phi, theta) to celestial (lon, lat), degrees.
    fn native_to_celestial(&self, phi: f64, theta: f64) -> (f64, f64) {
        let (sd, cd) = self.delta_p.sin_cos();
        let (st, ct) = theta.sin_cos();
        let dphi = phi - self.phi_p;
        let (y, x) = (-ct * dphi.sin(), st * cd - ct * sd * dphi.cos());
        let lon = self.alpha_p + y.atan2(x);
        // atan2 rather than asin: asin loses half the digits near the poles.
        let lat = (st * sd + ct * cd * dphi.cos()).atan2(y.hypot(x));
        ((lon * R2D).rem_euclid(360.0), lat * R2D)
    }

    /// Paper II, eq. 5: celestial (lon, lat), radians, to native (phi, theta), radians.
    fn celestial_to_native(&self, lon: f64, lat: f64) -> (f64, f64) {
        let (sd, cd) = self.delta_p.sin_cos();
        let (sb, cb) = lat.sin_cos();
        let da = lon - self.alpha_p;
        let (y, x) = (-cb * da.sin(), sb * cd - cb * sd * da.cos());
        let phi = self.phi_p + y.atan2(x);
        let theta = (sb * sd + cb * cd * da.cos()).atan2(y.hypot(x));
        // Native longitude in (-pi, pi].
        let phi = (phi + PI).rem_euclid(2.0 * PI) - PI;
        (phi, theta)
    }
}

/// The equatorial frame a header names (RADESYS, else from EQUINOX as paper II says).
fn equatorial_frame(h: &FitsHeader) -> Frame {
    let equinox = h.float("EQUINOX").or_else(|| h.float("EPOCH"));
    let system = h
        .string("RADESYS")
        .or_else(|| h.string("RADECSYS"))
        .map(|s| s.trim().to_ascii_uppercase());
    match system.as_deref() {
        Some("ICRS") => Frame::Icrs,
        Some("FK5") => Frame::Fk5 {
            equinox: equinox.unwrap_or(2000.0),
        },
        Some("FK4") | Some("FK4-NO-E") => Frame::Fk4 {
            equinox: equinox.unwrap_or(1950.0),
        },
        _ => match equinox {
            Some(e) if e < 1984.0 => Frame::Fk4 { equinox: e },
            Some(e) => Frame::Fk5 { equinox: e },
            None => Frame::Icrs,
        },
    }
}

/// Celestial coordinates (radians) of the native pole, from the reference point
/// (`alpha0`, `delta0`, degrees), the fiducial native latitude and LONPOLE/LATPOLE
/// (paper II, section 2.4).
fn celestial_pole(
    alpha0: f64,
    delta0: f64,
    theta0: f64,
    lonpole: f64,
    latpole: f64,
) -> Result<(f64, f64)> {
    if theta0 == 90.0 {
        return Ok((alpha0 * D2R, delta0 * D2R));
    }
    let (a0, d0, t0, pp) = (alpha0 * D2R, delta0 * D2R, theta0 * D2R, lonpole * D2R);
    // phi0 is 0 for every projection here.
    let base = t0.sin().atan2(t0.cos() * pp.cos());
    let den = (1.0 - (t0.cos() * pp.sin()).powi(2)).sqrt();
    let c = d0.sin() / den;
    if c.abs() > 1.0 + 1e-12 {
        return Err(Error::Wcs(
            "no celestial pole fits CRVAL with LONPOLE: the WCS is inconsistent".into(),
        ));
    }
    let spread = c.clamp(-1.0, 1.0).acos();
    let candidates = [base + spread, base - spread];
    let valid: Vec<f64> = candidates
        .into_iter()
        .filter(|d| d.abs() <= PI / 2.0 + 1e-12)
        .collect();
    let delta_p = valid
        .iter()
        .copied()
        .min_by(|a, b| {
            (a - latpole * D2R)
                .abs()
                .total_cmp(&(b - latpole * D2R).abs())
        })
        .ok_or_else(|| Error::Wcs("no celestial pole fits CRVAL with LONPOLE".into()))?
        .clamp(-PI / 2.0, PI / 2.0);
    let alpha_p = if (d0.abs() - PI / 2.0).abs() < 1e-12 {
        a0
    } else if (delta_p - PI / 2.0).abs() < 1e-12 {
        a0 + pp - PI
    } else if (delta_p + PI / 2.0).abs() < 1e-12 {
        a0 - pp
    } else {
        a0 - (pp.sin() * t0.cos() / d0.cos())
            .atan2((t0.sin() - delta_p.sin() * d0.sin()) / (delta_p.cos() * d0.cos()))
    };
    Ok((alpha_p, delta_p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_invert() {
        for p in [
            Projection::Tan,
            Projection::Sin,
            Projection::Arc,
            Projection::Stg,
            Projection::Zea,
            Projection::Zpn(vec![0.0, 1.0, 0.0, -60.0]),
            Projection::Car,
            Projection::Mer,
            Projection::Cea(1.0),
            Projection::Sfl,
            Projection::Ait,
        ] {
            for (phi, theta) in [
                (10.0_f64, 80.0_f64),
                (-120.0, 85.0),
                (170.0, 89.5),
                (45.0, 60.0),
            ] {
                let theta = if matches!(p, Projection::Zpn(_)) {
                    theta.max(87.0)
                } else {
                    theta
                };
                let (x, y) = p.project(phi, theta).unwrap();
                let (phi2, theta2) = p.deproject(x, y).unwrap();
                assert!(
                    (theta - theta2).abs() < 1e-9,
                    "{p:?} {phi} {theta}: {theta2}"
                );
                assert!((phi - phi2).abs() < 1e-9, "{p:?} {phi} {theta}: {phi2}");
            }
        }
    }
}
