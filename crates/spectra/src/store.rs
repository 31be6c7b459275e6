//! Spectra stored column-wise, per dataset (a data release such as `DESI-EDR`).
//!
//! ```text
//! ROOT/NAME -> .versions/NAME.T      the current version (a symlink, swapped atomically)
//!   dataset.json                     the manifest: release, group, access, parts
//!   parts/P.arrow                    Arrow IPC file: sparcl_id, grid, flux, ivar, mask, model
//!   parts/P.grids.arrow              the part's distinct wavelength grids (List<Float64>)
//!   parts/P.core.parquet             the part's core fields, one row per spectrum
//!   catalog/core -> ...              the core fields of every part as a HATS catalog
//!                                    (sorted and partitioned on the sky), served over TAP
//! ```
//!
//! Arrays are memory-mapped and read without copying, so retrieving a spectrum costs a
//! lookup and a slice. Spectra sharing a wavelength grid (every DESI spectrum, every
//! synthetic one) store it once. A new `add` writes a new part beside the old ones
//! (hard-linked) in a staging directory, rebuilds the HATS catalog and only then swaps the
//! dataset's link: readers never see a half-written dataset.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, Float64Array, Float64Builder, Int32Array,
    Int32Builder, Int64Array, Int64Builder, ListArray, ListBuilder, RecordBatch, StringArray,
    StringBuilder, UInt32Builder,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef, UInt32Type};
use arrow::ipc::writer::FileWriter;
use meridian_formats::ColumnMeta;
use serde::{Deserialize, Serialize};

use crate::{Error, FLUX_UNIT, IVAR_UNIT, Result, Spectrum, WAVELENGTH_UNIT};

/// Rows per record batch of a part's array file.
const BATCH_ROWS: usize = 256;
const MANIFEST: &str = "dataset.json";
const VERSIONS: &str = ".versions";
const STAGING: &str = ".staging";
/// Name of the HATS catalog of core fields inside a dataset.
const CORE: &str = "core";

/// Checks a dataset name: a letter or digit, then letters, digits, `-`, `_` or `.`, at most
/// 64 characters (data releases are spelled `DESI-EDR`, `SDSS-DR16`).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid dataset name '{name}': use a letter or digit followed by letters, digits, \
             '-', '_' or '.' (at most 64 characters), as in DESI-EDR"
        )))
    }
}

/// The TAP table name (in schema `spectra`) of dataset `name`: lower case, `-` and `.` as
/// `_` (`DESI-EDR` is `spectra.desi_edr`).
pub fn table_name(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if t.starts_with(|c: char| c.is_ascii_digit()) {
        format!("dr_{t}")
    } else {
        t
    }
}

/// A user or group named in a dataset's access list, with the account database's id of it
/// when the list was made: a user or group made later under the same name is someone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Its name.
    pub name: String,
    /// Its id in the account database.
    pub id: i64,
}

/// Who may read a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Readable by everyone, anonymous callers included.
    pub public: bool,
    /// Groups whose members may read it when it is not public.
    #[serde(default)]
    pub groups: Vec<Principal>,
    /// Users who may read it when it is not public.
    #[serde(default)]
    pub users: Vec<Principal>,
}

/// One part: the spectra one `add` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartInfo {
    /// Part number (its file names).
    pub id: u32,
    /// Spectra in it.
    pub rows: u64,
    /// When it was written, ISO 8601.
    pub written: String,
}

/// A dataset's manifest (`dataset.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The data release, e.g. `DESI-EDR`: the dataset's name.
    pub data_release: String,
    /// Its group, e.g. `DESI`, `SDSS_BOSS`.
    pub datasetgroup: String,
    /// Who may read it.
    pub access: Access,
    /// A line saying what it is.
    #[serde(default)]
    pub description: String,
    /// Its parts, in order.
    pub parts: Vec<PartInfo>,
}

impl Manifest {
    /// Spectra in the dataset.
    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }
}

/// How a core field is constrained by SPARCL's `find`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constrain {
    /// `[min, max]`, inclusive.
    Range,
    /// One of a list of values.
    In,
    /// Not a constraint field.
    No,
}

/// Where a field lives (SPARCL's `storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A core field: a column of the core table.
    Core,
    /// An auxiliary field: also a column, not shared by every survey.
    Aux,
    /// A spectrum array.
    Spectrum,
}

impl Storage {
    /// SPARCL's one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Storage::Core => "C",
            Storage::Aux => "A",
            Storage::Spectrum => "S",
        }
    }
}

/// A field of the spectra service.
#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    /// Name, the same on the wire and in the core table.
    pub name: &'static str,
    /// Core, aux or spectrum.
    pub storage: Storage,
    /// In SPARCL's DEFAULT set.
    pub default: bool,
    /// In SPARCL's ALL set.
    pub all: bool,
    /// How `find` constrains it.
    pub constrain: Constrain,
    /// VOUnit, or "" when dimensionless.
    pub unit: &'static str,
    /// IVOA UCD.
    pub ucd: &'static str,
    /// Description.
    pub description: &'static str,
}

#[allow(clippy::too_many_arguments)] // a table row, read as one
const fn f(
    name: &'static str,
    storage: Storage,
    default: bool,
    all: bool,
    constrain: Constrain,
    unit: &'static str,
    ucd: &'static str,
    description: &'static str,
) -> FieldDef {
    FieldDef {
        name,
        storage,
        default,
        all,
        constrain,
        unit,
        ucd,
        description,
    }
}

use Constrain::{In, No, Range};
use Storage::{Aux, Core, Spectrum as Spec};

/// Every field, core columns first in the core table's order.
pub const FIELDS: &[FieldDef] = &[
    f(
        "sparcl_id",
        Core,
        true,
        true,
        In,
        "",
        "meta.id;meta.main",
        "SPARCL identifier of the spectrum (UUID)",
    ),
    f(
        "specid",
        Core,
        true,
        true,
        In,
        "",
        "meta.id",
        "Survey's spectrum identifier (DESI: TARGETID, SDSS: SPECOBJID)",
    ),
    f(
        "targetid",
        Core,
        false,
        true,
        In,
        "",
        "meta.id",
        "Survey's target identifier",
    ),
    f(
        "data_release",
        Core,
        false,
        true,
        In,
        "",
        "meta.dataset",
        "Data release (dataset) of the spectrum",
    ),
    f(
        "datasetgroup",
        Core,
        false,
        true,
        In,
        "",
        "meta.dataset",
        "Group of data releases",
    ),
    f(
        "ra",
        Core,
        true,
        true,
        Range,
        "deg",
        "pos.eq.ra;meta.main",
        "Right ascension (ICRS)",
    ),
    f(
        "dec",
        Core,
        true,
        true,
        Range,
        "deg",
        "pos.eq.dec;meta.main",
        "Declination (ICRS)",
    ),
    f(
        "redshift",
        Core,
        false,
        true,
        Range,
        "",
        "src.redshift",
        "Redshift",
    ),
    f(
        "redshift_err",
        Core,
        false,
        true,
        Range,
        "",
        "stat.error;src.redshift",
        "Uncertainty of the redshift",
    ),
    f(
        "redshift_warning",
        Core,
        false,
        true,
        In,
        "",
        "meta.code.qual;src.redshift",
        "Redshift warning bits (0: none)",
    ),
    f(
        "spectype",
        Core,
        false,
        true,
        In,
        "",
        "src.class",
        "Spectral class: GALAXY, QSO or STAR",
    ),
    f(
        "dateobs",
        Core,
        false,
        true,
        No,
        "",
        "time.start;obs",
        "Start of the observation (UTC, ISO 8601)",
    ),
    f(
        "dateobs_center",
        Core,
        false,
        true,
        Range,
        "",
        "time.epoch;obs",
        "Middle of the observation (UTC, ISO 8601)",
    ),
    f(
        "exptime",
        Core,
        false,
        true,
        Range,
        "s",
        "time.duration;obs.exposure",
        "Exposure time",
    ),
    f(
        "survey",
        Core,
        false,
        true,
        In,
        "",
        "meta.dataset",
        "Survey or program",
    ),
    f(
        "instrument",
        Core,
        false,
        true,
        In,
        "",
        "instr",
        "Instrument",
    ),
    f(
        "telescope",
        Core,
        false,
        true,
        In,
        "",
        "instr.tel",
        "Telescope",
    ),
    f(
        "site",
        Core,
        false,
        true,
        In,
        "",
        "instr.obsty",
        "Observatory site",
    ),
    f(
        "specprimary",
        Core,
        false,
        true,
        In,
        "",
        "meta.code",
        "1 for the primary spectrum of its target",
    ),
    f(
        "wavemin",
        Core,
        false,
        true,
        Range,
        "Angstrom",
        "em.wl;stat.min",
        "Shortest wavelength (vacuum)",
    ),
    f(
        "wavemax",
        Core,
        false,
        true,
        Range,
        "Angstrom",
        "em.wl;stat.max",
        "Longest wavelength (vacuum)",
    ),
    f(
        "npix",
        Aux,
        false,
        false,
        Range,
        "",
        "meta.number",
        "Pixels in the spectrum",
    ),
    f(
        "file",
        Aux,
        false,
        false,
        In,
        "",
        "meta.file",
        "File the spectrum was read from",
    ),
    f(
        "updated",
        Aux,
        false,
        false,
        Range,
        "",
        "time.processing",
        "When the spectrum was added (UTC, ISO 8601)",
    ),
    f(
        "flux",
        Spec,
        true,
        true,
        No,
        FLUX_UNIT,
        "phot.flux.density;em.wl",
        "Flux density",
    ),
    f(
        "wavelength",
        Spec,
        true,
        true,
        No,
        WAVELENGTH_UNIT,
        "em.wl",
        "Vacuum wavelength of each pixel",
    ),
    f(
        "ivar",
        Spec,
        false,
        true,
        No,
        IVAR_UNIT,
        "stat.weight;phot.flux.density",
        "Inverse variance of the flux",
    ),
    f(
        "mask",
        Spec,
        false,
        true,
        No,
        "",
        "meta.code.qual",
        "Pixel mask (0: good)",
    ),
    f(
        "model",
        Spec,
        false,
        true,
        No,
        FLUX_UNIT,
        "phot.flux.density;em.wl;meta.modelled",
        "Best-fit model",
    ),
];

/// The field named `name`.
pub fn field(name: &str) -> Option<&'static FieldDef> {
    FIELDS.iter().find(|f| f.name == name)
}

fn now_iso() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    iso_of_unix(t)
}

/// `YYYY-MM-DDTHH:MM:SS` of unix seconds (UTC).
pub fn iso_of_unix(t: i64) -> String {
    let s = t.rem_euclid(86_400);
    let (y, m, d) = crate::readers::civil_from_days(t.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The schema of the core table (before `_healpix_29` is added).
pub fn core_schema() -> SchemaRef {
    let fields: Vec<Field> = FIELDS
        .iter()
        .filter(|d| d.storage != Storage::Spectrum)
        .map(|d| {
            let (t, nullable) = match d.name {
                "sparcl_id" | "data_release" | "datasetgroup" | "file" | "updated" => {
                    (DataType::Utf8, false)
                }
                "specid" => (DataType::Int64, false),
                "ra" | "dec" | "wavemin" | "wavemax" => (DataType::Float64, false),
                "npix" => (DataType::Int32, false),
                "targetid" | "redshift_warning" => (DataType::Int64, true),
                "specprimary" => (DataType::Int32, true),
                "redshift" | "redshift_err" | "exptime" => (DataType::Float64, true),
                _ => (DataType::Utf8, true),
            };
            let meta = ColumnMeta {
                unit: (!d.unit.is_empty()).then(|| d.unit.to_string()),
                ucd: Some(d.ucd.to_string()),
                utype: None,
                description: Some(d.description.to_string()),
            };
            Field::new(d.name, t, nullable).with_metadata(meta.to_map())
        })
        .chain([
            Field::new("part", DataType::Int32, false).with_metadata(
                ColumnMeta {
                    description: Some("Storage part holding the arrays".into()),
                    ucd: Some("meta.id.part".into()),
                    ..Default::default()
                }
                .to_map(),
            ),
            Field::new("row", DataType::Int64, false).with_metadata(
                ColumnMeta {
                    description: Some("Row of the arrays within their part".into()),
                    ucd: Some("meta.number".into()),
                    ..Default::default()
                }
                .to_map(),
            ),
        ])
        .collect();
    Arc::new(Schema::new(fields))
}

fn arrays_schema() -> SchemaRef {
    let list =
        |t: DataType, nullable: bool| DataType::List(Arc::new(Field::new_list_field(t, nullable)));
    Arc::new(Schema::new(vec![
        Field::new("sparcl_id", DataType::Utf8, false),
        Field::new("grid", DataType::Int32, false),
        Field::new("flux", list(DataType::Float32, false), false),
        Field::new("ivar", list(DataType::Float32, false), false),
        Field::new("mask", list(DataType::UInt32, false), false),
        Field::new("model", list(DataType::Float32, false), true),
    ]))
}

fn grids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "wavelength",
        DataType::List(Arc::new(Field::new_list_field(DataType::Float64, false))),
        false,
    )]))
}

fn part_path(dir: &Path, id: u32, suffix: &str) -> PathBuf {
    dir.join("parts").join(format!("{id:05}{suffix}"))
}

/// Writes one part: spectra go in one at a time; arrays are flushed every `BATCH_ROWS` (256).
pub struct PartWriter {
    dir: PathBuf,
    id: u32,
    data_release: String,
    datasetgroup: String,
    updated: String,
    arrays: FileWriter<std::io::BufWriter<File>>,
    pending: Vec<Spectrum>,
    pending_ids: Vec<String>,
    grids: Vec<Vec<f64>>,
    grid_index: HashMap<Vec<u64>, i32>,
    core: CoreBuilder,
    rows: u64,
}

#[derive(Default)]
struct CoreBuilder {
    sparcl_id: StringBuilder,
    specid: Int64Builder,
    targetid: Int64Builder,
    data_release: StringBuilder,
    datasetgroup: StringBuilder,
    ra: Float64Builder,
    dec: Float64Builder,
    redshift: Float64Builder,
    redshift_err: Float64Builder,
    redshift_warning: Int64Builder,
    spectype: StringBuilder,
    dateobs: StringBuilder,
    dateobs_center: StringBuilder,
    exptime: Float64Builder,
    survey: StringBuilder,
    instrument: StringBuilder,
    telescope: StringBuilder,
    site: StringBuilder,
    specprimary: Int32Builder,
    wavemin: Float64Builder,
    wavemax: Float64Builder,
    npix: Int32Builder,
    file: StringBuilder,
    updated: StringBuilder,
    part: Int32Builder,
    row: Int64Builder,
}

impl CoreBuilder {
    fn finish(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.sparcl_id.finish()),
            Arc::new(self.specid.finish()),
            Arc::new(self.targetid.finish()),
            Arc::new(self.data_release.finish()),
            Arc::new(self.datasetgroup.finish()),
            Arc::new(self.ra.finish()),
            Arc::new(self.dec.finish()),
            Arc::new(self.redshift.finish()),
            Arc::new(self.redshift_err.finish()),
            Arc::new(self.redshift_warning.finish()),
            Arc::new(self.spectype.finish()),
            Arc::new(self.dateobs.finish()),
            Arc::new(self.dateobs_center.finish()),
            Arc::new(self.exptime.finish()),
            Arc::new(self.survey.finish()),
            Arc::new(self.instrument.finish()),
            Arc::new(self.telescope.finish()),
            Arc::new(self.site.finish()),
            Arc::new(self.specprimary.finish()),
            Arc::new(self.wavemin.finish()),
            Arc::new(self.wavemax.finish()),
            Arc::new(self.npix.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.updated.finish()),
            Arc::new(self.part.finish()),
            Arc::new(self.row.finish()),
        ];
        Ok(RecordBatch::try_new(core_schema(), cols)?)
    }
}

/// The middle of an observation: its start plus half the exposure, ISO 8601.
fn centre_of(dateobs: Option<&str>, exptime_s: Option<f64>) -> Option<String> {
    let start = dateobs?;
    let t = parse_iso(start)?;
    Some(iso_of_unix(
        t + (exptime_s.unwrap_or(0.0) / 2.0).round() as i64,
    ))
}

/// Unix seconds of `YYYY-MM-DD[THH:MM[:SS[.fff]]]`.
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    // A year, a month or a day alone stands for its first moment.
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next().map_or(Some(1), |v| v.parse().ok())?;
    let day: i64 = d.next().map_or(Some(1), |v| v.parse().ok())?;
    if d.next().is_some() || !(1..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=month_days[(m - 1) as usize]).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next().unwrap_or("0").parse().ok()?;
    let ss: f64 = t.next().unwrap_or("0").parse().ok()?;
    // A leap second (60) is allowed.
    if t.next().is_some()
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss.floor() as i64)
}

impl PartWriter {
    fn create(dir: &Path, id: u32, manifest: &Manifest) -> Result<Self> {
        let parts = dir.join("parts");
        std::fs::create_dir_all(&parts).map_err(|e| Error::io(&parts, e))?;
        let path = part_path(dir, id, ".arrow");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let arrays = FileWriter::try_new(std::io::BufWriter::new(file), &arrays_schema())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            data_release: manifest.data_release.clone(),
            datasetgroup: manifest.datasetgroup.clone(),
            updated: now_iso(),
            arrays,
            pending: Vec::with_capacity(BATCH_ROWS),
            pending_ids: Vec::with_capacity(BATCH_ROWS),
            grids: Vec::new(),
            grid_index: HashMap::new(),
            core: CoreBuilder::default(),
            rows: 0,
        })
    }

    /// Spectra written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds one spectrum under its (already checked, not yet present) `sparcl_id`.
    pub fn push(&mut self, sparcl_id: String, s: Spectrum) -> Result<()> {
        let c = &mut self.core;
        c.sparcl_id.append_value(&sparcl_id);
        c.specid.append_value(s.specid);
        c.targetid.append_option(s.targetid);
        c.data_release.append_value(&self.data_release);
        c.datasetgroup.append_value(&self.datasetgroup);
        c.ra.append_value(s.ra_deg.rem_euclid(360.0));
        c.dec.append_value(s.dec_deg);
        c.redshift.append_option(s.redshift);
        c.redshift_err.append_option(s.redshift_err);
        c.redshift_warning.append_option(s.redshift_warning);
        c.spectype.append_option(s.spectype.as_deref());
        c.dateobs.append_option(s.dateobs.as_deref());
        c.dateobs_center
            .append_option(centre_of(s.dateobs.as_deref(), s.exptime_s));
        c.exptime.append_option(s.exptime_s);
        c.survey.append_option(s.survey.as_deref());
        c.instrument.append_option(s.instrument.as_deref());
        c.telescope.append_option(s.telescope.as_deref());
        c.site.append_option(s.site.as_deref());
        c.specprimary.append_option(s.specprimary);
        c.wavemin.append_value(s.wavelength_aa[0]);
        c.wavemax
            .append_value(*s.wavelength_aa.last().expect("checked: not empty"));
        c.npix.append_value(s.wavelength_aa.len() as i32);
        c.file.append_value(&s.file);
        c.updated.append_value(&self.updated);
        c.part.append_value(self.id as i32);
        c.row.append_value(self.rows as i64);
        self.rows += 1;
        self.pending_ids.push(sparcl_id);
        self.pending.push(s);
        if self.pending.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn grid_of(&mut self, wave: &[f64]) -> i32 {
        let key: Vec<u64> = wave.iter().map(|w| w.to_bits()).collect();
        if let Some(&i) = self.grid_index.get(&key) {
            return i;
        }
        let i = self.grids.len() as i32;
        self.grids.push(wave.to_vec());
        self.grid_index.insert(key, i);
        i
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let ids = std::mem::take(&mut self.pending_ids);
        let npix: usize = pending.iter().map(|s| s.flux.len()).sum();
        let mut flux = ListBuilder::new(Float32Builder::with_capacity(npix))
            .with_field(Field::new_list_field(DataType::Float32, false));
        let mut ivar = ListBuilder::new(Float32Builder::with_capacity(npix))
            .with_field(Field::new_list_field(DataType::Float32, false));
        let mut mask = ListBuilder::new(UInt32Builder::with_capacity(npix))
            .with_field(Field::new_list_field(DataType::UInt32, false));
        let mut model = ListBuilder::new(Float32Builder::new())
            .with_field(Field::new_list_field(DataType::Float32, false));
        let mut grid = Int32Builder::with_capacity(pending.len());
        for s in &pending {
            grid.append_value(self.grid_of(&s.wavelength_aa));
            flux.values().append_slice(&s.flux);
            flux.append(true);
            ivar.values().append_slice(&s.ivar);
            ivar.append(true);
            mask.values().append_slice(&s.mask);
            mask.append(true);
            match &s.model {
                Some(m) => {
                    model.values().append_slice(m);
                    model.append(true);
                }
                None => model.append(false),
            }
        }
        let batch = RecordBatch::try_new(
            arrays_schema(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(grid.finish()),
                Arc::new(flux.finish()),
                Arc::new(ivar.finish()),
                Arc::new(mask.finish()),
                Arc::new(model.finish()),
            ],
        )?;
        self.arrays.write(&batch)?;
        Ok(())
    }

    /// Finishes the part's files; returns its manifest entry.
    fn finish(mut self) -> Result<PartInfo> {
        self.flush()?;
        self.arrays.finish()?;
        self.arrays
            .get_mut()
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.dir, e))?;
        // Grids.
        let mut b = ListBuilder::new(Float64Builder::new())
            .with_field(Field::new_list_field(DataType::Float64, false));
        for g in &self.grids {
            b.values().append_slice(g);
            b.append(true);
        }
        let grids = RecordBatch::try_new(grids_schema(), vec![Arc::new(b.finish())])?;
        let path = part_path(&self.dir, self.id, ".grids.arrow");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = FileWriter::try_new(file, &grids_schema())?;
        w.write(&grids)?;
        w.finish()?;
        // Core fields.
        let core = self.core.finish()?;
        let path = part_path(&self.dir, self.id, ".core.parquet");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, core.schema(), None)?;
        w.write(&core)?;
        w.close()?;
        Ok(PartInfo {
            id: self.id,
            rows: self.rows,
            written: self.updated,
        })
    }
}

/// A dataset being written: a staging copy of the current version plus a new part.
pub struct Staged {
    root: PathBuf,
    dir: PathBuf,
    manifest: Manifest,
    existing: std::collections::HashSet<String>,
    part: Option<PartWriter>,
    /// Spectra skipped because their sparcl_id is already in the dataset.
    pub duplicates: u64,
    published: bool,
    /// Held from begin to publish: two adds to one dataset take turns, so neither loses
    /// the other's spectra.
    _lock: File,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Settings of a new dataset (ignored when adding to an existing one).
#[derive(Debug, Clone)]
pub struct NewDataset {
    /// Group of releases; by default the name up to its first `-` (`DESI-EDR`: `DESI`).
    pub datasetgroup: Option<String>,
    /// Who may read it.
    pub access: Access,
    /// A line saying what it is.
    pub description: String,
    /// Replace the dataset if it exists (its spectra go once the new version is published)
    /// rather than add to it.
    pub replace: bool,
}

impl Default for NewDataset {
    fn default() -> Self {
        Self {
            datasetgroup: None,
            access: Access {
                public: true,
                ..Default::default()
            },
            description: String::new(),
            replace: false,
        }
    }
}

impl Staged {
    /// Starts adding spectra to dataset `name` under `root` (creating the dataset with
    /// `new` if it does not exist).
    pub fn begin(root: &Path, name: &str, new: &NewDataset) -> Result<Self> {
        check_name(name)?;
        let staging = root.join(STAGING);
        for d in [root.to_path_buf(), root.join(VERSIONS), staging.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let lock_path = root.join(format!(".{name}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let dir = staging.join(format!("{name}.{}.{}", std::process::id(), nanos()));
        std::fs::create_dir_all(dir.join("parts")).map_err(|e| Error::io(&dir, e))?;
        let current = root.join(name);
        let (manifest, existing) = if !new.replace && current.join(MANIFEST).exists() {
            let manifest = read_manifest(&current)?;
            // The earlier parts come along as hard links (copies where links fail).
            let mut ids = std::collections::HashSet::new();
            for p in &manifest.parts {
                for suffix in [".arrow", ".grids.arrow", ".core.parquet"] {
                    let from = part_path(&current, p.id, suffix);
                    let to = part_path(&dir, p.id, suffix);
                    if std::fs::hard_link(&from, &to).is_err() {
                        std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
                    }
                }
                let core = read_core_part(&current, p.id)?;
                let col = core
                    .column_by_name("sparcl_id")
                    .ok_or_else(|| Error::Corrupt("core part without sparcl_id".into()))?
                    .as_string::<i32>()
                    .clone();
                ids.extend(col.iter().flatten().map(str::to_string));
            }
            (manifest, ids)
        } else {
            let datasetgroup = new
                .datasetgroup
                .clone()
                .unwrap_or_else(|| name.split('-').next().unwrap_or(name).to_ascii_uppercase());
            (
                Manifest {
                    data_release: name.to_string(),
                    datasetgroup,
                    access: new.access.clone(),
                    description: new.description.clone(),
                    parts: Vec::new(),
                },
                Default::default(),
            )
        };
        let id = manifest.parts.iter().map(|p| p.id + 1).max().unwrap_or(0);
        let part = PartWriter::create(&dir, id, &manifest)?;
        Ok(Self {
            root: root.to_path_buf(),
            dir,
            manifest,
            existing,
            part: Some(part),
            duplicates: 0,
            published: false,
            _lock: lock,
        })
    }

    /// The data release spectra are added to.
    pub fn data_release(&self) -> &str {
        &self.manifest.data_release
    }

    /// Adds `s` (checked first); returns whether it was added (false: its sparcl_id is
    /// already in the dataset).
    pub fn push(&mut self, s: Spectrum) -> Result<bool> {
        s.check().map_err(Error::Invalid)?;
        let id = s.sparcl_id(&self.manifest.data_release);
        if !self.existing.insert(id.clone()) {
            self.duplicates += 1;
            return Ok(false);
        }
        self.part
            .as_mut()
            .expect("open until published")
            .push(id, s)?;
        Ok(true)
    }

    /// Spectra added by this staging so far.
    pub fn added(&self) -> u64 {
        self.part.as_ref().map_or(0, PartWriter::rows)
    }

    /// Writes the part, rebuilds the core HATS catalog and makes this the dataset's
    /// current version. `progress` hears about the catalog build.
    pub fn publish(
        mut self,
        progress: &(dyn Fn(&meridian_catalog::ingest::IngestProgress) + Sync),
    ) -> Result<PathBuf> {
        let info = self.part.take().expect("open until published").finish()?;
        if info.rows > 0 {
            self.manifest.parts.push(info);
        } else {
            for suffix in [".arrow", ".grids.arrow", ".core.parquet"] {
                let _ = std::fs::remove_file(part_path(&self.dir, info.id, suffix));
            }
        }
        if self.manifest.parts.is_empty() {
            return Err(Error::Invalid(format!(
                "no spectra to add to {}: nothing was published",
                self.manifest.data_release
            )));
        }
        let inputs: Vec<PathBuf> = self
            .manifest
            .parts
            .iter()
            .map(|p| part_path(&self.dir, p.id, ".core.parquet"))
            .collect();
        let store = meridian_catalog::Store::open(self.dir.join("catalog"))?;
        let opts = meridian_catalog::ingest::IngestOptions {
            ra_column: Some("ra".into()),
            dec_column: Some("dec".into()),
            title: Some(format!("Spectra of {}", self.manifest.data_release)),
            ..Default::default()
        };
        meridian_catalog::ingest::ingest(&store, CORE, &inputs, &opts, progress)?;
        let text = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let path = self.dir.join(MANIFEST);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        // Publish: move into the versions and swap the link.
        let name = self.manifest.data_release.clone();
        let version = self.root.join(VERSIONS).join(format!("{name}.{}", nanos()));
        std::fs::rename(&self.dir, &version).map_err(|e| Error::io(&version, e))?;
        self.published = true;
        let link = self.root.join(&name);
        let previous = std::fs::read_link(&link).ok();
        let tmp = self.root.join(format!(".{name}.link.{}", nanos()));
        let target = PathBuf::from(VERSIONS).join(version.file_name().expect("has a name"));
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))?;
        if let Some(p) = previous {
            // Open memory maps keep the old files alive for the servers that use them.
            let _ = std::fs::remove_dir_all(self.root.join(p));
        }
        Ok(link)
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
}

fn read_core_part(dir: &Path, id: u32) -> Result<RecordBatch> {
    let path = part_path(dir, id, ".core.parquet");
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(&core_schema(), &batches)?)
}

/// Removes dataset `name`.
pub fn remove(root: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let link = root.join(name);
    let target = std::fs::read_link(&link).map_err(|e| {
        Error::NotFound(format!(
            "no spectra dataset '{name}' ({}: {e})",
            link.display()
        ))
    })?;
    std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
    let _ = std::fs::remove_dir_all(root.join(target));
    Ok(())
}

/// The HATS catalogs of the core tables of the public datasets under `root`, by name: what a
/// query engine registers, without opening the arrays or indexing the ids.
pub fn public_catalogs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for name in list(root)? {
        let dir = root.join(&name);
        let dir = dir.canonicalize().map_err(|e| Error::io(&dir, e))?;
        if read_manifest(&dir)?.access.public {
            out.push((name, dir.join("catalog").join(CORE)));
        }
    }
    Ok(out)
}

/// Names of the datasets under `root`, sorted.
pub fn list(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(names);
    };
    for e in entries {
        let e = e.map_err(|e| Error::io(root, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if check_name(&name).is_ok() && e.path().join(MANIFEST).is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// One batch of a part's arrays, memory-mapped.
struct ArrayBatch {
    flux: ListArray,
    ivar: ListArray,
    mask: ListArray,
    model: ListArray,
    grid: Int32Array,
}

struct Part {
    batches: Vec<ArrayBatch>,
    grids: ListArray,
}

/// Reads every record batch of the Arrow IPC file at `path` without copying: the arrays
/// point into a memory map of the file.
fn map_ipc(path: &Path) -> Result<Vec<RecordBatch>> {
    use arrow::ipc::reader::{FileDecoder, read_footer_length};
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the part files are written once and never modified in place (a new version
    // is written beside them and swapped in), so the mapping does not change under us.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let corrupt = |why: &str| Error::Corrupt(format!("{}: {why}", path.display()));
    if mmap.len() < 10 {
        return Err(corrupt("too short for an Arrow IPC file"));
    }
    let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
    let trailer = buffer.len() - 10;
    let footer_len = read_footer_length(
        buffer[trailer..]
            .try_into()
            .map_err(|_| corrupt("no footer"))?,
    )?;
    if footer_len > trailer {
        return Err(corrupt("footer longer than the file"));
    }
    let footer = arrow::ipc::root_as_footer(&buffer[trailer - footer_len..trailer])
        .map_err(|e| corrupt(&format!("bad footer: {e}")))?;
    let schema =
        arrow::ipc::convert::fb_to_schema(footer.schema().ok_or_else(|| corrupt("no schema"))?);
    let decoder = FileDecoder::new(Arc::new(schema), footer.version());
    let blocks: Vec<arrow::ipc::Block> = footer
        .recordBatches()
        .map(|b| b.iter().copied().collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let len = block.bodyLength() as usize + block.metaDataLength() as usize;
        let start = block.offset() as usize;
        if start.checked_add(len).is_none_or(|end| end > buffer.len()) {
            return Err(corrupt("a record batch lies past the end of the file"));
        }
        let data = buffer.slice_with_length(start, len);
        if let Some(b) = decoder.read_record_batch(&block, &data)? {
            out.push(b);
        }
    }
    Ok(out)
}

impl Part {
    fn open(dir: &Path, id: u32) -> Result<Self> {
        let path = part_path(dir, id, ".arrow");
        let corrupt = |why: &str| Error::Corrupt(format!("{}: {why}", path.display()));
        let mut batches = Vec::new();
        for b in map_ipc(&path)? {
            let list = |name: &str| -> Result<ListArray> {
                Ok(b.column_by_name(name)
                    .and_then(|c| c.as_list_opt::<i32>())
                    .ok_or_else(|| corrupt(&format!("no list column {name}")))?
                    .clone())
            };
            let grid = b
                .column_by_name("grid")
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int32Type>())
                .ok_or_else(|| corrupt("no grid column"))?
                .clone();
            batches.push(ArrayBatch {
                flux: list("flux")?,
                ivar: list("ivar")?,
                mask: list("mask")?,
                model: list("model")?,
                grid,
            });
        }
        let gpath = part_path(dir, id, ".grids.arrow");
        let grids = map_ipc(&gpath)?
            .into_iter()
            .next()
            .and_then(|b| b.column(0).as_list_opt::<i32>().cloned())
            .ok_or_else(|| Error::Corrupt(format!("{}: no grids", gpath.display())))?;
        Ok(Self { batches, grids })
    }
}

/// The arrays of one stored spectrum, borrowed from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct Arrays<'a> {
    /// Vacuum wavelengths, Å.
    pub wavelength_aa: &'a [f64],
    /// Flux density.
    pub flux: &'a [f32],
    /// Inverse variance.
    pub ivar: &'a [f32],
    /// Mask, 0 = good.
    pub mask: &'a [u32],
    /// Model, when stored.
    pub model: Option<&'a [f32]>,
}

fn slice_f32(list: &ListArray, i: usize) -> &[f32] {
    let o = list.value_offsets();
    let v = list.values().as_primitive::<Float32Type>().values();
    &v[o[i] as usize..o[i + 1] as usize]
}

fn slice_f64(list: &ListArray, i: usize) -> &[f64] {
    let o = list.value_offsets();
    let v = list.values().as_primitive::<Float64Type>().values();
    &v[o[i] as usize..o[i + 1] as usize]
}

fn slice_u32(list: &ListArray, i: usize) -> &[u32] {
    let o = list.value_offsets();
    let v = list.values().as_primitive::<UInt32Type>().values();
    &v[o[i] as usize..o[i + 1] as usize]
}

/// An opened dataset: its manifest, core fields in memory and arrays memory-mapped.
pub struct Dataset {
    manifest: Manifest,
    dir: PathBuf,
    core: RecordBatch,
    /// Per core row: (part index, row in part).
    location: Vec<(u32, u32)>,
    parts: Vec<Part>,
    by_id: HashMap<u128, u32>,
    by_specid: HashMap<i64, Vec<u32>>,
}

/// A UUID's 128 bits (None for text that is not a UUID).
pub fn uuid_bits(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

impl Dataset {
    /// Opens dataset `name` under `root`.
    pub fn open(root: &Path, name: &str) -> Result<Self> {
        check_name(name)?;
        let dir = root.join(name);
        if !dir.join(MANIFEST).is_file() {
            return Err(Error::NotFound(format!(
                "no spectra dataset '{name}' under {}",
                root.display()
            )));
        }
        // Resolve the link once: a later add swaps it, and this instance keeps its version.
        let dir = dir.canonicalize().map_err(|e| Error::io(&dir, e))?;
        let manifest = read_manifest(&dir)?;
        let mut cores = Vec::new();
        let mut parts = Vec::new();
        for p in &manifest.parts {
            cores.push(read_core_part(&dir, p.id)?);
            parts.push(Part::open(&dir, p.id)?);
        }
        let core = arrow::compute::concat_batches(&core_schema(), &cores)?;
        let ids = core.column(0).as_string::<i32>();
        let specids = core.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let part_col = core
            .column_by_name("part")
            .ok_or_else(|| Error::Corrupt("no part column".into()))?
            .as_primitive::<arrow::datatypes::Int32Type>();
        let row_col = core
            .column_by_name("row")
            .ok_or_else(|| Error::Corrupt("no row column".into()))?
            .as_primitive::<arrow::datatypes::Int64Type>();
        let mut by_id = HashMap::with_capacity(core.num_rows());
        let mut by_specid: HashMap<i64, Vec<u32>> = HashMap::with_capacity(core.num_rows());
        let mut location = Vec::with_capacity(core.num_rows());
        for i in 0..core.num_rows() {
            let bits = uuid_bits(ids.value(i)).ok_or_else(|| {
                Error::Corrupt(format!("sparcl_id '{}' is not a UUID", ids.value(i)))
            })?;
            by_id.insert(bits, i as u32);
            by_specid
                .entry(specids.value(i))
                .or_default()
                .push(i as u32);
            let part_id = part_col.value(i) as u32;
            let pi = manifest
                .parts
                .iter()
                .position(|p| p.id == part_id)
                .ok_or_else(|| Error::Corrupt(format!("row {i} names unknown part {part_id}")))?;
            let row = row_col.value(i) as usize;
            let (b, r) = (row / BATCH_ROWS, row % BATCH_ROWS);
            if parts[pi].batches.get(b).is_none_or(|x| r >= x.flux.len()) {
                return Err(Error::Corrupt(format!(
                    "row {row} of part {part_id} is missing from its array file"
                )));
            }
            location.push((pi as u32, row as u32));
        }
        Ok(Self {
            manifest,
            dir,
            core,
            location,
            parts,
            by_id,
            by_specid,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The data release (dataset name).
    pub fn name(&self) -> &str {
        &self.manifest.data_release
    }

    /// The version directory this instance reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The HATS catalog of the core fields.
    pub fn catalog_dir(&self) -> PathBuf {
        self.dir.join("catalog").join(CORE)
    }

    /// Number of spectra.
    pub fn len(&self) -> usize {
        self.core.num_rows()
    }

    /// Whether the dataset holds no spectra.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The core fields, one row per spectrum (row numbers used by the other methods).
    pub fn core(&self) -> &RecordBatch {
        &self.core
    }

    /// The row of the spectrum with this `sparcl_id`.
    pub fn row_of(&self, sparcl_id: &str) -> Option<u32> {
        self.by_id.get(&uuid_bits(sparcl_id)?).copied()
    }

    /// The rows with this `specid`.
    pub fn rows_of_specid(&self, specid: i64) -> &[u32] {
        self.by_specid.get(&specid).map_or(&[], Vec::as_slice)
    }

    /// The arrays of row `row`.
    pub fn arrays(&self, row: u32) -> Arrays<'_> {
        let (pi, r) = self.location[row as usize];
        let part = &self.parts[pi as usize];
        let (b, i) = (r as usize / BATCH_ROWS, r as usize % BATCH_ROWS);
        let batch = &part.batches[b];
        let grid = batch.grid.value(i) as usize;
        Arrays {
            wavelength_aa: slice_f64(&part.grids, grid),
            flux: slice_f32(&batch.flux, i),
            ivar: slice_f32(&batch.ivar, i),
            mask: slice_u32(&batch.mask, i),
            model: batch.model.is_valid(i).then(|| slice_f32(&batch.model, i)),
        }
    }

    /// The `sparcl_id` of row `row`.
    pub fn sparcl_id(&self, row: u32) -> &str {
        self.core.column(0).as_string::<i32>().value(row as usize)
    }

    /// The `specid` of row `row`.
    pub fn specid(&self, row: u32) -> i64 {
        self.core
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row as usize)
    }

    /// The redshift of row `row`, when known.
    pub fn redshift(&self, row: u32) -> Option<f64> {
        let c = self.core.column_by_name("redshift")?;
        let c = c.as_primitive::<Float64Type>();
        c.is_valid(row as usize).then(|| c.value(row as usize))
    }

    /// The value of core field `name` in row `row`.
    pub fn value(&self, name: &str, row: u32) -> Option<Value<'_>> {
        let col = self.core.column_by_name(name)?;
        Some(value_at(col, row as usize))
    }
}

/// A core field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Missing.
    Null,
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Str(&'a str),
}

fn value_at(col: &ArrayRef, i: usize) -> Value<'_> {
    if col.is_null(i) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Utf8 => Value::Str(col.as_string::<i32>().value(i)),
        DataType::Int64 => Value::Int(col.as_primitive::<arrow::datatypes::Int64Type>().value(i)),
        DataType::Int32 => {
            Value::Int(col.as_primitive::<arrow::datatypes::Int32Type>().value(i) as i64)
        }
        DataType::Float64 => Value::Float(col.as_primitive::<Float64Type>().value(i)),
        _ => Value::Null,
    }
}

/// A `find` constraint's value, as the client sends it (JSON).
#[derive(Debug, Clone, PartialEq)]
pub enum Given {
    /// A number.
    Num(f64),
    /// An integer (kept exact: int64 ids do not fit a double).
    Int(i64),
    /// Text.
    Str(String),
}

impl Given {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Given::Num(x) => Some(*x),
            Given::Int(i) => Some(*i as f64),
            Given::Str(s) => s.trim().parse().ok(),
        }
    }
}

/// One `find` constraint.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// The field.
    pub field: String,
    /// Its values: `[min, max]` for range fields, the accepted values for the others.
    pub values: Vec<Given>,
}

/// Rows of `ds` that satisfy every constraint, in row order.
pub fn select(ds: &Dataset, constraints: &[Constraint]) -> Result<Vec<u32>> {
    let core = ds.core();
    let mut keep: Vec<bool> = vec![true; core.num_rows()];
    for c in constraints {
        let def = field(&c.field)
            .filter(|d| d.storage != Storage::Spectrum && d.constrain != Constrain::No)
            .ok_or_else(|| {
                Error::UnknownField(format!(
                    "'{}' is not a field that can be constrained",
                    c.field
                ))
            })?;
        let col = core
            .column_by_name(def.name)
            .ok_or_else(|| Error::UnknownField(format!("no column '{}'", def.name)))?;
        match def.constrain {
            Constrain::Range => {
                if c.values.len() != 2 {
                    return Err(Error::Invalid(format!(
                        "the constraint on '{}' needs [min, max], got {} values",
                        c.field,
                        c.values.len()
                    )));
                }
                if *col.data_type() == DataType::Utf8 {
                    let (lo, hi) = match (&c.values[0], &c.values[1]) {
                        (Given::Str(a), Given::Str(b)) => (a.as_str(), b.as_str()),
                        _ => {
                            return Err(Error::Invalid(format!(
                                "the range on '{}' needs two ISO 8601 times",
                                c.field
                            )));
                        }
                    };
                    let s = col.as_string::<i32>();
                    for (i, k) in keep.iter_mut().enumerate() {
                        *k = *k && s.is_valid(i) && (lo..=hi).contains(&s.value(i));
                    }
                } else {
                    let (lo, hi) = match (c.values[0].as_f64(), c.values[1].as_f64()) {
                        (Some(a), Some(b)) if a <= b => (a, b),
                        _ => {
                            return Err(Error::Invalid(format!(
                                "the range on '{}' needs two numbers, min <= max",
                                c.field
                            )));
                        }
                    };
                    let cast = arrow::compute::cast(col, &DataType::Float64)?;
                    let v: &Float64Array = cast.as_primitive();
                    for (i, k) in keep.iter_mut().enumerate() {
                        *k = *k && v.is_valid(i) && (lo..=hi).contains(&v.value(i));
                    }
                }
            }
            _ => match col.data_type() {
                DataType::Utf8 => {
                    let set: std::collections::HashSet<String> = c
                        .values
                        .iter()
                        .map(|g| match g {
                            // sparcl_ids are stored in lower case; a UUID matches in any case.
                            Given::Str(s) if def.name == "sparcl_id" => s.to_ascii_lowercase(),
                            Given::Str(s) => s.clone(),
                            Given::Int(i) => i.to_string(),
                            Given::Num(x) => x.to_string(),
                        })
                        .collect();
                    let s = col.as_string::<i32>();
                    for (i, k) in keep.iter_mut().enumerate() {
                        *k = *k && s.is_valid(i) && set.contains(s.value(i));
                    }
                }
                _ => {
                    let set: std::collections::HashSet<i64> = c
                        .values
                        .iter()
                        .filter_map(|g| match g {
                            Given::Int(i) => Some(*i),
                            Given::Num(x) if x.fract() == 0.0 => Some(*x as i64),
                            Given::Str(s) => s.trim().parse().ok(),
                            _ => None,
                        })
                        .collect();
                    let cast = arrow::compute::cast(col, &DataType::Int64)?;
                    let v: &Int64Array = cast.as_primitive();
                    for (i, k) in keep.iter_mut().enumerate() {
                        *k = *k && v.is_valid(i) && set.contains(&v.value(i));
                    }
                }
            },
        }
    }
    Ok(keep
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.then_some(i as u32))
        .collect())
}

/// Compares two values for sorting: nulls last, numbers numerically, text by bytes.
pub fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Value::Null, Value::Null) => Equal,
        (Value::Null, _) => Greater,
        (_, Value::Null) => Less,
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Int(x), Value::Float(y)) => (*x as f64).total_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.total_cmp(&(*y as f64)),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Str(_), _) => Greater,
        (_, Value::Str(_)) => Less,
    }
}

/// Every dataset under a root, opened.
pub struct Library {
    root: PathBuf,
    datasets: Vec<Arc<Dataset>>,
}

impl Library {
    /// A library without datasets.
    pub fn empty() -> Self {
        Self {
            root: PathBuf::new(),
            datasets: Vec::new(),
        }
    }

    /// Opens every dataset under `root` (none when it does not exist).
    pub fn open(root: &Path) -> Result<Self> {
        let mut datasets = Vec::new();
        for name in list(root)? {
            datasets.push(Arc::new(Dataset::open(root, &name)?));
        }
        Ok(Self {
            root: root.to_path_buf(),
            datasets,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The datasets, sorted by name.
    pub fn datasets(&self) -> &[Arc<Dataset>] {
        &self.datasets
    }

    /// The dataset named `name` (exactly).
    pub fn dataset(&self, name: &str) -> Option<&Arc<Dataset>> {
        self.datasets.iter().find(|d| d.name() == name)
    }

    /// Finds the spectrum with `sparcl_id` in any of `datasets`.
    pub fn locate<'a>(
        &self,
        datasets: &[&'a Arc<Dataset>],
        sparcl_id: &str,
    ) -> Option<(&'a Arc<Dataset>, u32)> {
        let bits = uuid_bits(sparcl_id)?;
        datasets
            .iter()
            .find_map(|d| d.by_id.get(&bits).map(|r| (*d, *r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spectrum(specid: i64, ra: f64, n: usize, shared: bool) -> Spectrum {
        let start = if shared {
            3600.0
        } else {
            3600.0 + specid as f64
        };
        Spectrum {
            specid,
            targetid: Some(specid),
            ra_deg: ra,
            dec_deg: 10.0,
            redshift: Some(0.1 * specid as f64),
            spectype: Some(if specid % 2 == 0 { "GALAXY" } else { "STAR" }.into()),
            dateobs: Some("2021-04-19T03:00:00".into()),
            exptime_s: Some(900.0),
            source_key: "test".into(),
            file: "f.fits".into(),
            wavelength_aa: (0..n).map(|i| start + i as f64).collect(),
            flux: (0..n).map(|i| (specid as f32) + i as f32).collect(),
            ivar: vec![1.0; n],
            mask: (0..n as u32).map(|i| i % 3).collect(),
            model: (specid % 2 == 0).then(|| vec![0.5; n]),
            ..Default::default()
        }
    }

    #[test]
    fn added_spectra_read_back_and_adds_accumulate() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut st = Staged::begin(root, "TEST-DR1", &NewDataset::default()).unwrap();
        for i in 0..600 {
            assert!(
                st.push(spectrum(i, (i as f64) * 0.5, 50, i % 7 != 0))
                    .unwrap()
            );
        }
        // The same spectrum twice is a duplicate.
        assert!(!st.push(spectrum(3, 1.5, 50, true)).unwrap());
        st.publish(&|_| {}).unwrap();
        let ds = Dataset::open(root, "TEST-DR1").unwrap();
        assert_eq!(ds.len(), 600);
        assert_eq!(ds.manifest().datasetgroup, "TEST");
        let id = spectrum(123, 0.0, 1, true).sparcl_id("TEST-DR1");
        let row = ds.row_of(&id).unwrap();
        assert_eq!(ds.specid(row), 123);
        let a = ds.arrays(row);
        assert_eq!(a.flux[0], 123.0);
        assert_eq!(a.flux[49], 172.0);
        assert_eq!(a.wavelength_aa[0], 3600.0);
        assert_eq!(a.mask[2], 2);
        assert!(a.model.is_none());
        let row7 = ds.rows_of_specid(7)[0];
        assert_eq!(ds.arrays(row7).wavelength_aa[0], 3607.0);
        assert_eq!(ds.value("exptime", row), Some(Value::Float(900.0)));
        assert_eq!(
            ds.value("dateobs_center", row),
            Some(Value::Str("2021-04-19T03:07:30"))
        );
        // A second add: old and new spectra both served, duplicates skipped.
        let mut st = Staged::begin(root, "TEST-DR1", &NewDataset::default()).unwrap();
        assert!(!st.push(spectrum(5, 2.5, 50, true)).unwrap());
        assert!(st.push(spectrum(1000, 200.0, 40, true)).unwrap());
        st.publish(&|_| {}).unwrap();
        let ds2 = Dataset::open(root, "TEST-DR1").unwrap();
        assert_eq!(ds2.len(), 601);
        assert_eq!(ds2.arrays(ds2.rows_of_specid(1000)[0]).flux.len(), 40);
        assert_eq!(ds2.arrays(ds2.rows_of_specid(123)[0]).flux[1], 124.0);
        // The first instance still reads its own version.
        assert_eq!(ds.arrays(row).flux[0], 123.0);
        // Constraints.
        let rows = select(
            &ds2,
            &[
                Constraint {
                    field: "ra".into(),
                    values: vec![Given::Num(10.0), Given::Int(20)],
                },
                Constraint {
                    field: "spectype".into(),
                    values: vec![Given::Str("GALAXY".into())],
                },
            ],
        )
        .unwrap();
        assert_eq!(rows.len(), 11); // specids 20, 22, ..., 40
        assert!(
            select(
                &ds2,
                &[Constraint {
                    field: "flux".into(),
                    values: vec![]
                }]
            )
            .is_err()
        );
        assert_eq!(list(root).unwrap(), vec!["TEST-DR1".to_string()]);
    }

    #[test]
    fn an_add_without_spectra_publishes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let st = Staged::begin(tmp.path(), "EMPTY", &NewDataset::default()).unwrap();
        assert!(st.publish(&|_| {}).is_err());
        assert!(list(tmp.path()).unwrap().is_empty());
        assert!(check_name("../x").is_err());
        assert_eq!(table_name("DESI-EDR"), "desi_edr");
    }

    #[test]
    fn iso_times_are_checked_and_may_be_partial() {
        assert_eq!(parse_iso("2030"), parse_iso("2030-01-01T00:00:00"));
        assert_eq!(parse_iso("2021-04"), parse_iso("2021-04-01"));
        assert_eq!(
            parse_iso("2021-04-06T08:18:53.063Z"),
            parse_iso("2021-04-06T08:18:53")
        );
        for bad in [
            "2021-02-30T00:00:00",
            "2021-02-29",
            "2021-01-01T25:00:00",
            "2021-01-01T00:61:00",
            "2021-13-01",
            "2021-01-01-01",
            "x",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
        assert!(parse_iso("2024-02-29").is_some());
    }

    #[test]
    fn iso_times_round_trip() {
        for s in [
            "1970-01-01T00:00:00",
            "2021-04-19T03:07:30",
            "2000-02-29T23:59:59",
        ] {
            assert_eq!(iso_of_unix(parse_iso(s).unwrap()), s);
        }
    }
}
