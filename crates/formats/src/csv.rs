//! CSV/TSV reader.
//!
//! Written on the `csv` crate rather than `arrow-csv` because ingest must be able to skip a
//! bad row (and say which line and column it was) and go on; `arrow-csv` fails the whole
//! batch on the first unparsable value.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::detect::open_stream;
use crate::limits::{InputLimits, Meter, batch_rows_for};
use crate::{BadRows, BatchSource, ByteCounter, Compression, Error, Format, ReadOptions, Result};

/// How a column's text is parsed; the Arrow type of the batch may be a narrower cast of it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

impl Kind {
    fn for_type(t: &DataType) -> Kind {
        match t {
            DataType::Boolean => Kind::Bool,
            t if t.is_integer() => Kind::Int,
            t if t.is_floating() => Kind::Float,
            _ => Kind::Str,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "a boolean",
            Kind::Str => "text",
        }
    }
}

fn is_null(s: &[u8]) -> bool {
    s.is_empty() || s.eq_ignore_ascii_case(b"null") || s == b"\\N"
}

fn parse_int(s: &str) -> Option<i64> {
    lexical_core::parse(s.trim().as_bytes()).ok()
}

fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim().as_bytes();
    lexical_core::parse(t)
        .ok()
        .or_else(|| match t.to_ascii_lowercase().as_slice() {
            b"nan" | b"+nan" | b"-nan" => Some(f64::NAN),
            b"inf" | b"+inf" | b"infinity" | b"+infinity" => Some(f64::INFINITY),
            b"-inf" | b"-infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" => Some(true),
        "false" | "f" => Some(false),
        _ => None,
    }
}

enum ColBuf {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Str { data: Vec<u8>, offsets: Vec<i32> },
}

struct Column {
    buf: ColBuf,
    valid: Vec<bool>,
}

impl Column {
    /// A column buffer for about `cap` rows (memory is taken as rows arrive).
    fn new(kind: Kind, cap: usize) -> Self {
        let cap = cap.min(1024);
        let buf = match kind {
            Kind::Int => ColBuf::Int(Vec::with_capacity(cap)),
            Kind::Float => ColBuf::Float(Vec::with_capacity(cap)),
            Kind::Bool => ColBuf::Bool(Vec::with_capacity(cap)),
            Kind::Str => ColBuf::Str {
                data: Vec::new(),
                offsets: vec![0],
            },
        };
        Self {
            buf,
            valid: Vec::with_capacity(cap),
        }
    }

    /// Appends a value; returns false if it cannot be parsed (nothing appended then).
    fn push(&mut self, raw: &[u8]) -> bool {
        if is_null(raw) {
            match &mut self.buf {
                ColBuf::Int(v) => v.push(0),
                ColBuf::Float(v) => v.push(f64::NAN),
                ColBuf::Bool(v) => v.push(false),
                ColBuf::Str { data, offsets } => offsets.push(data.len() as i32),
            }
            self.valid.push(false);
            return true;
        }
        let Ok(s) = std::str::from_utf8(raw) else {
            return false;
        };
        let ok = match &mut self.buf {
            ColBuf::Int(v) => parse_int(s).map(|x| v.push(x)).is_some(),
            ColBuf::Float(v) => parse_float(s).map(|x| v.push(x)).is_some(),
            ColBuf::Bool(v) => parse_bool(s).map(|x| v.push(x)).is_some(),
            ColBuf::Str { data, offsets } => {
                data.extend_from_slice(raw);
                offsets.push(data.len() as i32);
                true
            }
        };
        if ok {
            self.valid.push(true);
        }
        ok
    }

    fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        match &mut self.buf {
            ColBuf::Int(v) => v.truncate(rows),
            ColBuf::Float(v) => v.truncate(rows),
            ColBuf::Bool(v) => v.truncate(rows),
            ColBuf::Str { data, offsets } => {
                offsets.truncate(rows + 1);
                data.truncate(*offsets.last().unwrap_or(&0) as usize);
            }
        }
    }

    fn finish(&mut self, kind: Kind, cap: usize) -> ArrayRef {
        let Column { buf, valid } = std::mem::replace(self, Column::new(kind, cap));
        let nulls = if valid.iter().all(|v| *v) {
            None
        } else {
            Some(NullBuffer::from(valid))
        };
        match buf {
            ColBuf::Int(v) => Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls)),
            ColBuf::Float(v) => Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls)),
            ColBuf::Bool(v) => Arc::new(BooleanArray::new(v.into(), nulls)),
            ColBuf::Str { data, offsets } => {
                // Each value was checked to be UTF-8 when pushed.
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                Arc::new(StringArray::new(offsets, Buffer::from_vec(data), nulls))
            }
        }
    }
}

pub(crate) struct CsvReader {
    path: PathBuf,
    reader: csv::Reader<Box<dyn Read + Send>>,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    columns: Vec<Column>,
    /// Rows read to infer types, not yet in a batch; a row of the wrong length is kept as
    /// its error only (its fields could be many).
    pending: VecDeque<Result<csv::ByteRecord>>,
    record: csv::ByteRecord,
    batch_rows: usize,
    skip_bad_rows: bool,
    bad: BadRows,
    done: bool,
    meter: Meter,
}

impl BatchSource for CsvReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.read_batch()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn bad_rows(&self) -> BadRows {
        self.bad.clone()
    }
}

impl CsvReader {
    pub(crate) fn open(
        path: &Path,
        format: Format,
        compression: Compression,
        options: &ReadOptions,
        counter: ByteCounter,
        mut meter: Meter,
    ) -> Result<Self> {
        // A line (or quoted field) is bounded by the record limit, whatever the file says.
        meter.bound_records();
        let stream = open_stream(path, compression, counter, &mut meter)?;
        let delimiter = if format == Format::Tsv { b'\t' } else { b',' };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .comment(Some(b'#'))
            .has_headers(true)
            .buffer_capacity(1 << 20)
            .from_reader(stream);
        let headers = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        meter.mark();
        let limits = meter.limits().clone();
        limits.check_column_count(headers.len(), path)?;
        if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
            return Err(Error::format(
                path,
                "no header line: the first line must name the columns",
            ));
        }
        let mut names = Vec::with_capacity(headers.len());
        for (i, h) in headers.iter().enumerate() {
            let name = std::str::from_utf8(h)
                .map_err(|_| Error::format(path, format!("header column {} is not UTF-8", i + 1)))?
                .trim()
                .trim_start_matches('\u{feff}')
                .to_string();
            if name.is_empty() {
                return Err(Error::format(
                    path,
                    format!("header column {} has no name", i + 1),
                ));
            }
            if names.contains(&name) {
                return Err(Error::format(
                    path,
                    format!("header names column '{name}' twice"),
                ));
            }
            names.push(name);
        }
        if let Some(o) = &options.schema {
            o.check_columns(names.iter().map(String::as_str), path)?;
        }
        // Sample rows to infer the types of columns the schema file does not fix, within a
        // batch's bytes.
        let mut pending = VecDeque::new();
        let mut record = csv::ByteRecord::new();
        let sample_start = meter.total();
        while pending.len() < options.infer_rows
            && meter.total() - sample_start < InputLimits::BATCH_BYTES
            && reader
                .read_byte_record(&mut record)
                .map_err(|e| csv_error(path, e))?
        {
            meter.mark();
            let blank = record.len() == 1 && record[0].is_empty();
            pending.push_back(if record.len() == names.len() || blank {
                Ok(record.clone())
            } else {
                Err(length_error(path, &names, &record))
            });
        }
        let mut fields = Vec::with_capacity(names.len());
        let mut kinds = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let spec = options.schema.as_ref().and_then(|o| o.column(name));
            let data_type = match spec.and_then(|s| s.data_type()) {
                Some(t) => t,
                None => infer(
                    pending
                        .iter()
                        .filter_map(|r| r.as_ref().ok().and_then(|r| r.get(i))),
                ),
            };
            let field = Field::new(name, data_type.clone(), true);
            let field = match spec {
                Some(s) => s.apply(&field),
                None => field,
            };
            kinds.push(Kind::for_type(&data_type));
            fields.push(field);
        }
        let columns = kinds
            .iter()
            .map(|k| Column::new(*k, options.batch_rows))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            schema: Arc::new(Schema::new(fields)),
            kinds,
            columns,
            pending,
            record: csv::ByteRecord::new(),
            batch_rows: batch_rows_for(options.batch_rows, 1, names.len()),
            skip_bad_rows: options.skip_bad_rows,
            bad: BadRows::default(),
            done: false,
            meter,
        })
    }

    /// Appends one record; returns an error describing a bad row.
    fn push_record(&mut self, record: &csv::ByteRecord, rows: usize) -> Result<()> {
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != self.kinds.len() {
            let names: Vec<String> = self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            return Err(length_error(&self.path, &names, record));
        }
        for (i, raw) in record.iter().enumerate() {
            if !self.columns[i].push(raw) {
                for c in &mut self.columns[..i] {
                    c.truncate(rows);
                }
                return Err(Error::Value {
                    file: self.path.clone(),
                    location: format!("line {line}"),
                    column: self.schema.field(i).name().clone(),
                    message: format!(
                        "cannot read '{}' as {} ({})",
                        String::from_utf8_lossy(raw),
                        self.kinds[i].name(),
                        self.schema.field(i).data_type()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Appends rows to the column buffers until the batch is full (in rows or bytes) or the
    /// input ends.
    fn fill(&mut self, record: &mut csv::ByteRecord, rows: &mut usize) -> Result<()> {
        let start = self.meter.total();
        while *rows < self.batch_rows && self.meter.total() - start < InputLimits::BATCH_BYTES {
            let result = match self.pending.pop_front() {
                Some(Err(e)) => Err(e),
                Some(Ok(r)) => self.push_nonblank(&r, *rows),
                None => {
                    if !self
                        .reader
                        .read_byte_record(record)
                        .map_err(|e| csv_error(&self.path, e))?
                    {
                        self.done = true;
                        break;
                    }
                    self.meter.mark();
                    self.push_nonblank(record, *rows)
                }
            };
            match result {
                Ok(true) => *rows += 1,
                Ok(false) => {}
                Err(e) if self.skip_bad_rows => self.bad.record(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends a record unless it is a blank line (inside the file, not a row); whether it
    /// was appended.
    fn push_nonblank(&mut self, record: &csv::ByteRecord, rows: usize) -> Result<bool> {
        if record.len() == 1 && record[0].is_empty() {
            return Ok(false);
        }
        self.push_record(record, rows).map(|()| true)
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut rows = 0;
        // One record buffer reused for every row of the file.
        let mut record = std::mem::take(&mut self.record);
        let result = self.fill(&mut record, &mut rows);
        self.record = record;
        result?;
        if rows == 0 {
            return Ok(None);
        }
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (i, col) in self.columns.iter_mut().enumerate() {
            let array = col.finish(self.kinds[i], self.batch_rows);
            let target = self.schema.field(i).data_type();
            if array.data_type() == target {
                arrays.push(array);
            } else {
                let opts = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                arrays.push(
                    arrow::compute::cast_with_options(&array, target, &opts).map_err(|e| {
                        Error::Value {
                            file: self.path.clone(),
                            location: "a batch ending near this point".into(),
                            column: self.schema.field(i).name().clone(),
                            message: format!("value out of range for {target}: {e}"),
                        }
                    })?,
                );
            }
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), arrays)?))
    }
}

/// The error of a row whose field count is not the header's.
fn length_error(path: &Path, names: &[String], record: &csv::ByteRecord) -> Error {
    let line = record.position().map(|p| p.line()).unwrap_or(0);
    Error::Value {
        file: path.to_path_buf(),
        location: format!("line {line}"),
        column: names[record.len().min(names.len() - 1)].clone(),
        message: format!(
            "row has {} fields but the header has {}",
            record.len(),
            names.len()
        ),
    }
}

fn infer<'a>(values: impl Iterator<Item = &'a [u8]>) -> DataType {
    let (mut int, mut float, mut boolean, mut any) = (true, true, true, false);
    for raw in values {
        if is_null(raw) {
            continue;
        }
        any = true;
        let Ok(s) = std::str::from_utf8(raw) else {
            return DataType::Utf8;
        };
        if int && parse_int(s).is_none() {
            int = false;
        }
        if float && parse_float(s).is_none() {
            float = false;
        }
        if boolean && parse_bool(s).is_none() {
            boolean = false;
        }
        if !int && !float && !boolean {
            return DataType::Utf8;
        }
    }
    match (any, int, float, boolean) {
        (false, ..) => DataType::Utf8,
        (_, true, ..) => DataType::Int64,
        (_, _, true, _) => DataType::Float64,
        (_, _, _, true) => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => {
            let err = Error::io(path, io);
            match (err, line) {
                (Error::Format { file, message }, Some(l)) => Error::Format {
                    file,
                    message: format!("{message} (near line {l})"),
                },
                (err, _) => err,
            }
        }
        other => Error::format(
            path,
            format!("malformed CSV near line {}: {other:?}", line.unwrap_or(0)),
        ),
    }
}
