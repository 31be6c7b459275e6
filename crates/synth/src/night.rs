//! A night of difference imaging over the synthetic survey: some of its objects vary
//! (periodic stars, transients in galaxies and among stars), a list of visits observes
//! fields of the sky, and every variable whose difference flux in a visit reaches 5 sigma
//! is a detection: an alert, with the object's earlier detections and forced photometry
//! at every earlier visit of its field within a year (its history on earlier nights and
//! the night so far), as Rubin's alerts carry them.
//!
//! Every measurement is a pure function of (seed, object, visit), so an object's history
//! is the same in each of its alerts, and any visit can be regenerated alone.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::{BANDS, MJD_START, SkyObject, SurveySpec, VISIT_DEPTH_MAG, chunk_rng, mag_to_njy};

/// Field of view of one visit, radius in degrees (Rubin's is about 1.75).
pub const RUBIN_FIELD_RADIUS_DEG: f64 = 1.75;
/// Time between the starts of two visits of the night, seconds (30 s exposure, slew).
const VISIT_CADENCE_S: f64 = 39.0;
/// Visit numbers: `night * VISITS_PER_NIGHT + index`; the night's own visits take indices
/// below `HISTORY_BASE`, each field's earlier visits `HISTORY_BASE + field`.
const VISITS_PER_NIGHT: i64 = 10_000;
const HISTORY_BASE: i64 = 5_000;
/// Alerts carry the history of the last year.
const HISTORY_DAYS: f64 = 365.0;
/// Detection threshold, in sigma of the difference flux.
const DETECTION_SIGMA: f64 = 5.0;
/// Pixel scale, arcseconds, and detector size in pixels (LSSTCam: 4k x 4k CCDs).
const PIXEL_ARCSEC: f64 = 0.2;
const DETECTOR_PIXELS: f64 = 4_000.0;

/// What night to make.
#[derive(Debug, Clone)]
pub struct NightSpec {
    /// The sky the night observes (the objects of `meridian generate`).
    pub survey: SurveySpec,
    /// Start of the night, MJD (TAI).
    pub night_mjd: f64,
    /// Visits in the night (at most 5,000).
    pub visits: u32,
    /// Distinct fields the visits cycle through (each visited `visits / fields` times, in
    /// changing bands).
    pub fields: u32,
    /// Radius of a field, degrees.
    pub field_radius_deg: f64,
    /// Fraction of the objects that vary.
    pub variable_fraction: f64,
    /// Earlier visits of each field (on earlier nights, about 3 days apart, within a year).
    pub history_visits: u32,
}

impl Default for NightSpec {
    fn default() -> Self {
        Self {
            survey: SurveySpec::default(),
            night_mjd: MJD_START + 400.0,
            visits: 100,
            fields: 20,
            field_radius_deg: RUBIN_FIELD_RADIUS_DEG,
            variable_fraction: 0.05,
            history_visits: 30,
        }
    }
}

/// How a variable object varies.
#[derive(Debug, Clone, Copy)]
pub enum Variability {
    /// A periodic star: magnitude `m + amplitude * sin(2 pi t / period + phase)`.
    Periodic {
        period_days: f64,
        amplitude_mag: f64,
        phase_rad: f64,
    },
    /// A transient on top of the object: peak flux at `peak_mjd`, exponential rise and
    /// decline.
    Transient {
        peak_mjd: f64,
        peak_mag: f64,
        rise_days: f64,
        decline_days: f64,
    },
}

/// A variable object of the night.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// The object (its Object row).
    pub object: SkyObject,
    /// How it varies.
    pub variability: Variability,
}

impl Variable {
    /// Flux above the template (the object's mean), nanojansky, at `mjd` in `band`.
    pub fn difference_flux_njy(&self, mjd: f64, band: usize) -> f64 {
        let m = self.object.mags[band];
        match self.variability {
            Variability::Periodic {
                period_days,
                amplitude_mag,
                phase_rad,
            } => {
                let arg = std::f64::consts::TAU * mjd / period_days + phase_rad;
                mag_to_njy(m + amplitude_mag * arg.sin()) - mag_to_njy(m)
            }
            Variability::Transient {
                peak_mjd,
                peak_mag,
                rise_days,
                decline_days,
            } => {
                let dt = mjd - peak_mjd;
                let shape = if dt < 0.0 {
                    (dt / rise_days).exp()
                } else {
                    (-dt / decline_days).exp()
                };
                // A little bluer than the object at peak: g - r of -0.1 per band step.
                mag_to_njy(peak_mag + 0.1 * (band as f64 - 2.0)) * shape
            }
        }
    }
}

/// One visit: when, in which band, where.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    /// Visit number (unique across nights).
    pub visit: i64,
    /// Exposure midpoint, MJD (TAI).
    pub mjd: f64,
    /// Band index into [`BANDS`].
    pub band: usize,
    /// Field index.
    pub field: usize,
}

impl Visit {
    /// The band's name.
    pub fn band_name(&self) -> &'static str {
        BANDS[self.band]
    }
}

/// A measurement of a variable in a visit: its difference-image photometry at the
/// object's position (forced) or where it was detected.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub visit: Visit,
    /// Detector of the visit it fell on, and its pixel position there.
    pub detector: i32,
    pub x: f32,
    pub y: f32,
    /// Position, degrees (the detection's centroid, or the object's for forced
    /// photometry).
    pub ra_deg: f64,
    pub dec_deg: f64,
    /// Centroid uncertainty, degrees.
    pub pos_err_deg: f64,
    /// Difference flux and its uncertainty, nanojansky.
    pub psf_flux_njy: f64,
    pub psf_flux_err_njy: f64,
    /// The template's flux (the object's mean), nanojansky.
    pub template_flux_njy: f64,
    /// Whether it reaches the detection threshold.
    pub detected: bool,
}

impl Measurement {
    /// Identifier of this measurement (as a DiaSource or a DiaForcedSource): the visit in
    /// the high bits, the object in the low 32.
    pub fn id(&self, object: &SkyObject) -> i64 {
        (self.visit.visit << 32) | (object.id & 0xffff_ffff)
    }
}

/// One alert: a detection in a visit of the night, with the object's history.
#[derive(Debug, Clone)]
pub struct Alert {
    pub variable: Variable,
    /// The detection that raised the alert.
    pub source: Measurement,
    /// Earlier detections (within a year), oldest first.
    pub previous_sources: Vec<Measurement>,
    /// Forced photometry at every earlier visit of its fields (within a year), oldest
    /// first.
    pub previous_forced: Vec<Measurement>,
}

/// The night: its fields, visits and the variables each field holds.
pub struct Night {
    spec: NightSpec,
    centres: Vec<(f64, f64)>,
    /// Variables and, for each, the fields containing it.
    variables: Vec<(Variable, Vec<usize>)>,
    /// For each field, indices into `variables`.
    in_field: Vec<Vec<usize>>,
    /// Every visit of each field (its earlier ones, then the night's), oldest first.
    field_visits: Vec<Vec<Visit>>,
}

impl NightSpec {
    /// Refuses a night that cannot be made, saying which setting is out of range.
    pub fn check(&self) -> crate::Result<()> {
        check(self)
    }
}

/// Errors of the night's description.
fn check(spec: &NightSpec) -> crate::Result<()> {
    let bad = |m: String| Err(crate::Error::Invalid(m));
    if spec.visits == 0 || spec.visits as i64 > HISTORY_BASE {
        return bad(format!(
            "visits must be 1 to {HISTORY_BASE}, not {}",
            spec.visits
        ));
    }
    if spec.fields == 0 || spec.fields > spec.visits || spec.fields as i64 >= HISTORY_BASE {
        return bad(format!(
            "fields must be 1 to the number of visits ({}), not {}",
            spec.visits, spec.fields
        ));
    }
    if !(spec.field_radius_deg > 0.0 && spec.field_radius_deg <= 30.0) {
        return bad(format!(
            "field radius must be in (0, 30] degrees, not {}",
            spec.field_radius_deg
        ));
    }
    if spec.history_visits > 120 {
        return bad(format!(
            "at most 120 earlier visits of a field (3 days apart within a year), not {}",
            spec.history_visits
        ));
    }
    if !(0.0..=1.0).contains(&spec.variable_fraction) {
        return bad(format!(
            "the variable fraction must be in [0, 1], not {}",
            spec.variable_fraction
        ));
    }
    if !(MJD_START..=MJD_START + 36_500.0).contains(&spec.night_mjd) {
        return bad(format!(
            "the night must start after the survey's start (MJD {MJD_START}), not MJD {}",
            spec.night_mjd
        ));
    }
    Ok(())
}

fn unit(ra: f64, dec: f64) -> [f64; 3] {
    let (a, d) = (ra.to_radians(), dec.to_radians());
    [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()]
}

fn night_number(mjd: f64) -> i64 {
    (mjd - MJD_START).floor() as i64
}

impl Night {
    /// Plans the night of `spec`: picks the variables among the survey's objects and the
    /// fields (centred on objects picked at random, so fields follow the survey's density),
    /// and lists each field's earlier visits.
    pub fn plan(spec: &NightSpec) -> crate::Result<Night> {
        check(spec)?;
        let seed = spec.survey.seed;
        let objects = crate::objects(&spec.survey);
        let mut rng = chunk_rng(seed, 5, 0);
        let centres: Vec<(f64, f64)> = (0..spec.fields)
            .map(|_| {
                let o = &objects[rng.random_range(0..objects.len())];
                (o.ra_deg, o.dec_deg)
            })
            .collect();
        let axes: Vec<[f64; 3]> = centres.iter().map(|c| unit(c.0, c.1)).collect();
        let min_cos = spec.field_radius_deg.to_radians().cos();
        let variables: Vec<(Variable, Vec<usize>)> = objects
            .par_iter()
            .filter_map(|o| {
                let mut r = chunk_rng(seed, 6, o.id as u64);
                if r.random::<f64>() >= spec.variable_fraction {
                    return None;
                }
                let p = unit(o.ra_deg, o.dec_deg);
                let fields: Vec<usize> = axes
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a[0] * p[0] + a[1] * p[1] + a[2] * p[2] >= min_cos)
                    .map(|(i, _)| i)
                    .collect();
                if fields.is_empty() {
                    return None;
                }
                Some((
                    Variable {
                        object: *o,
                        variability: variability(seed, o, spec.night_mjd),
                    },
                    fields,
                ))
            })
            .collect();
        let mut in_field = vec![Vec::new(); centres.len()];
        for (i, (_, fields)) in variables.iter().enumerate() {
            for f in fields {
                in_field[*f].push(i);
            }
        }
        let tonight = night_visits(spec);
        let field_visits = (0..centres.len())
            .map(|f| {
                let mut v = field_history(seed, f, spec);
                v.extend(tonight.iter().filter(|v| v.field == f));
                v
            })
            .collect();
        Ok(Night {
            spec: spec.clone(),
            centres,
            variables,
            in_field,
            field_visits,
        })
    }

    /// The night's visits, in time order.
    pub fn visits(&self) -> Vec<Visit> {
        night_visits(&self.spec)
    }

    /// Variables the night can see (in at least one field).
    pub fn variables(&self) -> usize {
        self.variables.len()
    }

    /// The alerts of visit `visit` (one of [`Night::visits`]), in object order.
    pub fn alerts(&self, visit: &Visit) -> Vec<Alert> {
        self.in_field[visit.field]
            .iter()
            .filter_map(|&i| {
                let (var, fields) = &self.variables[i];
                let source = self.measure(var, visit, false);
                if !source.detected {
                    return None;
                }
                // Every earlier visit of the object's fields within a year, oldest first.
                let mut earlier: Vec<Visit> = fields
                    .iter()
                    .flat_map(|f| &self.field_visits[*f])
                    .filter(|v| v.mjd < visit.mjd && v.mjd >= visit.mjd - HISTORY_DAYS)
                    .copied()
                    .collect();
                earlier.sort_by(|a, b| a.mjd.total_cmp(&b.mjd).then(a.visit.cmp(&b.visit)));
                let previous_sources = earlier
                    .iter()
                    .map(|v| self.measure(var, v, false))
                    .filter(|m| m.detected)
                    .collect();
                let previous_forced = earlier.iter().map(|v| self.measure(var, v, true)).collect();
                Some(Alert {
                    variable: *var,
                    source,
                    previous_sources,
                    previous_forced,
                })
            })
            .collect()
    }

    /// The photometry of `var` in `visit`: forced at the object's position, or centroided
    /// (20 mas scatter) where detected. Its noise is drawn from (seed, object, visit) alone.
    fn measure(&self, var: &Variable, visit: &Visit, forced: bool) -> Measurement {
        let o = &var.object;
        let mut rng = chunk_rng(self.spec.survey.seed, 16 + visit.visit as u64, o.id as u64);
        let unit_normal = Normal::new(0.0, 1.0).expect("valid normal");
        let sigma = mag_to_njy(VISIT_DEPTH_MAG[visit.band]) / DETECTION_SIGMA;
        let flux =
            var.difference_flux_njy(visit.mjd, visit.band) + sigma * unit_normal.sample(&mut rng);
        let detected = flux.abs() >= DETECTION_SIGMA * sigma;
        // Centroid scatter: 20 mas at the threshold, less for brighter detections.
        let pos_err_deg =
            0.02 / 3600.0 * (DETECTION_SIGMA * sigma / flux.abs().max(sigma)).min(1.0);
        let (dra, ddec) = (unit_normal.sample(&mut rng), unit_normal.sample(&mut rng));
        let (ra, dec) = if forced {
            (o.ra_deg, o.dec_deg)
        } else {
            let dec = (o.dec_deg + pos_err_deg * ddec).clamp(-90.0, 90.0);
            let ra = (o.ra_deg + pos_err_deg * dra / o.dec_deg.to_radians().cos().max(1e-6))
                .rem_euclid(360.0);
            (ra, dec)
        };
        let (detector, x, y) = self.place(visit.field, ra, dec);
        Measurement {
            visit: *visit,
            detector,
            x,
            y,
            ra_deg: ra,
            dec_deg: dec,
            pos_err_deg,
            psf_flux_njy: flux,
            psf_flux_err_njy: sigma,
            template_flux_njy: mag_to_njy(o.mags[visit.band]),
            detected,
        }
    }

    /// Detector and pixel position of (ra, dec) in field `field`: the focal plane as a
    /// square grid of 4k x 4k detectors of 0.2" pixels on the tangent plane.
    fn place(&self, field: usize, ra: f64, dec: f64) -> (i32, f32, f32) {
        let (ra0, dec0) = self.centres[field];
        let (a, d, a0, d0) = (
            ra.to_radians(),
            dec.to_radians(),
            ra0.to_radians(),
            dec0.to_radians(),
        );
        let cos_c = d0.sin() * d.sin() + d0.cos() * d.cos() * (a - a0).cos();
        let xi = (d.cos() * (a - a0).sin() / cos_c).to_degrees();
        let eta = ((d0.cos() * d.sin() - d0.sin() * d.cos() * (a - a0).cos()) / cos_c).to_degrees();
        let size_deg = DETECTOR_PIXELS * PIXEL_ARCSEC / 3600.0;
        let r = self.spec.field_radius_deg;
        let per_row = (2.0 * r / size_deg).ceil().max(1.0) as i32;
        let (u, v) = ((xi + r) / size_deg, (eta + r) / size_deg);
        let (col, row) = (
            (u.floor() as i32).clamp(0, per_row - 1),
            (v.floor() as i32).clamp(0, per_row - 1),
        );
        let px = |t: f64, cell: i32| {
            ((t - cell as f64) * DETECTOR_PIXELS).clamp(0.0, DETECTOR_PIXELS - 1.0) as f32
        };
        (row * per_row + col, px(u, col), px(v, row))
    }
}

/// The visits of the night of `spec`, in time order.
fn night_visits(spec: &NightSpec) -> Vec<Visit> {
    let night = night_number(spec.night_mjd);
    let fields = spec.fields as usize;
    (0..spec.visits as usize)
        .map(|v| {
            let (field, pass) = (v % fields, v / fields);
            Visit {
                visit: night * VISITS_PER_NIGHT + v as i64,
                mjd: spec.night_mjd + v as f64 * VISIT_CADENCE_S / 86_400.0,
                // Revisits of a field change band (g, r, i, z, u, y, ...), as Rubin's
                // pairs do.
                band: [1, 2, 3, 4, 0, 5][(field + pass) % 6],
                field,
            }
        })
        .collect()
}

/// How object `o` varies (drawn from (seed, object) alone): stars mostly periodic, a
/// fifth of them (and every galaxy) hosting a transient peaking within a month before or
/// a day after the night.
fn variability(seed: u64, o: &SkyObject, night_mjd: f64) -> Variability {
    let mut r = chunk_rng(seed, 7, o.id as u64);
    if !o.is_galaxy && r.random::<f64>() < 0.8 {
        Variability::Periodic {
            period_days: 10f64.powf(r.random_range(-1.0..1.5)),
            amplitude_mag: r.random_range(0.2..1.2),
            phase_rad: r.random_range(0.0..std::f64::consts::TAU),
        }
    } else {
        Variability::Transient {
            peak_mjd: night_mjd + r.random_range(-30.0..1.0),
            peak_mag: r.random_range(17.5..22.5),
            rise_days: r.random_range(2.0..8.0),
            decline_days: r.random_range(10.0..40.0),
        }
    }
}

/// The earlier visits of field `f`: about 3 days apart (never more than a year back),
/// oldest first, bands drawn from (seed, field).
fn field_history(seed: u64, f: usize, spec: &NightSpec) -> Vec<Visit> {
    let mut r = chunk_rng(seed, 9, f as u64);
    let n = spec.history_visits as usize;
    let gap = (HISTORY_DAYS / (n.max(1) as f64 + 1.0)).min(3.0);
    let mut out: Vec<Visit> = (1..=n)
        .map(|k| {
            let mjd = spec.night_mjd - k as f64 * gap + r.random_range(-0.3..0.0);
            Visit {
                visit: night_number(mjd) * VISITS_PER_NIGHT + HISTORY_BASE + f as i64,
                mjd,
                band: r.random_range(0..6),
                field: f,
            }
        })
        .filter(|v| v.mjd >= MJD_START)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NightSpec {
        NightSpec {
            survey: SurveySpec {
                objects: 50_000,
                ..Default::default()
            },
            visits: 12,
            fields: 3,
            field_radius_deg: 8.0,
            variable_fraction: 0.5,
            history_visits: 10,
            ..Default::default()
        }
    }

    #[test]
    fn alerts_are_detections_with_a_consistent_history() {
        let night = Night::plan(&spec()).unwrap();
        assert!(night.variables() > 100, "{}", night.variables());
        let visits = night.visits();
        let alerts: Vec<Alert> = visits.iter().flat_map(|v| night.alerts(v)).collect();
        assert!(alerts.len() > 20, "{}", alerts.len());
        let mut seen = std::collections::HashMap::new();
        for a in &alerts {
            assert!(a.source.detected);
            assert!(a.source.psf_flux_njy.abs() >= 5.0 * a.source.psf_flux_err_njy);
            for m in &a.previous_sources {
                assert!(m.detected && m.visit.mjd < a.source.visit.mjd);
                // The same detection, in every alert that carries it.
                let id = m.id(&a.variable.object);
                let f = *seen.entry(id).or_insert(m.psf_flux_njy);
                assert_eq!(f, m.psf_flux_njy);
            }
            assert!(a.previous_forced.len() >= a.previous_sources.len());
            assert!(
                a.previous_forced
                    .windows(2)
                    .all(|w| w[0].visit.mjd <= w[1].visit.mjd)
            );
        }
        // Reproducible from the seed.
        let again = Night::plan(&spec()).unwrap();
        let b: Vec<Alert> = visits.iter().flat_map(|v| again.alerts(v)).collect();
        assert_eq!(alerts.len(), b.len());
        assert!(
            alerts
                .iter()
                .zip(&b)
                .all(|(x, y)| x.source.psf_flux_njy == y.source.psf_flux_njy)
        );
    }

    #[test]
    fn bad_nights_are_refused() {
        for s in [
            NightSpec {
                visits: 0,
                ..spec()
            },
            NightSpec {
                fields: 20,
                ..spec()
            },
            NightSpec {
                field_radius_deg: -1.0,
                ..spec()
            },
            NightSpec {
                variable_fraction: 2.0,
                ..spec()
            },
            NightSpec {
                night_mjd: 0.0,
                ..spec()
            },
        ] {
            assert!(Night::plan(&s).is_err());
        }
    }
}
