//! Spectra: Data Lab's SPARCL API ([`sparcl`]) for the `sparclclient` package, IVOA Simple
//! Spectral Access ([`ssa`]) and server-side stacks ([`stack`]), all over the datasets of a
//! [`meridian_spectra::store::Library`].

pub mod sparcl;
pub mod ssa;
pub mod stack;

use std::sync::Arc;

use meridian_services::accounts::Identity;
use meridian_spectra::store::{Dataset, Library};

use crate::AppState;
use crate::error::{Error, Result};

/// The spectra served and their limits.
pub struct SpectraService {
    /// The datasets.
    pub library: Library,
    /// Most spectra one retrieve may ask for (sparclclient stops at 24,000 itself).
    pub max_retrieve: usize,
    /// Most records one find may return, `limit=None` included.
    pub max_find: usize,
    /// Memory a stack may hold (medians keep every value), bytes.
    pub stack_memory_bytes: u64,
    /// Most spectra one stack may take.
    pub max_stack: usize,
    /// The naming authority of publisher DIDs (`ivo://AUTHORITY/spectra/...`).
    pub authority: String,
    /// Stacks computed at once (each keeps the cores busy).
    pub stacks: Arc<tokio::sync::Semaphore>,
}

impl Default for SpectraService {
    fn default() -> Self {
        Self::new(Library::empty())
    }
}

impl SpectraService {
    /// Serves `library` with the default limits.
    pub fn new(library: Library) -> Self {
        Self {
            library,
            max_retrieve: 25_000,
            max_find: 1_000_000,
            stack_memory_bytes: 2 << 30,
            max_stack: 1_000_000,
            authority: "meridian".into(),
            stacks: Arc::new(tokio::sync::Semaphore::new(2)),
        }
    }
}

/// Whether `who` may read `ds`: public datasets everyone, the others their listed users and
/// the members of their listed groups (matched by name and account id, so that a user or
/// group made later under a listed name gets nothing).
pub fn may_read(state: &AppState, who: Option<&Identity>, ds: &Dataset) -> Result<bool> {
    let access = &ds.manifest().access;
    if access.public {
        return Ok(true);
    }
    let Some(id) = who else {
        return Ok(false);
    };
    let accounts = &state.accounts;
    if access.users.iter().any(|p| p.name == id.user)
        && let Some(uid) = accounts.user_id(&id.user).map_err(Error::from)?
        && access
            .users
            .iter()
            .any(|p| p.name == id.user && p.id == uid)
    {
        return Ok(true);
    }
    if access.groups.is_empty() {
        return Ok(false);
    }
    let mine = accounts.memberships(&id.user).map_err(Error::from)?;
    Ok(mine
        .iter()
        .any(|(g, _, gid)| access.groups.iter().any(|p| p.name == *g && p.id == *gid)))
}

/// The datasets `who` may read. A token without `catalogs:read` reads none (403).
pub fn readable(state: &AppState, who: Option<&Identity>) -> Result<Vec<Arc<Dataset>>> {
    if let Some(id) = who {
        id.require(meridian_services::accounts::Scope::ReadCatalogs)
            .map_err(Error::from)?;
    }
    let mut out = Vec::new();
    for d in state.spectra.library.datasets() {
        if may_read(state, who, d)? {
            out.push(d.clone());
        }
    }
    Ok(out)
}

/// ObsCore rows (`dataproduct_type` spectrum) of the public datasets of `library`, in the
/// schema of [`meridian_images::obscore::schema`]: `access_url` is the spectrum's DataLink
/// document under `base_url`, `s_region` an octagon of the fibre's 1.5 arcsecond aperture.
pub fn obscore_batch(
    library: &Library,
    base_url: &str,
    authority: &str,
) -> Result<arrow::record_batch::RecordBatch> {
    use arrow::array::{
        ArrayRef, Float64Builder, Int32Array, Int64Builder, ListBuilder, StringBuilder,
    };
    let schema = meridian_images::obscore::schema();
    let mut s: Vec<StringBuilder> = (0..29).map(|_| StringBuilder::new()).collect();
    let mut f: Vec<Float64Builder> = (0..29).map(|_| Float64Builder::new()).collect();
    let mut l: Vec<Int64Builder> = (0..29).map(|_| Int64Builder::new()).collect();
    let mut region = ListBuilder::new(Float64Builder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Float64, true),
    ));
    let mut n = 0usize;
    let radius_deg = 0.75 / 3600.0;
    for d in library
        .datasets()
        .iter()
        .filter(|d| d.manifest().access.public)
    {
        for r in 0..d.len() as u32 {
            let get = |name: &str| ssa::float(d, name, r);
            let text = |name: &str| ssa::text(d, name, r).map(str::to_string);
            let did = ssa::publisher_did(authority, d.name(), d.sparcl_id(r));
            let ra = get("ra").unwrap_or(0.0);
            let dec = get("dec").unwrap_or(0.0);
            let npix = get("npix").unwrap_or(0.0);
            let (w0, w1) = (get("wavemin").unwrap_or(0.0), get("wavemax").unwrap_or(0.0));
            let t0 = text("dateobs")
                .and_then(|t| meridian_spectra::store::parse_iso(&t))
                .map(|t| t as f64 / 86_400.0 + 40_587.0);
            let exptime = get("exptime");
            s[0].append_value("spectrum");
            s[2].append_value(d.name());
            s[3].append_value(d.sparcl_id(r));
            s[4].append_value(&did);
            s[5].append_value(format!(
                "{base_url}/datalink?ID={}",
                meridian_images::obscore::encode(&did)
            ));
            s[6].append_value("application/x-votable+xml;content=datalink");
            l[7].append_value(((npix * 60.0 + 4000.0) / 1024.0).ceil() as i64);
            s[8].append_value(d.specid(r).to_string());
            f[9].append_value(ra);
            f[10].append_value(dec);
            f[11].append_value(2.0 * radius_deg);
            let cos_dec = dec.to_radians().cos().max(1e-6);
            for k in 0..8 {
                let a = std::f64::consts::PI * 2.0 * k as f64 / 8.0;
                region
                    .values()
                    .append_value((ra + radius_deg * a.cos() / cos_dec).rem_euclid(360.0));
                region
                    .values()
                    .append_value((dec + radius_deg * a.sin()).clamp(-90.0, 90.0));
            }
            region.append(true);
            f[13].append_value(1.5);
            l[14].append_value(1);
            l[15].append_value(1);
            f[16].append_option(t0);
            f[17].append_option(t0.map(|t| t + exptime.unwrap_or(0.0) / 86_400.0));
            f[18].append_option(exptime);
            f[19].append_option(exptime);
            l[20].append_option(t0.map(|_| 1));
            f[21].append_value(w0 * 1e-10);
            f[22].append_value(w1 * 1e-10);
            if npix > 1.0 && w1 > w0 {
                let step = (w1 - w0) / (npix - 1.0);
                f[23].append_value((w0 + w1) / 2.0 / step);
            } else {
                f[23].append_null();
            }
            l[24].append_value(npix as i64);
            s[25].append_value("phot.flux.density;em.wl");
            s[26].append_null();
            s[27].append_option(text("telescope"));
            s[28].append_option(text("instrument"));
            n += 1;
        }
    }
    let kinds = [
        "s", "i", "s", "s", "s", "s", "s", "l", "s", "d", "d", "d", "p", "d", "l", "l", "d", "d",
        "d", "d", "l", "d", "d", "d", "l", "s", "s", "s", "s",
    ];
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(29);
    for (i, k) in kinds.iter().enumerate() {
        columns.push(match *k {
            "s" => Arc::new(s[i].finish()),
            "d" => Arc::new(f[i].finish()),
            "l" => Arc::new(l[i].finish()),
            "i" => Arc::new(Int32Array::from(vec![2; n])),
            _ => Arc::new(region.finish()),
        });
    }
    arrow::record_batch::RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::Internal(format!("the ObsCore rows of spectra: {e}")))
}
