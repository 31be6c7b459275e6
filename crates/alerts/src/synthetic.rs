//! A synthetic night of alerts ([`meridian_synth::night`]) written as Rubin alert packets:
//! one Avro object container file per visit, one alert per block (as `meridian alerts
//! replay` publishes them), in any Rubin schema version (`lsst.vX_Y.alert`, from
//! [`crate::schemas::lsst_schema_tree`]).
//!
//! Each alert is first a JSON document of the values the night knows (the DiaSource, its
//! earlier sources and forced photometry, the DiaObject summary); it is then conformed to
//! the schema (fields the version lacks dropped, nullable fields it does not know null,
//! required ones zero), decoded into Arrow by `arrow-json` with the schema's own Arrow form,
//! and encoded by `arrow-avro`'s writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_avro::schema::SCHEMA_METADATA_KEY;
use arrow_avro::writer::format::AvroBinaryFormat;
use meridian_synth::BANDS;
use meridian_synth::night::{Alert, Measurement, Night};
use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// What a night's writing produced.
#[derive(Debug, Clone)]
pub struct WrittenNight {
    /// One file per visit with alerts, in time order.
    pub files: Vec<PathBuf>,
    /// Alerts written.
    pub alerts: u64,
    /// Visits of the night (some may have raised no alert).
    pub visits: usize,
}

/// Writes the alerts of `night` into `dir` (`visit-<number>.avro`, each written under a
/// temporary name and renamed when complete), in the alert schema `schema` (one resolved
/// document, as [`crate::schemas::lsst_schema_tree`] gives them). `progress` receives the
/// number of alerts written so far.
pub fn write_night(
    night: &Night,
    schema: &str,
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WrittenNight> {
    let writer = PacketWriter::new(schema)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let visits = night.visits();
    let done = AtomicU64::new(0);
    let written: Vec<Option<(PathBuf, u64)>> = visits
        .par_iter()
        .map(|visit| {
            let alerts = night.alerts(visit);
            if alerts.is_empty() {
                return Ok(None);
            }
            let path = dir.join(format!("visit-{:012}.avro", visit.visit));
            writer.write_file(&path, &alerts)?;
            let n = alerts.len() as u64;
            progress(done.fetch_add(n, Ordering::Relaxed) + n);
            Ok(Some((path, n)))
        })
        .collect::<Result<_>>()?;
    let written: Vec<(PathBuf, u64)> = written.into_iter().flatten().collect();
    Ok(WrittenNight {
        alerts: written.iter().map(|w| w.1).sum(),
        files: written.into_iter().map(|w| w.0).collect(),
        visits: visits.len(),
    })
}

/// Alerts into Avro in one writer schema.
struct PacketWriter {
    avro: Value,
    names: Names,
    arrow: SchemaRef,
}

type Names = std::collections::HashMap<String, Value>;

impl PacketWriter {
    fn new(schema: &str) -> Result<Self> {
        let mut avro: Value = serde_json::from_str(&crate::schemas::normalize(schema)?)
            .map_err(|e| Error::Avro(format!("alert schema: not JSON: {e}")))?;
        null_first(&mut avro);
        let normalized = avro.to_string();
        let mut names = Names::new();
        collect_names(&avro, None, &mut names);
        // The Arrow form of the schema, as the reader gives it: from an empty container.
        let (arrow, _) =
            crate::avro::read_container("alert schema", &empty_container(&normalized))?;
        let mut metadata = arrow.metadata().clone();
        metadata.insert(SCHEMA_METADATA_KEY.to_string(), normalized);
        let arrow = Arc::new(Schema::new_with_metadata(arrow.fields().clone(), metadata));
        Ok(Self { avro, names, arrow })
    }

    /// The alerts as one Arrow batch of the writer schema.
    fn batch(&self, alerts: &[Alert]) -> Result<RecordBatch> {
        let rows: Vec<Value> = alerts
            .iter()
            .map(|a| conform(&self.avro, Some(&alert_values(a)), &self.names))
            .collect();
        let mut decoder = arrow::json::ReaderBuilder::new(self.arrow.clone())
            .with_batch_size(rows.len().max(1))
            .build_decoder()?;
        decoder.serialize(&rows)?;
        let batch = decoder
            .flush()?
            .ok_or_else(|| Error::Avro("no alert to write".into()))?;
        // arrow-json builds the schema without its metadata; the writer wants it.
        Ok(RecordBatch::try_new(
            self.arrow.clone(),
            batch.columns().to_vec(),
        )?)
    }

    fn write_file(&self, path: &Path, alerts: &[Alert]) -> Result<()> {
        let batch = self.batch(alerts)?;
        let avro =
            |e: arrow_avro::errors::AvroError| Error::Avro(format!("{}: {e}", path.display()));
        // arrow-avro's encoder writes the records in the writer schema; the container
        // around them is written here, because arrow-avro's file writer advertises a schema
        // regenerated from the Arrow one (a named record defined at each use, which other
        // readers refuse) rather than the schema given.
        let mut encoder = arrow_avro::writer::WriterBuilder::new((*self.arrow).clone())
            .build_encoder::<AvroBinaryFormat>()
            .map_err(avro)?;
        encoder.encode(&batch).map_err(avro)?;
        let rows = encoder.flush();
        let schema = &self.arrow.metadata()[SCHEMA_METADATA_KEY];
        let sync = sync_marker(path);
        let mut out = container_header(schema, &sync);
        // One alert per block: `meridian alerts replay` sends each block as a message.
        for i in 0..rows.len() {
            let row = rows.row(i).map_err(avro)?;
            crate::avro::write_long(&mut out, 1);
            crate::avro::write_long(&mut out, row.len() as i64);
            out.extend_from_slice(&row);
            out.extend_from_slice(&sync);
        }
        let tmp = path.with_extension("partial");
        let io = |source| Error::Io {
            path: tmp.display().to_string(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut file, &out).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// A container's 16-byte sync marker, drawn from its file name (any bytes do; these make
/// the same night byte-identical).
fn sync_marker(path: &Path) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, path.file_name()).hash(&mut h);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Unions with null put null first (Rubin's schemas do; those written by Spark, as
/// Fink's, put it last, which `arrow-avro`'s writer does not encode), and fields of such
/// unions default to null: the data written is the same, described the usual way.
fn null_first(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(branches)) = o.get_mut("type")
                && let Some(at) = branches.iter().position(|b| b == "null")
                && at > 0
            {
                let null = branches.remove(at);
                branches.insert(0, null);
                if o.contains_key("default") {
                    o.insert("default".into(), Value::Null);
                }
            }
            for (_, child) in o.iter_mut() {
                null_first(child);
            }
        }
        Value::Array(a) => {
            if let Some(at) = a.iter().position(|b| b == "null")
                && at > 0
            {
                let null = a.remove(at);
                a.insert(0, null);
            }
            a.iter_mut().for_each(null_first);
        }
        _ => {}
    }
}

/// The header of an uncompressed object container file of `schema` with marker `sync`.
fn container_header(schema: &str, sync: &[u8; 16]) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    crate::avro::write_long(&mut out, 2);
    for (k, v) in [("avro.schema", schema), ("avro.codec", "null")] {
        crate::avro::write_long(&mut out, k.len() as i64);
        out.extend_from_slice(k.as_bytes());
        crate::avro::write_long(&mut out, v.len() as i64);
        out.extend_from_slice(v.as_bytes());
    }
    crate::avro::write_long(&mut out, 0);
    out.extend_from_slice(sync);
    out
}

/// An object container file of no records whose header holds `schema`.
fn empty_container(schema: &str) -> Vec<u8> {
    container_header(schema, &[0u8; 16])
}

/// Every named type of `schema`, by full and by short name.
fn collect_names(v: &Value, namespace: Option<&str>, names: &mut Names) {
    match v {
        Value::Object(o) => {
            let mut ns = namespace.map(str::to_string);
            if let (Some(Value::String(t)), Some(Value::String(name))) =
                (o.get("type"), o.get("name"))
                && matches!(t.as_str(), "record" | "enum" | "fixed" | "error")
            {
                if let Some(Value::String(n)) = o.get("namespace") {
                    ns = Some(n.clone());
                }
                let full = match &ns {
                    Some(n) if !n.is_empty() => format!("{n}.{name}"),
                    _ => name.clone(),
                };
                names.insert(full, v.clone());
                names.entry(name.clone()).or_insert_with(|| v.clone());
            }
            for (_, child) in o {
                collect_names(child, ns.as_deref(), names);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_names(c, namespace, names)),
        _ => {}
    }
}

/// `value` shaped to Avro type `t`: a record's fields in the schema (missing ones null
/// when nullable, else zero), arrays item by item, unions with null taking null or their
/// other branch.
fn conform(t: &Value, value: Option<&Value>, names: &Names) -> Value {
    let value = value.filter(|v| !v.is_null());
    match t {
        Value::String(s) => match s.as_str() {
            "null" => Value::Null,
            "boolean" => value.cloned().unwrap_or(Value::Bool(false)),
            "int" | "long" => value.cloned().unwrap_or(json!(0)),
            "float" | "double" => value.cloned().unwrap_or(json!(0.0)),
            "string" | "bytes" => value.cloned().unwrap_or(json!("")),
            named => match names.get(named) {
                Some(def) => conform(def, value, names),
                None => Value::Null,
            },
        },
        Value::Array(branches) => {
            let nullable = branches.iter().any(|b| b == "null");
            match (value, branches.iter().find(|b| *b != "null")) {
                (None, _) if nullable => Value::Null,
                (v, Some(b)) => conform(b, v, names),
                (_, None) => Value::Null,
            }
        }
        Value::Object(o) => match o.get("type") {
            Some(Value::String(k)) if k == "record" || k == "error" => {
                let given = value.and_then(Value::as_object);
                let mut out = Map::new();
                for f in o
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(name), Some(ft)) =
                        (f.get("name").and_then(Value::as_str), f.get("type"))
                    else {
                        continue;
                    };
                    out.insert(
                        name.to_string(),
                        conform(ft, given.and_then(|g| g.get(name)), names),
                    );
                }
                Value::Object(out)
            }
            Some(Value::String(k)) if k == "array" => Value::Array(
                value
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .map(|i| conform(&o["items"], Some(i), names))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some(Value::String(k)) if k == "enum" => value
                .cloned()
                .or_else(|| o.get("symbols").and_then(|s| s.get(0)).cloned())
                .unwrap_or(Value::Null),
            Some(Value::String(k)) if k == "fixed" => value.cloned().unwrap_or_else(|| {
                json!("00".repeat(o.get("size").and_then(Value::as_u64).unwrap_or(0) as usize))
            }),
            Some(Value::String(k)) if k == "map" => value.cloned().unwrap_or(json!({})),
            // A primitive with attributes (a logical type).
            Some(inner) => conform(inner, value, names),
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

const MJD_PROCESSING_DELAY_D: f64 = 60.0 / 86_400.0;

/// The DiaSource of a detection.
fn dia_source(m: &Measurement, a: &Alert) -> Value {
    let o = &a.variable.object;
    let f = m.psf_flux_njy;
    json!({
        "diaSourceId": m.id(o),
        "visit": m.visit.visit,
        "detector": m.detector,
        "diaObjectId": o.id,
        "midpointMjdTai": m.visit.mjd,
        "exposureTime": 30.0,
        "ra": m.ra_deg,
        "dec": m.dec_deg,
        "raErr": m.pos_err_deg,
        "decErr": m.pos_err_deg,
        "x": m.x,
        "y": m.y,
        "xErr": m.pos_err_deg * 3600.0 / 0.2,
        "yErr": m.pos_err_deg * 3600.0 / 0.2,
        "psfFlux": f,
        "psfFluxErr": m.psf_flux_err_njy,
        "snr": f.abs() / m.psf_flux_err_njy,
        "scienceFlux": m.template_flux_njy + f,
        "scienceFluxErr": m.psf_flux_err_njy,
        "templateFlux": m.template_flux_njy,
        "templateFluxErr": m.template_flux_njy * 0.01,
        "isNegative": f < 0.0,
        "extendedness": if o.is_galaxy { 1.0 } else { 0.0 },
        "reliability": 0.95,
        "band": m.visit.band_name(),
        "bboxSize": 32,
        "timeProcessedMjdTai": m.visit.mjd + MJD_PROCESSING_DELAY_D,
    })
}

/// The DiaForcedSource of a measurement at the object's position.
fn dia_forced(m: &Measurement, a: &Alert) -> Value {
    let o = &a.variable.object;
    json!({
        "diaForcedSourceId": m.id(o),
        "diaObjectId": o.id,
        "ra": m.ra_deg,
        "dec": m.dec_deg,
        "visit": m.visit.visit,
        "detector": m.detector,
        "x": m.x,
        "y": m.y,
        "psfFlux": m.psf_flux_njy,
        "psfFluxErr": m.psf_flux_err_njy,
        "midpointMjdTai": m.visit.mjd,
        "scienceFlux": m.template_flux_njy + m.psf_flux_njy,
        "scienceFluxErr": m.psf_flux_err_njy,
        "band": m.visit.band_name(),
        "timeProcessedMjdTai": m.visit.mjd + MJD_PROCESSING_DELAY_D,
    })
}

/// The DiaObject summary as of this alert: its detections so far (this one included) and
/// its earlier forced photometry, per band.
fn dia_object(a: &Alert) -> Value {
    let o = &a.variable.object;
    let detections: Vec<&Measurement> = a
        .previous_sources
        .iter()
        .chain(std::iter::once(&a.source))
        .collect();
    let mut v = Map::new();
    v.insert("diaObjectId".into(), json!(o.id));
    v.insert("validityStartMjdTai".into(), json!(a.source.visit.mjd));
    v.insert("ra".into(), json!(o.ra_deg));
    v.insert("dec".into(), json!(o.dec_deg));
    v.insert("radecMjdTai".into(), json!(a.source.visit.mjd));
    v.insert("nDiaSources".into(), json!(detections.len()));
    v.insert(
        "firstDiaSourceMjdTai".into(),
        json!(detections[0].visit.mjd),
    );
    v.insert("lastDiaSourceMjdTai".into(), json!(a.source.visit.mjd));
    for (b, name) in BANDS.iter().enumerate() {
        let fluxes: Vec<&Measurement> = detections
            .iter()
            .copied()
            .filter(|m| m.visit.band == b)
            .collect();
        v.insert(format!("{name}_psfFluxNdata"), json!(fluxes.len()));
        if !fluxes.is_empty() {
            let n = fluxes.len() as f64;
            let mean = fluxes.iter().map(|m| m.psf_flux_njy).sum::<f64>() / n;
            let err_mean = fluxes.iter().map(|m| m.psf_flux_err_njy).sum::<f64>() / n;
            let sigma = (fluxes
                .iter()
                .map(|m| (m.psf_flux_njy - mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt();
            let (min, max) = fluxes
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
                    (lo.min(m.psf_flux_njy), hi.max(m.psf_flux_njy))
                });
            v.insert(format!("{name}_psfFluxMean"), json!(mean));
            v.insert(format!("{name}_psfFluxMeanErr"), json!(err_mean / n.sqrt()));
            v.insert(format!("{name}_psfFluxSigma"), json!(sigma));
            v.insert(format!("{name}_psfFluxErrMean"), json!(err_mean));
            v.insert(format!("{name}_psfFluxMin"), json!(min));
            v.insert(format!("{name}_psfFluxMax"), json!(max));
            v.insert(
                format!("{name}_scienceFluxMean"),
                json!(fluxes[0].template_flux_njy + mean),
            );
        }
        let forced: Vec<&Measurement> = a
            .previous_forced
            .iter()
            .filter(|m| m.visit.band == b)
            .collect();
        if !forced.is_empty() {
            let n = forced.len() as f64;
            let mean = forced.iter().map(|m| m.psf_flux_njy).sum::<f64>() / n;
            let err = forced.iter().map(|m| m.psf_flux_err_njy).sum::<f64>() / n / n.sqrt();
            v.insert(format!("{name}_fpFluxMean"), json!(mean));
            v.insert(format!("{name}_fpFluxMeanErr"), json!(err));
        }
    }
    Value::Object(v)
}

/// Every value of an alert the night knows, under Rubin's field names (of all versions:
/// the schema keeps those it has).
fn alert_values(a: &Alert) -> Value {
    let id = a.source.id(&a.variable.object);
    json!({
        "alertId": id,
        "diaSourceId": id,
        "diaSource": dia_source(&a.source, a),
        "prvDiaSources": a.previous_sources.iter().map(|m| dia_source(m, a)).collect::<Vec<_>>(),
        "prvDiaForcedSources": a.previous_forced.iter().map(|m| dia_forced(m, a)).collect::<Vec<_>>(),
        "diaObject": dia_object(a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_synth::SurveySpec;
    use meridian_synth::night::NightSpec;

    /// The Rubin sample's writer schema (lsst.v10_0 with Fink's fields).
    fn sample_schema() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/alerts/rubin_fink_sample_7alerts.avro");
        crate::avro::file_schema(&p).unwrap()
    }

    #[test]
    fn a_night_reads_back_as_rubin_alerts() {
        let night = Night::plan(&NightSpec {
            survey: SurveySpec {
                objects: 20_000,
                ..Default::default()
            },
            visits: 6,
            fields: 2,
            field_radius_deg: 10.0,
            variable_fraction: 0.5,
            history_visits: 5,
            ..Default::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let written = write_night(&night, &sample_schema(), dir.path(), &|_| {}).unwrap();
        assert!(written.alerts > 10, "{written:?}");
        let mut rows = 0;
        for f in &written.files {
            assert_eq!(crate::avro::count_records(f).unwrap(), {
                let (_, batches) = crate::avro::read_file(f).unwrap();
                batches.iter().map(|b| b.num_rows()).sum::<usize>()
            });
            let (_, batches) = crate::avro::read_file(f).unwrap();
            for b in &batches {
                rows += b.num_rows();
                let tables = crate::dia::split(b).unwrap();
                assert!(tables.get("DiaSource").unwrap().num_rows() > 0);
            }
        }
        assert_eq!(rows as u64, written.alerts);
        // No temporary file is left.
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .all(|e| e.unwrap().path().extension().unwrap() == "avro")
        );
    }
}
