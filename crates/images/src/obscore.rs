//! The ObsCore 1.1 table (`ivoa.obscore`) of image collections: one row per dataset, every
//! mandatory column with its unit, UCD and utype, `s_region` a DALI polygon.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Float64Builder, Int32Array, Int64Array, ListBuilder, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::collection::{Collection, Dataset};
use crate::{Error, Result};

/// (name, type, unit, UCD, utype after "obscore:", description).
const COLUMNS: [(&str, &str, &str, &str, &str, &str); 29] = [
    (
        "dataproduct_type",
        "s",
        "",
        "meta.code.class",
        "ObsDataset.dataProductType",
        "Data product type: image",
    ),
    (
        "calib_level",
        "i",
        "",
        "meta.code;obs.calib",
        "ObsDataset.calibLevel",
        "Calibration level (0 to 4)",
    ),
    (
        "obs_collection",
        "s",
        "",
        "meta.id",
        "DataID.Collection",
        "Name of the data collection",
    ),
    (
        "obs_id",
        "s",
        "",
        "meta.id",
        "DataID.observationID",
        "Identifier of the dataset within its collection",
    ),
    (
        "obs_publisher_did",
        "s",
        "",
        "meta.ref.ivoid",
        "Curation.publisherDID",
        "IVOA publisher's dataset identifier",
    ),
    (
        "access_url",
        "s",
        "",
        "meta.ref.url",
        "Access.Reference",
        "URL of the dataset",
    ),
    (
        "access_format",
        "s",
        "",
        "meta.code.mime",
        "Access.Format",
        "Content type of the dataset at access_url",
    ),
    (
        "access_estsize",
        "l",
        "kbyte",
        "phys.size;meta.file",
        "Access.Size",
        "Estimated size of the dataset",
    ),
    (
        "target_name",
        "s",
        "",
        "meta.id;src",
        "Target.Name",
        "Target observed (OBJECT)",
    ),
    (
        "s_ra",
        "d",
        "deg",
        "pos.eq.ra",
        "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1",
        "Right ascension of the image centre, ICRS",
    ),
    (
        "s_dec",
        "d",
        "deg",
        "pos.eq.dec",
        "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C2",
        "Declination of the image centre, ICRS",
    ),
    (
        "s_fov",
        "d",
        "deg",
        "phys.angSize;instr.fov",
        "Char.SpatialAxis.Coverage.Bounds.Extent.diameter",
        "Diameter of the circle about the centre that holds the image",
    ),
    (
        "s_region",
        "p",
        "deg",
        "pos.outline;obs.field",
        "Char.SpatialAxis.Coverage.Support.Area",
        "Outline of the image: its corners, ICRS",
    ),
    (
        "s_resolution",
        "d",
        "arcsec",
        "pos.angResolution",
        "Char.SpatialAxis.Resolution.Refval.value",
        "Spatial resolution (the pixel scale at the centre)",
    ),
    (
        "s_xel1",
        "l",
        "",
        "meta.number",
        "Char.SpatialAxis.numBins1",
        "Pixels along the first axis",
    ),
    (
        "s_xel2",
        "l",
        "",
        "meta.number",
        "Char.SpatialAxis.numBins2",
        "Pixels along the second axis",
    ),
    (
        "t_min",
        "d",
        "d",
        "time.start;obs.exposure",
        "Char.TimeAxis.Coverage.Bounds.Limits.StartTime",
        "Start of the exposure, MJD",
    ),
    (
        "t_max",
        "d",
        "d",
        "time.end;obs.exposure",
        "Char.TimeAxis.Coverage.Bounds.Limits.StopTime",
        "End of the exposure, MJD",
    ),
    (
        "t_exptime",
        "d",
        "s",
        "time.duration;obs.exposure",
        "Char.TimeAxis.Coverage.Support.Extent",
        "Exposure time",
    ),
    (
        "t_resolution",
        "d",
        "s",
        "time.resolution",
        "Char.TimeAxis.Resolution.Refval.value",
        "Time resolution",
    ),
    (
        "t_xel",
        "l",
        "",
        "meta.number",
        "Char.TimeAxis.numBins",
        "Time bins",
    ),
    (
        "em_min",
        "d",
        "m",
        "em.wl;stat.min",
        "Char.SpectralAxis.Coverage.Bounds.Limits.LoLimit",
        "Shortest wavelength of the band",
    ),
    (
        "em_max",
        "d",
        "m",
        "em.wl;stat.max",
        "Char.SpectralAxis.Coverage.Bounds.Limits.HiLimit",
        "Longest wavelength of the band",
    ),
    (
        "em_res_power",
        "d",
        "",
        "spect.resolution",
        "Char.SpectralAxis.Resolution.ResolPower.refVal",
        "Spectral resolving power",
    ),
    (
        "em_xel",
        "l",
        "",
        "meta.number",
        "Char.SpectralAxis.numBins",
        "Spectral bins",
    ),
    (
        "o_ucd",
        "s",
        "",
        "meta.ucd",
        "Char.ObservableAxis.ucd",
        "UCD of the observable",
    ),
    (
        "pol_states",
        "s",
        "",
        "meta.code;phys.polarization",
        "Char.PolarizationAxis.stateList",
        "Polarization states",
    ),
    (
        "facility_name",
        "s",
        "",
        "meta.id;instr.tel",
        "Provenance.ObsConfig.Facility.name",
        "Telescope (TELESCOP)",
    ),
    (
        "instrument_name",
        "s",
        "",
        "meta.id;instr",
        "Provenance.ObsConfig.Instrument.name",
        "Instrument (INSTRUME)",
    ),
];

/// The table's schema, with each column's unit, UCD, utype and description as field
/// metadata (the keys of `meridian_formats::meta`) and `s_region`'s DALI xtype.
pub fn schema() -> SchemaRef {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|(name, kind, unit, ucd, utype, description)| {
            let t = match *kind {
                "s" => DataType::Utf8,
                "i" => DataType::Int32,
                "l" => DataType::Int64,
                "d" => DataType::Float64,
                _ => DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            };
            let mut meta = HashMap::from([
                (meridian_formats::meta::UCD.to_string(), ucd.to_string()),
                (
                    meridian_formats::meta::UTYPE.to_string(),
                    format!("obscore:{utype}"),
                ),
                (
                    meridian_formats::meta::DESCRIPTION.to_string(),
                    description.to_string(),
                ),
            ]);
            if !unit.is_empty() {
                meta.insert(meridian_formats::meta::UNIT.to_string(), unit.to_string());
            }
            if *kind == "p" {
                meta.insert("xtype".to_string(), "polygon".to_string());
            }
            // DataLink service descriptors name the identifier column by this ID.
            if *name == "obs_publisher_did" {
                meta.insert(
                    meridian_formats::meta::XML_ID.to_string(),
                    "obs_publisher_did".to_string(),
                );
            }
            let nullable = !matches!(
                *name,
                "dataproduct_type"
                    | "calib_level"
                    | "obs_collection"
                    | "obs_id"
                    | "obs_publisher_did"
            );
            Field::new(*name, t, nullable).with_metadata(meta)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The dataset's publisher DID.
pub fn publisher_did(authority: &str, collection: &str, id: &str) -> String {
    format!("ivo://{authority}/images/{collection}?{id}")
}

/// The rows of `collections`, DIDs under `authority`, access URLs under `base_url` (the
/// service's address): see [`rows`].
pub fn batch(collections: &[Collection], base_url: &str, authority: &str) -> Result<RecordBatch> {
    let dids: Vec<(&str, &Dataset, String)> = collections
        .iter()
        .flat_map(|c| {
            c.datasets
                .iter()
                .map(move |d| (c.name.as_str(), d, publisher_did(authority, &c.name, &d.id)))
        })
        .collect();
    let rows: Vec<(&str, &Dataset, &str)> = dids
        .iter()
        .map(|(c, d, did)| (*c, *d, did.as_str()))
        .collect();
    self::rows(&rows, base_url)
}

/// ObsCore rows of (collection, dataset, publisher DID): `access_url` is the dataset's
/// DataLink document, `{base_url}/datalink?ID=<DID>` (its file, cutouts, preview and
/// header are links there).
pub fn rows(rows: &[(&str, &Dataset, &str)], base_url: &str) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&str, &Dataset, &str) -> Option<String>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|(c, d, did)| f(c, d, did))
                .collect::<StringArray>(),
        )
    };
    let dbl = |f: &dyn Fn(&Dataset) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(|(_, d, _)| f(d)).collect::<Float64Array>())
    };
    let long = |f: &dyn Fn(&Dataset) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(|(_, d, _)| f(d)).collect::<Int64Array>())
    };
    let mut region = ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Float64,
        true,
    )));
    for (_, d, _) in rows {
        for (ra, dec) in &d.corners_deg {
            region.values().append_value(*ra);
            region.values().append_value(*dec);
        }
        region.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        s(&|_, _, _| Some("image".into())),
        Arc::new(Int32Array::from(vec![
            crate::sia::CALIB_LEVEL as i32;
            rows.len()
        ])),
        s(&|c, _, _| Some(c.to_string())),
        s(&|_, d, _| Some(d.id.clone())),
        s(&|_, _, did| Some(did.to_string())),
        s(&|_, _, did| Some(format!("{base_url}/datalink?ID={}", encode(did)))),
        s(&|_, _, _| Some(crate::sia::DATALINK_FORMAT.into())),
        long(&|d| Some(d.file_bytes.div_ceil(1024) as i64)),
        s(&|_, d, _| d.target.clone()),
        dbl(&|d| Some(d.ra_deg)),
        dbl(&|d| Some(d.dec_deg)),
        dbl(&|d| Some(d.fov_deg)),
        Arc::new(region.finish()),
        dbl(&|d| Some(d.pixel_arcsec)),
        long(&|d| Some(d.width as i64)),
        long(&|d| Some(d.height as i64)),
        dbl(&|d| d.t_min_mjd),
        dbl(&|d| d.t_max_mjd),
        dbl(&|d| d.exptime_s),
        dbl(&|d| d.exptime_s),
        long(&|d| d.t_min_mjd.map(|_| 1)),
        dbl(&|d| d.em_min_m),
        dbl(&|d| d.em_max_m),
        dbl(&|_| None),
        long(&|d| d.em_min_m.map(|_| 1)),
        s(&|_, _, _| Some("phot.count".into())),
        s(&|_, _, _| None),
        s(&|_, d, _| d.facility.clone()),
        s(&|_, d, _| d.instrument.clone()),
    ];
    RecordBatch::try_new(schema(), columns)
        .map_err(|e| Error::Invalid(format!("the ObsCore table: {e}")))
}

/// Percent-encodes what a query string value may not hold.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
