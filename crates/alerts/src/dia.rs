//! Alerts split into the tables they carry.
//!
//! Rubin (`lsst.vX_Y`, with or without a broker's added fields):
//! - `DiaSource`: the alert's `diaSource` and its `prvDiaSources`, one row per
//!   `diaSourceId`;
//! - `DiaForcedSource`: its `prvDiaForcedSources`, one row per `diaForcedSourceId`;
//! - `DiaObject`: its `diaObject`, one row per `diaObjectId` (the last alert's);
//! - `Cutout`: `diaSourceId`, the source's position and the science, template and
//!   difference FITS cutouts.
//!
//! ZTF (`schemavsn` 3.x and 4.x):
//! - `ZtfCandidate`: the `candidate` and the detections among `prv_candidates` (those
//!   with a `candid`), one row per `candid`, with the alert's `objectId`;
//! - `ZtfUpperLimit`: the non-detections among `prv_candidates` (no `candid`), with
//!   `objectId`, placed at their alert's candidate, one row per `upperLimitId` (object,
//!   date and filter);
//! - `Cutout`: `candid`, the candidate's position and the three stamps (gzipped FITS).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, StructArray,
    UInt32Array, new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use crate::{Error, Result};

/// Which survey's alerts a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Rubin Observatory (LSST) alerts.
    Rubin,
    /// Zwicky Transient Facility alerts.
    Ztf,
}

impl Kind {
    /// The kind of alerts with this schema.
    pub fn detect(schema: &Schema) -> Result<Kind> {
        let has = |n: &str| schema.field_with_name(n).is_ok();
        if has("diaSource") {
            Ok(Kind::Rubin)
        } else if has("candidate") && has("objectId") {
            Ok(Kind::Ztf)
        } else {
            let names: Vec<&str> = schema
                .fields()
                .iter()
                .take(8)
                .map(|f| f.name().as_str())
                .collect();
            Err(Error::Shape(format!(
                "neither Rubin alerts (no 'diaSource') nor ZTF alerts (no 'candidate' and \
                 'objectId'); fields: {names:?}..."
            )))
        }
    }

    /// The tables alerts of this kind fill.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Kind::Rubin => &["DiaSource", "DiaForcedSource", "DiaObject", "Cutout"],
            Kind::Ztf => &["ZtfCandidate", "ZtfUpperLimit", "Cutout"],
        }
    }

    /// The column that identifies a row of `table`: rows repeated across alerts (a source
    /// in the history of every later alert of its object) are kept once by it.
    pub fn key(self, table: &str) -> Option<&'static str> {
        match (self, table) {
            (Kind::Rubin, "DiaSource") | (Kind::Rubin, "Cutout") => Some("diaSourceId"),
            (Kind::Rubin, "DiaForcedSource") => Some("diaForcedSourceId"),
            (Kind::Rubin, "DiaObject") => Some("diaObjectId"),
            (Kind::Ztf, "ZtfCandidate") | (Kind::Ztf, "Cutout") => Some("candid"),
            (Kind::Ztf, "ZtfUpperLimit") => Some("upperLimitId"),
            _ => None,
        }
    }
}

/// The tables of a batch of alerts, by name, in [`Kind::tables`] order.
#[derive(Debug)]
pub struct Tables {
    /// The alerts' kind.
    pub kind: Kind,
    /// `(table, rows)`.
    pub tables: Vec<(&'static str, RecordBatch)>,
}

impl Tables {
    /// The rows of `table`.
    pub fn get(&self, table: &str) -> Option<&RecordBatch> {
        self.tables
            .iter()
            .find(|(n, _)| *n == table)
            .map(|(_, b)| b)
    }
}

/// Splits a batch of alerts (one row each) into their tables.
pub fn split(alerts: &RecordBatch) -> Result<Tables> {
    let kind = Kind::detect(&alerts.schema())?;
    let tables = match kind {
        Kind::Rubin => rubin(alerts)?,
        Kind::Ztf => ztf(alerts)?,
    };
    Ok(Tables { kind, tables })
}

pub(crate) fn column<'a>(alerts: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    alerts
        .column_by_name(name)
        .ok_or_else(|| Error::Shape(format!("alerts have no '{name}' field")))
}

pub(crate) fn as_struct<'a>(a: &'a ArrayRef, name: &str) -> Result<&'a StructArray> {
    a.as_struct_opt()
        .ok_or_else(|| Error::Shape(format!("'{name}' is {}, not a record", a.data_type())))
}

/// The rows of a record-valued field (alerts where it is null left out).
pub(crate) fn records(alerts: &RecordBatch, name: &str) -> Result<RecordBatch> {
    let s = as_struct(column(alerts, name)?, name)?;
    let batch = RecordBatch::from(without_nulls(s));
    match s.nulls() {
        Some(n) => Ok(filter_record_batch(
            &batch,
            &BooleanArray::new(n.inner().clone(), None),
        )?),
        None => Ok(batch),
    }
}

/// The struct with its top-level null buffer removed (the rows stay; callers filter them).
pub(crate) fn without_nulls(s: &StructArray) -> StructArray {
    let (fields, columns, _) = s.clone().into_parts();
    StructArray::new(fields, columns, None)
}

/// The elements of a list-of-records field, with the index of the alert each came from.
pub(crate) fn elements(alerts: &RecordBatch, name: &str) -> Result<(RecordBatch, UInt32Array)> {
    let a = column(alerts, name)?;
    let list: &ListArray = a
        .as_list_opt::<i32>()
        .ok_or_else(|| Error::Shape(format!("'{name}' is {}, not a list", a.data_type())))?;
    let offsets = list.value_offsets();
    let (first, last) = (offsets[0] as usize, offsets[list.len()] as usize);
    let values = list.values().slice(first, last - first);
    let s = as_struct(&values, name)?;
    let mut owner = Vec::with_capacity(last - first);
    for i in 0..list.len() {
        if list.is_valid(i) {
            let n = (offsets[i + 1] - offsets[i]) as usize;
            owner.extend(std::iter::repeat_n(i as u32, n));
        } else {
            // A null list has no elements (equal offsets), but keep the count right.
            let n = (offsets[i + 1] - offsets[i]) as usize;
            owner.extend(std::iter::repeat_n(u32::MAX, n));
        }
    }
    let mut keep: Vec<bool> = owner.iter().map(|&o| o != u32::MAX).collect();
    if let Some(n) = s.nulls() {
        for (k, valid) in keep.iter_mut().zip(n.iter()) {
            *k &= valid;
        }
    }
    let keep = BooleanArray::from(keep);
    let batch = filter_record_batch(&RecordBatch::from(without_nulls(s)), &keep)?;
    let owner = arrow::compute::filter(&UInt32Array::from(owner), &keep)?;
    Ok((batch, owner.as_primitive().clone()))
}

/// `batch` with the columns of `schema`: taken by name (cast where the type differs),
/// null where `batch` lacks them.
fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(nullable(schema), columns)?)
}

/// `schema` with every field nullable (rows from different records meet in one table).
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
        schema.metadata().clone(),
    ))
}

/// Rows of `batch` with the first occurrence of each `key` (or the last, with `last`).
/// Rows with a null key are dropped: nothing could address them.
pub fn unique(batch: &RecordBatch, key: &str, last: bool) -> Result<RecordBatch> {
    let k = batch
        .column_by_name(key)
        .ok_or_else(|| Error::Shape(format!("no '{key}' column")))?;
    let k = arrow::compute::cast(k, &DataType::Int64)?;
    let k: &Int64Array = k.as_primitive::<Int64Type>();
    let mut seen = HashSet::with_capacity(k.len());
    let mut keep = vec![false; k.len()];
    let order: Box<dyn Iterator<Item = usize>> = if last {
        Box::new((0..k.len()).rev())
    } else {
        Box::new(0..k.len())
    };
    for i in order {
        if k.is_valid(i) && seen.insert(k.value(i)) {
            keep[i] = true;
        }
    }
    Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
}

/// Forced sources as schemas before v7.1 carry them (no position of their own), placed
/// where they were measured: their alert's diaObject (its source where it has none).
fn placed(alerts: &RecordBatch, forced: RecordBatch, owner: &UInt32Array) -> Result<RecordBatch> {
    if forced.schema().column_with_name("ra").is_some() {
        return Ok(forced);
    }
    let source = as_struct(column(alerts, "diaSource")?, "diaSource")?;
    let object = match alerts.column_by_name("diaObject") {
        Some(c) => Some(as_struct(c, "diaObject")?),
        None => None,
    };
    let mut fields: Vec<Field> = forced
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = forced.columns().to_vec();
    for name in ["ra", "dec"] {
        let from_source = arrow::compute::cast(
            source
                .column_by_name(name)
                .ok_or_else(|| Error::Shape(format!("'diaSource' has no '{name}'")))?,
            &DataType::Float64,
        )?;
        let at_alert = match object.and_then(|o| Some((o, o.column_by_name(name)?))) {
            Some((o, c)) => {
                let c = arrow::compute::cast(c, &DataType::Float64)?;
                let use_object: BooleanArray = (0..c.len())
                    .map(|i| Some(o.is_valid(i) && c.is_valid(i)))
                    .collect();
                arrow::compute::kernels::zip::zip(&use_object, &c, &from_source)?
            }
            None => from_source,
        };
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(take(&at_alert, owner, None)?);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn rubin(alerts: &RecordBatch) -> Result<Vec<(&'static str, RecordBatch)>> {
    let new = records(alerts, "diaSource")?;
    let schema = nullable(&new.schema());
    let (prv, _) = elements(alerts, "prvDiaSources")?;
    let sources = concat_batches(&schema, &[align(&new, &schema)?, align(&prv, &schema)?])?;
    let sources = unique(&sources, "diaSourceId", false)?;

    let (forced, owner) = elements(alerts, "prvDiaForcedSources")?;
    let forced = placed(alerts, forced, &owner)?;
    let forced = unique(&forced, "diaForcedSourceId", false)?;
    let forced = align(&forced, &forced.schema())?;

    let objects = if alerts.column_by_name("diaObject").is_some() {
        let o = records(alerts, "diaObject")?;
        let o = unique(&o, "diaObjectId", true)?;
        align(&o, &o.schema())?
    } else {
        RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "diaObjectId",
            DataType::Int64,
            true,
        )])))
    };

    // The cutouts of each alert's new source, placed at the source.
    let source = as_struct(column(alerts, "diaSource")?, "diaSource")?;
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for name in ["diaSourceId", "ra", "dec"] {
        let c = source
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("'diaSource' has no '{name}'")))?
            .clone();
        fields.push(Field::new(name, c.data_type().clone(), true));
        columns.push(c);
    }
    for name in ["cutoutScience", "cutoutTemplate", "cutoutDifference"] {
        let c = column(alerts, name)?.clone();
        fields.push(Field::new(name, c.data_type().clone(), true));
        columns.push(c);
    }
    let cutouts = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let cutouts = unique(&cutouts, "diaSourceId", false)?;

    Ok(vec![
        ("DiaSource", sources),
        ("DiaForcedSource", forced),
        ("DiaObject", objects),
        ("Cutout", cutouts),
    ])
}

fn ztf(alerts: &RecordBatch) -> Result<Vec<(&'static str, RecordBatch)>> {
    let object_id = column(alerts, "objectId")?.clone();
    let with_object = |batch: &RecordBatch, owner: Option<&UInt32Array>| -> Result<RecordBatch> {
        let ids = match owner {
            Some(o) => take(object_id.as_ref(), o, None)?,
            None => object_id.clone(),
        };
        let mut fields = vec![Arc::new(Field::new(
            "objectId",
            ids.data_type().clone(),
            true,
        ))];
        fields.extend(batch.schema().fields().iter().cloned());
        let mut columns = vec![ids];
        columns.extend(batch.columns().iter().cloned());
        Ok(RecordBatch::try_new(
            nullable(&Arc::new(Schema::new(fields))),
            columns,
        )?)
    };
    let candidate = as_struct(column(alerts, "candidate")?, "candidate")?;
    if candidate.null_count() > 0 {
        return Err(Error::Shape(format!(
            "{} ZTF alert(s) without a candidate",
            candidate.null_count()
        )));
    }
    let new = with_object(&RecordBatch::from(without_nulls(candidate)), None)?;
    let schema = new.schema();
    let (prv, owner) = elements(alerts, "prv_candidates")?;
    let prv = with_object(&prv, Some(&owner))?;
    let detected = arrow::compute::is_not_null(
        prv.column_by_name("candid")
            .ok_or_else(|| Error::Shape("'prv_candidates' have no 'candid'".into()))?,
    )?;
    let not_detected = arrow::compute::not(&detected)?;
    let limits = filter_record_batch(&prv, &not_detected)?;
    let limit_owner = arrow::compute::filter(&owner, &not_detected)?;
    let limits = upper_limits(&limits, limit_owner.as_primitive(), candidate)?;
    let prv_detected = filter_record_batch(&prv, &detected)?;
    let candidates = concat_batches(&schema, &[new.clone(), align(&prv_detected, &schema)?])?;
    let candidates = unique(&candidates, "candid", false)?;

    let candid = column(alerts, "candid")?.clone();
    let mut fields = vec![Field::new("candid", candid.data_type().clone(), true)];
    let mut columns = vec![candid];
    // Cutouts are placed at their candidate.
    for name in ["ra", "dec"] {
        let c = candidate
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("'candidate' has no '{name}'")))?
            .clone();
        fields.push(Field::new(name, c.data_type().clone(), true));
        columns.push(c);
    }
    for name in ["cutoutScience", "cutoutTemplate", "cutoutDifference"] {
        let s = as_struct(column(alerts, name)?, name)?;
        let data = s
            .column_by_name("stampData")
            .ok_or_else(|| Error::Shape(format!("'{name}' has no 'stampData'")))?;
        // A null stamp record leaves its data null.
        let data = match s.nulls() {
            Some(n) => arrow::compute::nullif(
                data,
                &arrow::compute::not(&BooleanArray::new(n.inner().clone(), None))?,
            )?,
            None => data.clone(),
        };
        fields.push(Field::new(name, data.data_type().clone(), true));
        columns.push(data);
    }
    let cutouts = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let cutouts = unique(&cutouts, "candid", false)?;
    Ok(vec![
        ("ZtfCandidate", candidates),
        ("ZtfUpperLimit", limits),
        ("Cutout", cutouts),
    ])
}

/// ZTF's non-detections as rows: without `candid`, placed at their alert's candidate
/// (a non-detection has no position of its own), and identified by `upperLimitId`, a
/// 64-bit FNV-1a hash of the object, the exposure's Julian date and the filter, so that
/// the same limit repeated in later alerts is stored once.
fn upper_limits(
    limits: &RecordBatch,
    owner: &UInt32Array,
    candidate: &StructArray,
) -> Result<RecordBatch> {
    let schema = limits.schema();
    let position = |name: &str| -> Result<ArrayRef> {
        let c = candidate
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("'candidate' has no '{name}'")))?;
        let alert_pos = take(c.as_ref(), owner, None)?;
        match limits.column_by_name(name) {
            // Keep a position the limit has; else its alert's.
            Some(own) if own.data_type() == alert_pos.data_type() => {
                Ok(arrow::compute::kernels::zip::zip(
                    &arrow::compute::is_not_null(own)?,
                    own,
                    &alert_pos,
                )?)
            }
            _ => Ok(alert_pos),
        }
    };
    let (ra, dec) = (position("ra")?, position("dec")?);
    let text = |name: &str| -> Result<ArrayRef> {
        let c = limits
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("'prv_candidates' have no '{name}'")))?;
        Ok(arrow::compute::cast(c, &DataType::Utf8)?)
    };
    let (object, jd, fid) = (text("objectId")?, text("jd")?, text("fid")?);
    let (object, jd, fid) = (
        object.as_string::<i32>(),
        jd.as_string::<i32>(),
        fid.as_string::<i32>(),
    );
    let ids: Int64Array = (0..limits.num_rows())
        .map(|i| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for part in [object.value(i), "|", jd.value(i), "|", fid.value(i)] {
                for b in part.bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            Some(h as i64)
        })
        .collect();
    let mut fields = vec![Arc::new(Field::new("upperLimitId", DataType::Int64, true))];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids)];
    for (i, f) in schema.fields().iter().enumerate() {
        match f.name().as_str() {
            "candid" => {}
            "ra" => {
                fields.push(Arc::new(Field::new("ra", ra.data_type().clone(), true)));
                columns.push(ra.clone());
            }
            "dec" => {
                fields.push(Arc::new(Field::new("dec", dec.data_type().clone(), true)));
                columns.push(dec.clone());
            }
            _ => {
                fields.push(f.clone());
                columns.push(limits.column(i).clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Per alert of `alerts`: why it has no valid position (its `diaSource`'s, or for ZTF its
/// `candidate`'s), or `None` when it has one.
pub fn bad_positions(alerts: &RecordBatch) -> Result<Vec<Option<String>>> {
    let (record, time) = match Kind::detect(&alerts.schema())? {
        Kind::Rubin => ("diaSource", "midpointMjdTai"),
        Kind::Ztf => ("candidate", "jd"),
    };
    let s = as_struct(column(alerts, record)?, record)?;
    // A writer schema that makes the position or the time something else than a number
    // cannot describe these tables (the first one stored would set their column types).
    for name in ["ra", "dec", time] {
        if let Some(c) = s.column_by_name(name)
            && !c.data_type().is_numeric()
        {
            return Err(Error::Shape(format!(
                "'{record}.{name}' is {}, not a number",
                c.data_type()
            )));
        }
    }
    let coordinate = |name: &str| -> Result<ArrayRef> {
        let c = s
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("'{record}' has no '{name}'")))?;
        Ok(arrow::compute::cast(c, &DataType::Float64)?)
    };
    let (ra, dec) = (coordinate("ra")?, coordinate("dec")?);
    let (ra, dec) = (
        ra.as_primitive::<arrow::datatypes::Float64Type>(),
        dec.as_primitive::<arrow::datatypes::Float64Type>(),
    );
    Ok((0..alerts.num_rows())
        .map(|i| {
            if s.is_null(i) {
                return Some(format!("no {record}"));
            }
            let value = |a: &arrow::array::Float64Array| a.is_valid(i).then(|| a.value(i));
            match (value(ra), value(dec)) {
                (Some(r), Some(d)) if r.is_finite() && d.is_finite() && d.abs() <= 90.0 => None,
                (r, d) => Some(format!(
                    "{record} position (ra, dec) = ({}, {}) is not a position",
                    r.map_or("null".into(), |v| v.to_string()),
                    d.map_or("null".into(), |v| v.to_string())
                )),
            }
        })
        .collect())
}
