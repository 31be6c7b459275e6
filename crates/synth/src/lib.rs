//! Synthetic survey catalogs in the spirit of the LSST DESC data challenges: an Object table
//! (ugrizy magnitudes and errors, shapes, extendedness; stars concentrated towards the
//! Galactic plane, galaxies isotropic) and Source / ForcedSource tables (many epochs with MJD
//! and fluxes). Output is reproducible from a seed: chunk `k` of a table is generated from
//! its own generator seeded with (seed, table, k), so chunks are made in parallel and any
//! chunk can be regenerated alone.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

/// Errors while writing synthetic tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error("{0}")]
    Encode(String),
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// CSV with a header line.
    Csv,
    /// Parquet (snappy).
    Parquet,
}

/// Which columns the Object table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The full Object table (29 columns).
    Full,
    /// Ten columns: objectId, ra, dec, g/r/i magnitudes and errors, extendedness
    /// (the ingest benchmark's input).
    Narrow,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SurveySpec {
    /// Number of objects.
    pub objects: u64,
    /// Seed.
    pub seed: u64,
    /// Object table columns.
    pub profile: Profile,
    /// Detections per object in Source (on average; 0 for no Source table).
    pub source_epochs: u32,
    /// Forced measurements per object in ForcedSource (0 for no ForcedSource table).
    pub forced_epochs: u32,
    /// Objects per generated chunk (and per output file part).
    pub chunk_objects: u64,
    /// Gaussian scatter of Object positions per axis, milliarcseconds (0: none). The same
    /// seed with a scatter gives a second epoch of the same sky: cross-match test data.
    pub position_jitter_mas: f64,
    /// A survey footprint: objects spread uniformly over this cap of the sky instead of
    /// over the whole sky (a deep survey's density from fewer objects).
    pub footprint: Option<Footprint>,
}

/// A cap of the sky holding a survey's objects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Centre, right ascension in degrees.
    pub ra_deg: f64,
    /// Centre, declination in degrees.
    pub dec_deg: f64,
    /// Radius in degrees (0 to 180).
    pub radius_deg: f64,
}

impl Footprint {
    /// A cap, checked: a finite centre on the sphere and a radius in (0, 180].
    pub fn new(ra_deg: f64, dec_deg: f64, radius_deg: f64) -> Result<Self> {
        if !(ra_deg.is_finite() && (-90.0..=90.0).contains(&dec_deg)) {
            return Err(Error::Invalid(format!(
                "footprint centre ({ra_deg}, {dec_deg}) is not a position in degrees"
            )));
        }
        if !(radius_deg > 0.0 && radius_deg <= 180.0) {
            return Err(Error::Invalid(format!(
                "footprint radius {radius_deg} is not in (0, 180] degrees"
            )));
        }
        Ok(Self {
            ra_deg: ra_deg.rem_euclid(360.0),
            dec_deg,
            radius_deg,
        })
    }

    /// Area in square degrees.
    pub fn area_deg2(&self) -> f64 {
        let sr = 2.0 * std::f64::consts::PI * (1.0 - self.radius_deg.to_radians().cos());
        sr * (180.0 / std::f64::consts::PI).powi(2)
    }

    /// A position uniform over the cap, from two uniform numbers in [0, 1).
    fn sample(&self, u: f64, v: f64) -> (f64, f64) {
        // Around the pole: cos(theta) uniform in [cos r, 1], then rotated to the centre.
        let cos_r = self.radius_deg.to_radians().cos();
        let z = 1.0 - u * (1.0 - cos_r);
        let s = (1.0 - z * z).max(0.0).sqrt();
        let phi = v * 2.0 * std::f64::consts::PI;
        let (x, y) = (s * phi.cos(), s * phi.sin());
        // Rotate the pole (0, 0, 1) to (ra0, dec0): about y by (90 - dec0), then about z by ra0.
        let (sd, cd) = self.dec_deg.to_radians().sin_cos();
        let (sa, ca) = self.ra_deg.to_radians().sin_cos();
        let x1 = x * sd + z * cd;
        let z1 = -x * cd + z * sd;
        let (x2, y2) = (x1 * ca - y * sa, x1 * sa + y * ca);
        let ra = y2.atan2(x2).to_degrees().rem_euclid(360.0);
        let dec = z1.clamp(-1.0, 1.0).asin().to_degrees();
        // rem_euclid can round up to 360.0 itself.
        (if ra >= 360.0 { 0.0 } else { ra }, dec)
    }
}

impl Default for SurveySpec {
    fn default() -> Self {
        Self {
            objects: 10_000,
            seed: 42,
            profile: Profile::Full,
            source_epochs: 0,
            forced_epochs: 0,
            chunk_objects: 1_000_000,
            position_jitter_mas: 0.0,
            footprint: None,
        }
    }
}

pub mod night;

/// The survey's filter bands, in order.
pub const BANDS: [&str; 6] = ["u", "g", "r", "i", "z", "y"];
/// 5-sigma point-source depths (LSST 10-year coadd, approximate), magnitudes.
const DEPTH_MAG: [f64; 6] = [25.6, 26.9, 26.9, 26.4, 25.6, 24.8];
/// Single-visit 5-sigma point-source depths, magnitudes.
pub const VISIT_DEPTH_MAG: [f64; 6] = [23.8, 24.5, 24.0, 23.4, 22.8, 22.0];
/// Survey start, MJD (2025-10-01).
pub const MJD_START: f64 = 60_949.0;

/// Galactic (l, b) in degrees to ICRS (ra, dec) in degrees (IAU 1958 pole, J2000 values).
pub fn galactic_to_icrs_deg(l_deg: f64, b_deg: f64) -> (f64, f64) {
    // Rows of the ICRS-to-Galactic rotation matrix (Hipparcos, ESA 1997 vol. 1 sec. 1.5.3).
    const R: [[f64; 3]; 3] = [
        [-0.054_875_560_4, -0.873_437_090_2, -0.483_835_015_5],
        [0.494_109_427_9, -0.444_829_630_0, 0.746_982_244_5],
        [-0.867_666_149_0, -0.198_076_373_4, 0.455_983_776_2],
    ];
    let (sl, cl) = l_deg.to_radians().sin_cos();
    let (sb, cb) = b_deg.to_radians().sin_cos();
    let g = [cb * cl, cb * sl, sb];
    // Transpose: ICRS = R^T g.
    let x = R[0][0] * g[0] + R[1][0] * g[1] + R[2][0] * g[2];
    let y = R[0][1] * g[0] + R[1][1] * g[1] + R[2][1] * g[2];
    let z = R[0][2] * g[0] + R[1][2] * g[1] + R[2][2] * g[2];
    let p = meridian_sky::SkyPoint::from_vector([x, y, z]);
    (p.ra_deg(), p.dec_deg())
}

/// The generator of part `chunk` of table `table` of the survey seeded `seed`.
pub(crate) fn chunk_rng(seed: u64, table: u64, chunk: u64) -> ChaCha8Rng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&table.to_le_bytes());
    s[16..24].copy_from_slice(&chunk.to_le_bytes());
    ChaCha8Rng::from_seed(s)
}

fn mag_err(mag: f64, depth: f64) -> f64 {
    // SNR = 5 at the depth; sigma_m ~ 1.0857 / SNR, plus a 0.005 mag systematic floor.
    let snr = 5.0 * 10f64.powf(-0.4 * (mag - depth));
    (0.005f64.powi(2) + (1.0857 / snr).powi(2)).sqrt()
}

/// AB magnitude to flux in nanojansky.
pub fn mag_to_njy(mag: f64) -> f64 {
    10f64.powf(-0.4 * (mag - 31.4))
}

/// One generated object (the Source and ForcedSource tables derive from it).
#[derive(Debug, Clone)]
struct Obj {
    id: i64,
    ra: f64,
    dec: f64,
    mags: [f64; 6],
    is_galaxy: bool,
    shape: (f64, f64, f64),
}

fn gen_objects(spec: &SurveySpec, chunk: u64) -> Vec<Obj> {
    let first = chunk * spec.chunk_objects;
    let n = spec.chunk_objects.min(spec.objects - first);
    let mut rng = chunk_rng(spec.seed, 1, chunk);
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    (0..n)
        .map(|k| {
            // Roughly 30% stars over the whole sky, concentrated towards the Galactic plane
            // (exponential in |b| with a 12-degree scale); galaxies isotropic.
            let is_galaxy = rng.random::<f64>() < 0.7;
            let (ra, dec) = if let Some(f) = &spec.footprint {
                f.sample(rng.random(), rng.random())
            } else if is_galaxy {
                let ra = rng.random::<f64>() * 360.0;
                let dec = (rng.random::<f64>() * 2.0 - 1.0).asin().to_degrees();
                (ra, dec)
            } else {
                let l = rng.random::<f64>() * 360.0;
                let b_abs = (-12.0
                    * (1.0 - rng.random::<f64>() * (1.0 - (-90.0f64 / 12.0).exp())).ln())
                .min(90.0);
                let b = if rng.random::<bool>() { b_abs } else { -b_abs };
                galactic_to_icrs_deg(l, b)
            };
            // r-band magnitude from steep number counts (galaxies) or flatter (stars).
            let slope = if is_galaxy { 0.45 } else { 0.25 };
            let (m_lo, m_hi) = if is_galaxy {
                (17.0, 27.5)
            } else {
                (14.0, 27.0)
            };
            let u: f64 = rng.random();
            let a = 10f64.powf(slope * m_lo);
            let b = 10f64.powf(slope * m_hi);
            let r = (a + u * (b - a)).log10() / slope;
            // Colours: a stellar locus parametrised by g-r, or galaxies redder with scatter.
            let gr = if is_galaxy {
                0.5 + 0.35 * unit.sample(&mut rng)
            } else {
                0.2 + 0.5 * rng.random::<f64>().powi(2) * 2.0
            };
            let colors = [1.8 * gr + 0.3, gr, 0.0, -0.45 * gr, -0.7 * gr, -0.85 * gr];
            let mut mags = [0.0; 6];
            for (i, c) in colors.iter().enumerate() {
                mags[i] = r + c + 0.03 * unit.sample(&mut rng);
            }
            let shape = if is_galaxy {
                let size = 0.3 + 0.8 * rng.random::<f64>();
                let e = 0.6 * rng.random::<f64>();
                let pa = rng.random::<f64>() * std::f64::consts::PI;
                let (s2, c2) = (2.0 * pa).sin_cos();
                (
                    size * size * (1.0 + e * c2),
                    size * size * (1.0 - e * c2),
                    size * size * e * s2,
                )
            } else {
                let psf = 0.35;
                (psf * psf, psf * psf, 0.0)
            };
            Obj {
                id: (first + k + 1) as i64,
                ra,
                dec,
                mags,
                is_galaxy,
                shape,
            }
        })
        .collect()
}

fn field(
    name: &str,
    t: DataType,
    nullable: bool,
    unit: Option<&str>,
    ucd: &str,
    desc: &str,
) -> Field {
    let mut m = std::collections::HashMap::new();
    if let Some(u) = unit {
        m.insert("unit".to_string(), u.to_string());
    }
    m.insert("ucd".to_string(), ucd.to_string());
    m.insert("description".to_string(), desc.to_string());
    Field::new(name, t, nullable).with_metadata(m)
}

/// The ICRS position columns every table has.
fn position_fields() -> [Field; 2] {
    [
        field(
            "ra",
            DataType::Float64,
            false,
            Some("deg"),
            "pos.eq.ra;meta.main",
            "Right ascension (ICRS)",
        ),
        field(
            "dec",
            DataType::Float64,
            false,
            Some("deg"),
            "pos.eq.dec;meta.main",
            "Declination (ICRS)",
        ),
    ]
}

/// Schema of the Object table for a profile.
pub fn object_schema(profile: Profile) -> SchemaRef {
    let mut f = vec![field(
        "objectId",
        DataType::Int64,
        false,
        None,
        "meta.id;meta.main",
        "Unique object identifier",
    )];
    f.extend(position_fields());
    let bands: Vec<usize> = match profile {
        Profile::Full => (0..6).collect(),
        Profile::Narrow => vec![1, 2, 3],
    };
    for &b in &bands {
        f.push(field(
            &format!("{}_mag", BANDS[b]),
            DataType::Float32,
            true,
            Some("mag"),
            &format!("phot.mag;em.opt.{}", BANDS[b].to_uppercase()),
            &format!("{}-band AB magnitude", BANDS[b]),
        ));
    }
    for &b in &bands {
        f.push(field(
            &format!("{}_magErr", BANDS[b]),
            DataType::Float32,
            true,
            Some("mag"),
            "stat.error;phot.mag",
            &format!("Uncertainty of {}_mag", BANDS[b]),
        ));
    }
    if profile == Profile::Full {
        f.push(field(
            "shape_xx",
            DataType::Float32,
            true,
            Some("arcsec2"),
            "phys.size.axisRatio",
            "Second moment xx",
        ));
        f.push(field(
            "shape_yy",
            DataType::Float32,
            true,
            Some("arcsec2"),
            "phys.size.axisRatio",
            "Second moment yy",
        ));
        f.push(field(
            "shape_xy",
            DataType::Float32,
            true,
            Some("arcsec2"),
            "phys.size.axisRatio",
            "Second moment xy",
        ));
    }
    f.push(field(
        "extendedness",
        DataType::Float32,
        true,
        None,
        "src.class.starGalaxy",
        "0 for point sources, 1 for extended",
    ));
    if profile == Profile::Full {
        f.push(field(
            "class",
            DataType::Utf8,
            false,
            None,
            "src.class",
            "True class: star or galaxy",
        ));
        f.push(field(
            "nEpochs",
            DataType::Int64,
            false,
            None,
            "meta.number",
            "Number of Source detections",
        ));
    }
    Arc::new(Schema::new(f))
}

fn epochs_for(obj: &Obj, mean: u32) -> u32 {
    if mean == 0 {
        return 0;
    }
    // Brighter objects are detected in more visits.
    let frac = ((24.5 - obj.mags[2]) / 4.0).clamp(0.1, 1.0);
    ((mean as f64) * frac).round().max(1.0) as u32
}

/// Moves each position by an independent Gaussian offset of `sigma_mas` per axis (drawn
/// from its own stream, so every other column is unchanged), along the local east and north
/// directions on the sphere.
fn jitter(spec: &SurveySpec, objs: &mut [Obj], chunk: u64) {
    if spec.position_jitter_mas <= 0.0 {
        return;
    }
    let mut rng = chunk_rng(spec.seed, 4, chunk);
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    let sigma = (spec.position_jitter_mas / 3.6e6).to_radians();
    for o in objs {
        let (a, d) = (o.ra.to_radians(), o.dec.to_radians());
        let (e, n) = (sigma * unit.sample(&mut rng), sigma * unit.sample(&mut rng));
        let p = [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()];
        let east = [-a.sin(), a.cos(), 0.0];
        let north = [-d.sin() * a.cos(), -d.sin() * a.sin(), d.cos()];
        let v: Vec<f64> = (0..3).map(|i| p[i] + e * east[i] + n * north[i]).collect();
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        o.ra = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0) % 360.0;
        o.dec = (v[2] / norm).clamp(-1.0, 1.0).asin().to_degrees();
    }
}

fn object_batch(spec: &SurveySpec, objs: &[Obj]) -> RecordBatch {
    let schema = object_schema(spec.profile);
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(objs.iter().map(|o| o.id))),
        Arc::new(Float64Array::from_iter_values(objs.iter().map(|o| o.ra))),
        Arc::new(Float64Array::from_iter_values(objs.iter().map(|o| o.dec))),
    ];
    let bands: Vec<usize> = match spec.profile {
        Profile::Full => (0..6).collect(),
        Profile::Narrow => vec![1, 2, 3],
    };
    // Objects fainter than 1 mag past the depth are not measured in that band: null.
    for &b in &bands {
        cols.push(Arc::new(
            objs.iter()
                .map(|o| (o.mags[b] < DEPTH_MAG[b] + 1.0).then_some(o.mags[b] as f32))
                .collect::<Float32Array>(),
        ));
    }
    for &b in &bands {
        cols.push(Arc::new(
            objs.iter()
                .map(|o| {
                    (o.mags[b] < DEPTH_MAG[b] + 1.0)
                        .then_some(mag_err(o.mags[b], DEPTH_MAG[b]) as f32)
                })
                .collect::<Float32Array>(),
        ));
    }
    if spec.profile == Profile::Full {
        cols.push(Arc::new(Float32Array::from_iter_values(
            objs.iter().map(|o| o.shape.0 as f32),
        )));
        cols.push(Arc::new(Float32Array::from_iter_values(
            objs.iter().map(|o| o.shape.1 as f32),
        )));
        cols.push(Arc::new(Float32Array::from_iter_values(
            objs.iter().map(|o| o.shape.2 as f32),
        )));
    }
    cols.push(Arc::new(Float32Array::from_iter_values(
        objs.iter().map(|o| if o.is_galaxy { 1.0 } else { 0.0 }),
    )));
    if spec.profile == Profile::Full {
        cols.push(Arc::new(StringArray::from_iter_values(
            objs.iter()
                .map(|o| if o.is_galaxy { "galaxy" } else { "star" }),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            objs.iter()
                .map(|o| epochs_for(o, spec.source_epochs) as i64),
        )));
    }
    RecordBatch::try_new(schema, cols).expect("columns match the schema")
}

/// Schema of the Source and ForcedSource tables.
pub fn source_schema(forced: bool) -> SchemaRef {
    let id = if forced { "forcedSourceId" } else { "sourceId" };
    let mut fields = vec![
        field(
            id,
            DataType::Int64,
            false,
            None,
            "meta.id;meta.main",
            "Unique measurement identifier",
        ),
        field(
            "objectId",
            DataType::Int64,
            false,
            None,
            "meta.id",
            "Object measured",
        ),
    ];
    fields.extend(position_fields());
    fields.extend([
        field(
            "band",
            DataType::Utf8,
            false,
            None,
            "meta.id;instr.filter",
            "Filter band",
        ),
        field(
            "midpointMjdTai",
            DataType::Float64,
            false,
            Some("d"),
            "time.epoch",
            "Exposure midpoint, MJD (TAI)",
        ),
        field(
            "psfFlux",
            DataType::Float64,
            false,
            Some("nJy"),
            "phot.flux.density",
            "PSF flux",
        ),
        field(
            "psfFluxErr",
            DataType::Float64,
            false,
            Some("nJy"),
            "stat.error;phot.flux.density",
            "PSF flux uncertainty",
        ),
    ]);
    Arc::new(Schema::new(fields))
}

fn source_batch(spec: &SurveySpec, objs: &[Obj], chunk: u64, forced: bool) -> RecordBatch {
    let mut rng = chunk_rng(spec.seed, if forced { 3 } else { 2 }, chunk);
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    let mean = if forced {
        spec.forced_epochs
    } else {
        spec.source_epochs
    };
    let (mut id, mut oid, mut ra, mut dec, mut band, mut mjd, mut flux, mut err) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for o in objs {
        let n = if forced { mean } else { epochs_for(o, mean) };
        for e in 0..n {
            let b = rng.random_range(0..6usize);
            let truth = mag_to_njy(o.mags[b]);
            let sigma = mag_to_njy(VISIT_DEPTH_MAG[b]) / 5.0;
            // Astrometric scatter of 20 mas per detection; forced photometry sits on the object.
            let jitter = if forced { 0.0 } else { 0.02 / 3600.0 };
            let d = (o.dec + jitter * unit.sample(&mut rng)).clamp(-90.0, 90.0);
            let r = (o.ra + jitter * unit.sample(&mut rng) / o.dec.to_radians().cos().max(1e-3))
                .rem_euclid(360.0);
            id.push(o.id * 10_000 + e as i64);
            oid.push(o.id);
            ra.push(r);
            dec.push(d);
            band.push(BANDS[b]);
            mjd.push(MJD_START + rng.random::<f64>() * 3652.5);
            flux.push(truth + sigma * unit.sample(&mut rng));
            err.push(sigma);
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(id)),
        Arc::new(Int64Array::from(oid)),
        Arc::new(Float64Array::from(ra)),
        Arc::new(Float64Array::from(dec)),
        Arc::new(StringArray::from(band)),
        Arc::new(Float64Array::from(mjd)),
        Arc::new(Float64Array::from(flux)),
        Arc::new(Float64Array::from(err)),
    ];
    RecordBatch::try_new(source_schema(forced), cols).expect("columns match the schema")
}

/// One object of the survey as images see it: its Object row's id, position and
/// magnitudes in u, g, r, i, z, y.
#[derive(Debug, Clone, Copy)]
pub struct SkyObject {
    pub id: i64,
    pub ra_deg: f64,
    pub dec_deg: f64,
    pub mags: [f64; 6],
    /// A galaxy (otherwise a star).
    pub is_galaxy: bool,
}

/// Every object of `spec`, exactly as [`generate`] writes them to the Object table.
pub fn objects(spec: &SurveySpec) -> Vec<SkyObject> {
    let chunks = spec.objects.div_ceil(spec.chunk_objects.max(1));
    (0..chunks)
        .into_par_iter()
        .flat_map_iter(|chunk| {
            let mut objs = gen_objects(spec, chunk);
            jitter(spec, &mut objs, chunk);
            objs.into_iter().map(|o| SkyObject {
                id: o.id,
                ra_deg: o.ra,
                dec_deg: o.dec,
                mags: o.mags,
                is_galaxy: o.is_galaxy,
            })
        })
        .collect()
}

/// The tables of a generated survey: name and files.
#[derive(Debug, Clone)]
pub struct Generated {
    /// (table name, files, rows) for object, source, forced_source.
    pub tables: Vec<(String, Vec<PathBuf>, u64)>,
}

/// Generates the survey into `dir` (files `object-00000.parquet`, ...). `progress` receives
/// objects generated so far. Files are written under a temporary name and renamed when
/// complete.
pub fn generate(
    dir: &Path,
    spec: &SurveySpec,
    format: OutFormat,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Generated> {
    if spec.objects == 0 || spec.chunk_objects == 0 {
        return Err(Error::Invalid(
            "objects and chunk size must be positive".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let chunks = spec.objects.div_ceil(spec.chunk_objects);
    let done = AtomicU64::new(0);
    let ext = match format {
        OutFormat::Csv => "csv",
        OutFormat::Parquet => "parquet",
    };
    let results: Vec<[(PathBuf, u64); 3]> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut objs = gen_objects(spec, chunk);
            jitter(spec, &mut objs, chunk);
            let mut out: [(PathBuf, u64); 3] = Default::default();
            let tables: [(&str, Option<RecordBatch>); 3] = [
                ("object", Some(object_batch(spec, &objs))),
                (
                    "source",
                    (spec.source_epochs > 0).then(|| source_batch(spec, &objs, chunk, false)),
                ),
                (
                    "forced_source",
                    (spec.forced_epochs > 0).then(|| source_batch(spec, &objs, chunk, true)),
                ),
            ];
            for (i, (name, batch)) in tables.into_iter().enumerate() {
                if let Some(batch) = batch {
                    let path = dir.join(format!("{name}-{chunk:05}.{ext}"));
                    write_file(&path, &batch, format)?;
                    out[i] = (path, batch.num_rows() as u64);
                }
            }
            progress(done.fetch_add(objs.len() as u64, Ordering::Relaxed) + objs.len() as u64);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let mut tables = Vec::new();
    for (i, name) in ["object", "source", "forced_source"].iter().enumerate() {
        let files: Vec<(PathBuf, u64)> = results
            .iter()
            .map(|r| r[i].clone())
            .filter(|(p, _)| !p.as_os_str().is_empty())
            .collect();
        if !files.is_empty() {
            let rows = files.iter().map(|f| f.1).sum();
            tables.push((
                name.to_string(),
                files.into_iter().map(|f| f.0).collect(),
                rows,
            ));
        }
    }
    Ok(Generated { tables })
}

fn write_file(path: &Path, batch: &RecordBatch, format: OutFormat) -> Result<()> {
    let tmp = path.with_extension("partial");
    let io = |e: std::io::Error| Error::Io {
        path: tmp.clone(),
        source: e,
    };
    let file = File::create(&tmp).map_err(io)?;
    match format {
        OutFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                BufWriter::new(file),
                batch.schema(),
                Some(props),
            )
            .map_err(|e| Error::Encode(e.to_string()))?;
            for start in (0..batch.num_rows()).step_by(100_000) {
                w.write(&batch.slice(start, 100_000.min(batch.num_rows() - start)))
                    .map_err(|e| Error::Encode(e.to_string()))?;
            }
            w.close().map_err(|e| Error::Encode(e.to_string()))?;
        }
        OutFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(BufWriter::with_capacity(1 << 20, file));
            w.write(batch).map_err(|e| Error::Encode(e.to_string()))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_sized() {
        let spec = SurveySpec {
            objects: 2_500,
            chunk_objects: 1_000,
            source_epochs: 5,
            ..Default::default()
        };
        let a: Vec<Obj> = (0..3).flat_map(|c| gen_objects(&spec, c)).collect();
        let b: Vec<Obj> = (0..3).flat_map(|c| gen_objects(&spec, c)).collect();
        assert_eq!(a.len(), 2_500);
        assert_eq!(
            a.iter().map(|o| o.ra).collect::<Vec<_>>(),
            b.iter().map(|o| o.ra).collect::<Vec<_>>()
        );
        let galaxies = a.iter().filter(|o| o.is_galaxy).count() as f64 / a.len() as f64;
        assert!((0.65..0.75).contains(&galaxies), "{galaxies}");
        assert!(
            a.iter()
                .all(|o| (-90.0..=90.0).contains(&o.dec) && (0.0..360.0).contains(&o.ra))
        );
    }

    #[test]
    fn a_footprint_holds_every_object_uniformly() {
        let cap = Footprint::new(358.0, -30.0, 5.0).unwrap();
        let spec = SurveySpec {
            objects: 40_000,
            chunk_objects: 40_000,
            footprint: Some(cap),
            ..Default::default()
        };
        let objs = gen_objects(&spec, 0);
        // Separations by the haversine formula, independent of the sampling's rotation.
        let sep = |o: &Obj| {
            let (r1, d1, r2, d2) = (
                cap.ra_deg.to_radians(),
                cap.dec_deg.to_radians(),
                o.ra.to_radians(),
                o.dec.to_radians(),
            );
            let h = ((d2 - d1) / 2.0).sin().powi(2)
                + d1.cos() * d2.cos() * ((r2 - r1) / 2.0).sin().powi(2);
            2.0 * h.sqrt().asin().to_degrees()
        };
        let seps: Vec<f64> = objs.iter().map(sep).collect();
        assert!(
            seps.iter().all(|s| *s <= 5.0 + 1e-9),
            "an object outside the cap"
        );
        // Uniform over the cap: the inner cap of half the radius holds a quarter of the
        // objects (to small-angle accuracy), and the RA wrap at 0/360 is crossed.
        let inner = seps.iter().filter(|s| **s <= 2.5).count() as f64 / objs.len() as f64;
        assert!((0.24..0.26).contains(&inner), "{inner}");
        assert!(objs.iter().any(|o| o.ra < 5.0) && objs.iter().any(|o| o.ra > 345.0));
        assert!(objs.iter().all(|o| (0.0..360.0).contains(&o.ra)));
        assert!((cap.area_deg2() - 78.5).abs() < 0.2, "{}", cap.area_deg2());
        assert!(Footprint::new(0.0, 91.0, 1.0).is_err());
        assert!(Footprint::new(0.0, 0.0, 0.0).is_err());
    }

    #[test]
    fn jitter_moves_positions_by_the_requested_scatter() {
        let spec = SurveySpec {
            objects: 20_000,
            chunk_objects: 20_000,
            ..Default::default()
        };
        let moved = SurveySpec {
            position_jitter_mas: 200.0,
            ..spec.clone()
        };
        let a = gen_objects(&spec, 0);
        let mut b = gen_objects(&moved, 0);
        jitter(&moved, &mut b, 0);
        let seps: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| {
                assert_eq!((x.id, x.mags), (y.id, y.mags));
                let (p, q) = (unit(x.ra, x.dec), unit(y.ra, y.dec));
                let c =
                    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
                (2.0 * (c / 2.0).asin()).to_degrees() * 3.6e6
            })
            .collect();
        // The offset is Rayleigh-distributed: mean sigma * sqrt(pi / 2).
        let mean = seps.iter().sum::<f64>() / seps.len() as f64;
        assert!(
            (mean - 200.0 * (std::f64::consts::PI / 2.0).sqrt()).abs() < 5.0,
            "{mean}"
        );
        assert!(
            b.iter()
                .all(|o| (0.0..360.0).contains(&o.ra) && o.dec.abs() <= 90.0)
        );
    }

    fn unit(ra: f64, dec: f64) -> [f64; 3] {
        let (a, d) = (ra.to_radians(), dec.to_radians());
        [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()]
    }

    #[test]
    fn stars_crowd_the_galactic_plane() {
        // The Galactic centre and north pole in ICRS.
        let (ra, dec) = galactic_to_icrs_deg(0.0, 0.0);
        assert!(
            (ra - 266.405).abs() < 0.01 && (dec + 28.936).abs() < 0.01,
            "{ra} {dec}"
        );
        let (ra, dec) = galactic_to_icrs_deg(0.0, 90.0);
        assert!(
            (ra - 192.859).abs() < 0.01 && (dec - 27.128).abs() < 0.01,
            "{ra} {dec}"
        );
    }
}
