//! VOTable reader (IVOA VOTable 1.1-1.5): TABLEDATA, BINARY and BINARY2 serialisations of the
//! first TABLE, streamed with `quick-xml`; base64 streams are decoded as they are read.
//!
//! Hand-written on `quick-xml` because no maintained Rust crate reads VOTable into Arrow.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, ListBuilder, StringBuilder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use base64::engine::general_purpose::STANDARD;
use quick_xml::events::{BytesStart, Event};

use crate::detect::open_stream;
use crate::limits::{InputLimits, LimitExceeded, Meter, batch_rows_for};
use crate::{
    BadRows, BatchSource, ByteCounter, ColumnMeta, Compression, Error, ReadOptions, Result,
    apply_override, cast_batch,
};

type Src = BufReader<Box<dyn Read + Send>>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum VoType {
    Boolean,
    Bit,
    UByte,
    Short,
    Int,
    Long,
    Char,
    UnicodeChar,
    Float,
    Double,
    FloatComplex,
    DoubleComplex,
}

impl VoType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "boolean" => Self::Boolean,
            "bit" => Self::Bit,
            "unsignedByte" => Self::UByte,
            "short" => Self::Short,
            "int" => Self::Int,
            "long" => Self::Long,
            "char" => Self::Char,
            "unicodeChar" => Self::UnicodeChar,
            "float" => Self::Float,
            "double" => Self::Double,
            "floatComplex" => Self::FloatComplex,
            "doubleComplex" => Self::DoubleComplex,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::Boolean | Self::Bit | Self::UByte | Self::Char => 1,
            Self::Short | Self::UnicodeChar => 2,
            Self::Int | Self::Float => 4,
            Self::Long | Self::Double | Self::FloatComplex => 8,
            Self::DoubleComplex => 16,
        }
    }

    fn is_text(self) -> bool {
        matches!(self, Self::Char | Self::UnicodeChar)
    }
}

/// Element count of an arraysize: None for scalars, Some(None) for variable, Some(Some(n));
/// an error for a fixed size whose element count overflows.
fn parse_arraysize(a: Option<&str>) -> Result<Option<Option<usize>>, String> {
    let Some(a) = a.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    if a.ends_with('*') {
        return Ok(Some(None));
    }
    let mut n: usize = 1;
    for d in a.split('x') {
        let d = d.trim().parse::<usize>().unwrap_or(1);
        n = n
            .checked_mul(d)
            .ok_or_else(|| format!("arraysize '{a}' is too large to exist"))?;
    }
    Ok(Some(Some(n)))
}

/// Longest DESCRIPTION kept, characters.
const MAX_DESCRIPTION: usize = 64 << 10;

#[derive(Debug, Clone)]
struct VoField {
    name: String,
    vo_type: VoType,
    /// None: scalar; Some(None): variable length; Some(Some(n)): fixed length n.
    arraysize: Option<Option<usize>>,
    null: Option<String>,
    meta: ColumnMeta,
    /// DALI xtype (timestamp, point, circle, polygon...), kept so that it is written back.
    xtype: Option<String>,
    /// Not representable in Arrow here (bit, complex): read and dropped.
    skipped: bool,
}

impl VoField {
    fn data_type(&self) -> DataType {
        let scalar = match self.vo_type {
            VoType::Boolean => DataType::Boolean,
            VoType::UByte => DataType::UInt8,
            VoType::Short => DataType::Int16,
            VoType::Int => DataType::Int32,
            VoType::Long => DataType::Int64,
            VoType::Float => DataType::Float32,
            VoType::Double => DataType::Float64,
            VoType::Char | VoType::UnicodeChar => return DataType::Utf8,
            _ => DataType::Null,
        };
        match self.arraysize {
            None | Some(Some(1)) => scalar,
            _ => DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        }
    }

    fn is_list(&self) -> bool {
        !self.vo_type.is_text() && !matches!(self.arraysize, None | Some(Some(1)))
    }
}

/// One parsed cell, held until the whole row is known to be good.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<f64>),
}

enum Builder {
    Bool(BooleanBuilder),
    U8(UInt8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    List(ListBuilder<Float64Builder>),
}

impl Builder {
    fn new(t: &DataType) -> Self {
        match t {
            DataType::Boolean => Self::Bool(BooleanBuilder::new()),
            DataType::UInt8 => Self::U8(UInt8Builder::new()),
            DataType::Int16 => Self::I16(Int16Builder::new()),
            DataType::Int32 => Self::I32(Int32Builder::new()),
            DataType::Int64 => Self::I64(Int64Builder::new()),
            DataType::Float32 => Self::F32(Float32Builder::new()),
            DataType::Float64 => Self::F64(Float64Builder::new()),
            DataType::List(_) => Self::List(ListBuilder::new(Float64Builder::new())),
            _ => Self::Str(StringBuilder::new()),
        }
    }

    fn append(&mut self, c: Cell) {
        match (self, c) {
            (Self::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Self::U8(b), Cell::Int(v)) => b.append_value(v as u8),
            (Self::I16(b), Cell::Int(v)) => b.append_value(v as i16),
            (Self::I32(b), Cell::Int(v)) => b.append_value(v as i32),
            (Self::I64(b), Cell::Int(v)) => b.append_value(v),
            (Self::F32(b), Cell::Float(v)) => b.append_value(v as f32),
            (Self::F64(b), Cell::Float(v)) => b.append_value(v),
            (Self::Str(b), Cell::Str(v)) => b.append_value(v),
            (Self::List(b), Cell::List(v)) => {
                b.values().append_slice(&v);
                b.append(true);
            }
            (Self::Bool(b), _) => b.append_null(),
            (Self::U8(b), _) => b.append_null(),
            (Self::I16(b), _) => b.append_null(),
            (Self::I32(b), _) => b.append_null(),
            (Self::I64(b), _) => b.append_null(),
            (Self::F32(b), _) => b.append_null(),
            (Self::F64(b), _) => b.append_null(),
            (Self::Str(b), _) => b.append_null(),
            (Self::List(b), _) => b.append(false),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::U8(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(b.finish()),
            Self::List(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Bool(b) => b.len(),
            Self::U8(b) => b.len(),
            Self::I16(b) => b.len(),
            Self::I32(b) => b.len(),
            Self::I64(b) => b.len(),
            Self::F32(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::Str(b) => b.len(),
            Self::List(b) => b.len(),
        }
    }
}

/// Reads base64 text up to the closing `<` of a STREAM element, dropping whitespace.
struct Base64Text {
    inner: Src,
    done: bool,
}

impl Read for Base64Text {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n == 0 && !self.done {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "VOTable ends inside a STREAM",
                ));
            }
            let mut used = 0;
            for &b in buf {
                if b == b'<' {
                    self.done = true;
                    break;
                }
                used += 1;
                if !b.is_ascii_whitespace() {
                    out[n] = b;
                    n += 1;
                    if n == out.len() {
                        break;
                    }
                }
            }
            self.inner.consume(used);
        }
        Ok(n)
    }
}

enum State {
    TableData(Box<quick_xml::Reader<Src>>),
    Binary {
        stream: Box<dyn Read + Send>,
        binary2: bool,
    },
    Done,
}

pub(crate) struct VoTableReader {
    path: PathBuf,
    state: State,
    fields: Vec<VoField>,
    file_schema: SchemaRef,
    schema: SchemaRef,
    builders: Vec<Builder>,
    batch_rows: usize,
    skip_bad_rows: bool,
    bad: BadRows,
    row: u64,
    meter: Meter,
}

/// The text an entity or character reference in XML text stands for (`&amp;`, `&#233;`);
/// an unknown entity is kept as written.
pub fn xml_reference(r: &quick_xml::events::BytesRef) -> String {
    let name = r.decode().unwrap_or_default();
    match name.as_ref() {
        "lt" => "<".to_string(),
        "gt" => ">".to_string(),
        "amp" => "&".to_string(),
        "quot" => "\"".to_string(),
        "apos" => "'".to_string(),
        n => r
            .resolve_char_ref()
            .ok()
            .flatten()
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("&{n};")),
    }
}

fn attr(e: &BytesStart, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

impl BatchSource for VoTableReader {
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

impl VoTableReader {
    pub(crate) fn open(
        path: &Path,
        compression: Compression,
        options: &ReadOptions,
        counter: ByteCounter,
        mut meter: Meter,
    ) -> Result<Self> {
        // An XML event (then a row) is bounded by the record limit.
        meter.bound_records();
        let limits = meter.limits().clone();
        let src: Src = BufReader::with_capacity(
            1 << 16,
            open_stream(path, compression, counter, &mut meter)?,
        );
        let mut xml = quick_xml::Reader::from_reader(src);
        xml.config_mut().trim_text(true);
        let mut buf = Vec::new();
        let mut fields: Vec<VoField> = Vec::new();
        let mut in_table = false;
        let mut current: Option<VoField> = None;
        let mut in_description = false;
        let mut data_kind: Option<&'static str> = None;
        let mut depth = 0usize;
        let mut row_bytes: u64 = 0;
        let xml_err = |xml: &quick_xml::Reader<Src>, e: quick_xml::Error| {
            Error::format(
                path,
                format!("invalid XML near byte {}: {e}", xml.buffer_position()),
            )
        };
        loop {
            let event = xml
                .read_event_into(&mut buf)
                .map_err(|e| xml_err(&xml, e))?;
            meter.mark();
            match event {
                Event::Start(_) => {
                    depth += 1;
                    if depth > limits.max_xml_depth {
                        return Err(Error::limit(
                            path,
                            format!(
                                "XML elements are nested deeper than the limit of {}",
                                limits.max_xml_depth
                            ),
                        ));
                    }
                }
                Event::End(_) => depth = depth.saturating_sub(1),
                _ => {}
            }
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let empty = matches!(event, Event::Empty(_));
                    match e.local_name().as_ref() {
                        b"TABLE" => in_table = true,
                        b"FIELD" if in_table && data_kind.is_none() => {
                            let name = attr(e, b"name")
                                .or_else(|| attr(e, b"ID"))
                                .unwrap_or_else(|| format!("col{}", fields.len() + 1));
                            let dt = attr(e, b"datatype").unwrap_or_default();
                            let vo_type = VoType::parse(&dt).ok_or_else(|| {
                                Error::format(
                                    path,
                                    format!("FIELD '{name}' has unknown datatype '{dt}'"),
                                )
                            })?;
                            if fields.len() >= limits.max_columns {
                                return Err(Error::limit(
                                    path,
                                    format!(
                                        "the TABLE has more than {} FIELDs, the limit",
                                        limits.max_columns
                                    ),
                                ));
                            }
                            let arraysize = parse_arraysize(attr(e, b"arraysize").as_deref())
                                .map_err(|m| Error::format(path, format!("FIELD '{name}': {m}")))?;
                            // A fixed-size value is read whole: it must fit in a record.
                            let value_bytes = match arraysize {
                                None => vo_type.size() as u64,
                                Some(None) => 4,
                                Some(Some(n)) if vo_type == VoType::Bit => n.div_ceil(8) as u64,
                                Some(Some(n)) => (n as u64).saturating_mul(vo_type.size() as u64),
                            };
                            row_bytes = row_bytes.saturating_add(value_bytes);
                            if value_bytes > limits.max_record_bytes
                                || row_bytes > limits.max_record_bytes
                            {
                                return Err(Error::limit(
                                    path,
                                    format!(
                                        "FIELD '{name}' (arraysize '{}') makes rows longer than \
                                         the limit of {} bytes",
                                        attr(e, b"arraysize").unwrap_or_default(),
                                        limits.max_record_bytes
                                    ),
                                ));
                            }
                            let skipped = matches!(
                                vo_type,
                                VoType::Bit | VoType::FloatComplex | VoType::DoubleComplex
                            ) || (vo_type == VoType::Boolean && arraysize.is_some());
                            let f = VoField {
                                name,
                                vo_type,
                                arraysize,
                                null: None,
                                meta: ColumnMeta {
                                    unit: attr(e, b"unit"),
                                    ucd: attr(e, b"ucd"),
                                    utype: attr(e, b"utype"),
                                    description: None,
                                },
                                xtype: attr(e, b"xtype").filter(|x| !x.is_empty()),
                                skipped,
                            };
                            if empty {
                                fields.push(f);
                            } else {
                                current = Some(f);
                            }
                        }
                        b"DESCRIPTION" if current.is_some() => in_description = !empty,
                        b"VALUES" => {
                            if let (Some(f), Some(n)) = (current.as_mut(), attr(e, b"null")) {
                                f.null = Some(n);
                            }
                        }
                        b"TABLEDATA" => {
                            data_kind = Some("TABLEDATA");
                            break;
                        }
                        b"BINARY" => data_kind = Some("BINARY"),
                        b"BINARY2" => data_kind = Some("BINARY2"),
                        b"FITS" => {
                            return Err(Error::format(
                                path,
                                "VOTable FITS serialisation is not supported; convert it to BINARY2 or read the FITS file",
                            ));
                        }
                        b"STREAM" if data_kind.is_some() => {
                            let enc = attr(e, b"encoding").unwrap_or_default();
                            if enc != "base64" {
                                return Err(Error::format(
                                    path,
                                    format!(
                                        "STREAM encoding '{enc}' is not supported (only inline base64)"
                                    ),
                                ));
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                Event::Text(ref t) if in_description => {
                    if let Some(f) = current.as_mut() {
                        let text = t.decode().map(|c| c.into_owned()).unwrap_or_default();
                        let d = f.meta.description.get_or_insert_with(String::new);
                        if d.len() < MAX_DESCRIPTION {
                            d.push_str(text.trim());
                        }
                    }
                }
                Event::End(ref e) => match e.local_name().as_ref() {
                    b"FIELD" => {
                        if let Some(f) = current.take() {
                            fields.push(f);
                        }
                    }
                    b"DESCRIPTION" => in_description = false,
                    b"TABLE" if in_table => {
                        // A table without DATA: zero rows.
                        break;
                    }
                    _ => {}
                },
                Event::Eof => {
                    if !in_table {
                        return Err(Error::format(path, "no TABLE element in this VOTable"));
                    }
                    break;
                }
                _ => {}
            }
            buf.clear();
        }
        if fields.is_empty() {
            return Err(Error::format(path, "the VOTable TABLE has no FIELD"));
        }
        let arrow_fields: Vec<Field> = fields
            .iter()
            .filter(|f| !f.skipped)
            .map(|f| {
                let field = f.meta.merge_into(&Field::new(&f.name, f.data_type(), true));
                match &f.xtype {
                    Some(x) => {
                        let mut m = field.metadata().clone();
                        m.insert("xtype".to_string(), x.clone());
                        field.with_metadata(m)
                    }
                    None => field,
                }
            })
            .collect();
        for f in fields.iter().filter(|f| f.skipped) {
            tracing::warn!(file = %path.display(), column = %f.name, "skipping VOTable column of unsupported datatype");
        }
        let file_schema = Arc::new(Schema::new(arrow_fields));
        let schema = apply_override(file_schema.clone(), options.schema.as_ref(), path)?;
        let state = match data_kind {
            Some("TABLEDATA") => State::TableData(Box::new(xml)),
            Some(kind) => {
                let text = Base64Text {
                    inner: xml.into_inner(),
                    done: false,
                };
                let stream = base64::read::DecoderReader::new(text, &STANDARD);
                State::Binary {
                    stream: Box::new(stream),
                    binary2: kind == "BINARY2",
                }
            }
            None => State::Done,
        };
        let builders = file_schema
            .fields()
            .iter()
            .map(|f| Builder::new(f.data_type()))
            .collect();
        let batch_rows = batch_rows_for(options.batch_rows, row_bytes, fields.len());
        Ok(Self {
            path: path.to_path_buf(),
            state,
            fields,
            file_schema,
            schema,
            builders,
            batch_rows,
            skip_bad_rows: options.skip_bad_rows,
            bad: BadRows::default(),
            row: 0,
            meter,
        })
    }

    fn value_error(&self, field: &VoField, message: String) -> Error {
        Error::Value {
            file: self.path.clone(),
            location: format!("row {}", self.row),
            column: field.name.clone(),
            message,
        }
    }

    /// Parses the TABLEDATA text of one cell.
    fn parse_text(&self, f: &VoField, text: &str) -> Result<Cell> {
        let t = text.trim();
        if t.is_empty() || f.null.as_deref() == Some(t) {
            return Ok(Cell::Null);
        }
        // Services write these for missing numbers in TABLEDATA; astropy reads them as masked.
        if !f.vo_type.is_text() && matches!(t, "null" | "NULL" | "-" | "--" | "N/A") {
            return Ok(Cell::Null);
        }
        let bad = |what: &str| self.value_error(f, format!("cannot read '{t}' as {what}"));
        if f.vo_type.is_text() {
            return Ok(Cell::Str(text.to_string()));
        }
        if f.is_list() {
            let mut v = Vec::new();
            for tok in t.split_ascii_whitespace() {
                v.push(tok.parse::<f64>().map_err(|_| bad("a list of numbers"))?);
            }
            return Ok(Cell::List(v));
        }
        Ok(match f.vo_type {
            VoType::Boolean => match t.to_ascii_lowercase().as_str() {
                "t" | "true" | "1" => Cell::Bool(true),
                "f" | "false" | "0" => Cell::Bool(false),
                "?" => Cell::Null,
                _ => return Err(bad("a boolean")),
            },
            VoType::Float | VoType::Double => {
                Cell::Float(t.parse().map_err(|_| bad("a floating-point number"))?)
            }
            _ => {
                let v: i64 = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))
                {
                    i64::from_str_radix(h, 16).map_err(|_| bad("an integer"))?
                } else {
                    t.parse().map_err(|_| bad("an integer"))?
                };
                let (lo, hi) = match f.vo_type {
                    VoType::UByte => (0, 255),
                    VoType::Short => (i16::MIN as i64, i16::MAX as i64),
                    VoType::Int => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if v < lo || v > hi {
                    return Err(bad("an integer in range for its datatype"));
                }
                Cell::Int(v)
            }
        })
    }

    fn push_row(&mut self, cells: Vec<Cell>) {
        let mut b = self.builders.iter_mut();
        for (f, c) in self.fields.iter().zip(cells) {
            if !f.skipped {
                b.next().expect("one builder per kept field").append(c);
            }
        }
    }

    /// Reads TABLEDATA rows until the batch is full; false at the end of the table.
    fn fill_tabledata(&mut self) -> Result<bool> {
        let State::TableData(xml) = &mut self.state else {
            return Ok(false);
        };
        let mut xml = std::mem::replace(
            xml,
            Box::new(quick_xml::Reader::from_reader(BufReader::new(
                Box::new(std::io::empty()) as Box<dyn Read + Send>,
            ))),
        );
        let mut buf = Vec::new();
        let mut texts: Vec<Option<String>> = Vec::new();
        // TD cells past the table's FIELDs: counted, not kept.
        let mut extra = 0usize;
        let mut in_td = false;
        let mut more = true;
        let mut depth = 0usize;
        let start = self.meter.total();
        let max_depth = self.meter.limits().max_xml_depth;
        while self.builders[0].len() < self.batch_rows
            && self.meter.total() - start < InputLimits::BATCH_BYTES
        {
            let ev = xml.read_event_into(&mut buf).map_err(|e| {
                Error::format(
                    &self.path,
                    format!("invalid XML in row {}: {e}", self.row + 1),
                )
            })?;
            match ev {
                Event::Start(_) => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(Error::limit(
                            &self.path,
                            format!("XML elements are nested deeper than the limit of {max_depth}"),
                        ));
                    }
                }
                Event::End(_) => depth = depth.saturating_sub(1),
                _ => {}
            }
            let full = texts.len() >= self.fields.len();
            match ev {
                Event::Start(ref e) if e.local_name().as_ref() == b"TR" => {
                    texts.clear();
                    extra = 0;
                }
                Event::Start(ref e) if e.local_name().as_ref() == b"TD" && full => {
                    in_td = false;
                    extra += 1;
                }
                Event::Empty(ref e) if e.local_name().as_ref() == b"TD" && full => extra += 1,
                Event::Start(ref e) if e.local_name().as_ref() == b"TD" => {
                    in_td = true;
                    texts.push(Some(String::new()));
                }
                Event::Empty(ref e) if e.local_name().as_ref() == b"TD" => texts.push(None),
                Event::Text(ref t) if in_td => {
                    let s = t.xml_content().map_err(|e| {
                        Error::format(&self.path, format!("bad text in row {}: {e}", self.row + 1))
                    })?;
                    if let Some(Some(cur)) = texts.last_mut() {
                        cur.push_str(&s);
                    }
                }
                Event::GeneralRef(ref r) if in_td => {
                    if let Some(Some(cur)) = texts.last_mut() {
                        cur.push_str(&xml_reference(r));
                    }
                }
                Event::CData(ref t) if in_td => {
                    if let Some(Some(cur)) = texts.last_mut() {
                        cur.push_str(&String::from_utf8_lossy(t));
                    }
                }
                Event::End(ref e) if e.local_name().as_ref() == b"TD" => in_td = false,
                Event::End(ref e) if e.local_name().as_ref() == b"TR" => {
                    self.row += 1;
                    self.meter.mark();
                    match self.row_from_texts(&texts, extra) {
                        Ok(cells) => self.push_row(cells),
                        Err(e) if self.skip_bad_rows => self.bad.record(e.to_string()),
                        Err(e) => return Err(e),
                    }
                }
                Event::End(ref e) if e.local_name().as_ref() == b"TABLEDATA" => {
                    more = false;
                    break;
                }
                Event::Eof => {
                    return Err(Error::format(
                        &self.path,
                        format!(
                            "VOTable ends inside TABLEDATA after row {} (truncated)",
                            self.row
                        ),
                    ));
                }
                _ => {}
            }
            buf.clear();
        }
        self.state = if more {
            State::TableData(xml)
        } else {
            State::Done
        };
        Ok(more)
    }

    fn row_from_texts(&self, texts: &[Option<String>], extra: usize) -> Result<Vec<Cell>> {
        if texts.len() != self.fields.len() || extra > 0 {
            let f = &self.fields[texts.len().min(self.fields.len() - 1)];
            return Err(self.value_error(
                f,
                format!(
                    "row has {} TD cells but the table has {} FIELDs",
                    texts.len() + extra,
                    self.fields.len()
                ),
            ));
        }
        self.fields
            .iter()
            .zip(texts)
            .map(|(f, t)| match t {
                None => Ok(Cell::Null),
                Some(t) if f.skipped => Ok(Cell::Str(t.clone())),
                Some(t) => self.parse_text(f, t),
            })
            .collect()
    }

    /// Reads BINARY/BINARY2 rows until the batch is full; false at the end of the stream.
    fn fill_binary(&mut self) -> Result<bool> {
        let State::Binary { stream, binary2 } = &mut self.state else {
            return Ok(false);
        };
        let binary2 = *binary2;
        let nmask = if binary2 {
            self.fields.len().div_ceil(8)
        } else {
            0
        };
        let mut mask = vec![0u8; nmask];
        let mut rows = Vec::new();
        let mut more = true;
        let path = self.path.clone();
        let start = self.meter.total();
        let max_value = self.meter.limits().max_record_bytes;
        while rows.len() < self.batch_rows && self.meter.total() - start < InputLimits::BATCH_BYTES
        {
            // The end of the stream may only fall between rows.
            if nmask > 0 || !self.fields.is_empty() {
                let mut first = [0u8; 1];
                let n = loop {
                    match stream.read(&mut first) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(&path, e)),
                    }
                };
                if n == 0 {
                    more = false;
                    break;
                }
                let row_no = self.row + rows.len() as u64 + 1;
                let mut chained = std::io::Cursor::new(first).chain(&mut *stream);
                if nmask > 0 {
                    chained
                        .read_exact(&mut mask)
                        .map_err(|e| truncated(&path, row_no, e))?;
                }
                let mut cells = Vec::with_capacity(self.fields.len());
                for (i, f) in self.fields.iter().enumerate() {
                    let is_null = nmask > 0 && mask[i / 8] & (0x80 >> (i % 8)) != 0;
                    let cell = read_binary_cell(&mut chained, f, max_value)
                        .map_err(|e| truncated(&path, row_no, e))?;
                    cells.push(if is_null { Cell::Null } else { cell });
                }
                rows.push(cells);
                self.meter.mark();
            }
        }
        self.row += rows.len() as u64;
        for cells in rows {
            self.push_row(cells);
        }
        if !more {
            self.state = State::Done;
        }
        Ok(more)
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self.state {
            State::TableData(_) => {
                self.fill_tabledata()?;
            }
            State::Binary { .. } => {
                self.fill_binary()?;
            }
            State::Done => {}
        }
        if self.builders.is_empty() || self.builders[0].len() == 0 {
            return Ok(None);
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.file_schema.clone(), arrays)?;
        cast_batch(batch, &self.schema, &self.path).map(Some)
    }
}

fn truncated(path: &Path, row: u64, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::format(
            path,
            format!("binary stream ends inside row {row} (truncated)"),
        )
    } else {
        Error::io(path, e)
    }
}

/// Reads one BINARY/BINARY2 value of `f`, at most `max_bytes` long: a variable length is
/// checked before anything is allocated, and memory follows the bytes actually there.
fn read_binary_cell(r: &mut dyn Read, f: &VoField, max_bytes: u64) -> std::io::Result<Cell> {
    let count = match f.arraysize {
        None => 1,
        Some(Some(n)) => n as u64,
        Some(None) => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            u32::from_be_bytes(b) as u64
        }
    };
    let bytes = if f.vo_type == VoType::Bit {
        count.div_ceil(8)
    } else {
        count.saturating_mul(f.vo_type.size() as u64)
    };
    if bytes > max_bytes {
        return Err(std::io::Error::other(LimitExceeded(format!(
            "column '{}': a value of {bytes} bytes is longer than the limit of {max_bytes} bytes",
            f.name
        ))));
    }
    let mut buf = Vec::new();
    r.take(bytes).read_to_end(&mut buf)?;
    if (buf.len() as u64) < bytes {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    // The scalar decoders below need their bytes.
    if buf.is_empty() && !f.vo_type.is_text() && !f.is_list() && !f.skipped {
        return Ok(Cell::Null);
    }
    if f.skipped {
        return Ok(Cell::Null);
    }
    let is_null_int =
        |v: i64| f.null.as_deref().and_then(|n| n.trim().parse::<i64>().ok()) == Some(v);
    Ok(match f.vo_type {
        VoType::Char => {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Cell::Str(String::from_utf8_lossy(&buf[..end]).trim_end().to_string())
        }
        VoType::UnicodeChar => {
            let units: Vec<u16> = buf
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            Cell::Str(String::from_utf16_lossy(&units).trim_end().to_string())
        }
        _ if f.is_list() => {
            let w = f.vo_type.size();
            Cell::List(
                buf.chunks_exact(w)
                    .map(|c| scalar_f64(f.vo_type, c))
                    .collect(),
            )
        }
        VoType::Boolean => match buf[0] {
            b'T' | b't' | b'1' => Cell::Bool(true),
            b'F' | b'f' | b'0' => Cell::Bool(false),
            _ => Cell::Null,
        },
        VoType::Float => Cell::Float(f32::from_be_bytes(buf[..4].try_into().unwrap()) as f64),
        VoType::Double => Cell::Float(f64::from_be_bytes(buf[..8].try_into().unwrap())),
        _ => {
            let v = scalar_f64(f.vo_type, &buf) as i64;
            let v = match f.vo_type {
                VoType::UByte => buf[0] as i64,
                VoType::Short => i16::from_be_bytes([buf[0], buf[1]]) as i64,
                VoType::Int => i32::from_be_bytes(buf[..4].try_into().unwrap()) as i64,
                VoType::Long => i64::from_be_bytes(buf[..8].try_into().unwrap()),
                _ => v,
            };
            if is_null_int(v) {
                Cell::Null
            } else {
                Cell::Int(v)
            }
        }
    })
}

fn scalar_f64(t: VoType, b: &[u8]) -> f64 {
    match t {
        VoType::UByte => b[0] as f64,
        VoType::Short => i16::from_be_bytes([b[0], b[1]]) as f64,
        VoType::Int => i32::from_be_bytes(b[..4].try_into().unwrap()) as f64,
        VoType::Long => i64::from_be_bytes(b[..8].try_into().unwrap()) as f64,
        VoType::Float => f32::from_be_bytes(b[..4].try_into().unwrap()) as f64,
        VoType::Double => f64::from_be_bytes(b[..8].try_into().unwrap()),
        _ => f64::NAN,
    }
}
