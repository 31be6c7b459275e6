//! FITS binary table reader (Pence et al. 2010, FITS standard 4.0, section 7.3).
//!
//! Hand-written because the Rust FITS crates either wrap CFITSIO (a C dependency and no
//! streaming from a gzip pipe) or read whole HDUs into memory; this reader streams rows from
//! a plain or gzip-compressed file in batches, with TNULL, TSCAL/TZERO and TUNIT applied.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::detect::open_stream;
use crate::limits::{Meter, batch_rows_for};
use crate::{
    BatchSource, ByteCounter, ColumnMeta, Compression, Error, InputLimits, ReadOptions, Result,
    apply_override, cast_batch,
};

const BLOCK: usize = 2880;
const CARD: usize = 80;

/// Most header blocks of one HDU (a header of 100,000 cards).
const MAX_HEADER_BLOCKS: usize = 100_000 / (BLOCK / CARD) + 1;

/// Most columns (TFIELDS) and axes (NAXIS) the FITS standard allows.
const MAX_FITS_INDEX: i64 = 999;

/// Header of one HDU: ordered (keyword, value, comment), and where each keyword first is.
/// String values are unquoted; other values are as written.
#[derive(Debug, Clone)]
pub struct Header {
    cards: Vec<(String, String, String)>,
    /// Each card's 80 characters, as written.
    images: Vec<String>,
    index: std::collections::HashMap<String, usize>,
}

impl Header {
    fn new(cards: Vec<(String, String, String)>, images: Vec<String>) -> Self {
        let mut index = std::collections::HashMap::with_capacity(cards.len());
        for (i, c) in cards.iter().enumerate() {
            index.entry(c.0.clone()).or_insert(i);
        }
        Self {
            cards,
            images,
            index,
        }
    }

    /// Every card as written (80 characters), in order, with its keyword.
    pub fn card_images(&self) -> impl Iterator<Item = (&str, &str)> {
        self.cards
            .iter()
            .zip(&self.images)
            .map(|(c, i)| (c.0.as_str(), i.as_str()))
    }

    fn card(&self, key: &str) -> Option<&(String, String, String)> {
        self.index.get(key).map(|i| &self.cards[*i])
    }

    /// The value of `key` (its first card), as written (strings unquoted).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.card(key).map(|c| c.1.as_str())
    }

    /// Every card, in order: (keyword, value, comment).
    pub fn cards(&self) -> &[(String, String, String)] {
        &self.cards
    }

    fn comment(&self, key: &str) -> Option<&str> {
        self.card(key)
            .map(|c| c.2.as_str())
            .filter(|c| !c.is_empty())
    }

    /// A non-negative integer keyword no larger than `max`.
    fn count(&self, key: &str, max: i64, path: &Path) -> Result<u64> {
        let v = self.int(key, path)?;
        if !(0..=max).contains(&v) {
            return Err(Error::format(
                path,
                format!("FITS keyword {key} = {v} is out of range (0 to {max})"),
            ));
        }
        Ok(v as u64)
    }

    fn int(&self, key: &str, path: &Path) -> Result<i64> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::format(path, format!("FITS header lacks the {key} keyword")))?;
        v.trim().parse().map_err(|_| {
            Error::format(
                path,
                format!("FITS keyword {key} = '{v}' is not an integer"),
            )
        })
    }

    /// A number keyword (Fortran's `D` exponents too); `None` when absent or not a number.
    pub fn float(&self, key: &str) -> Option<f64> {
        self.get(key)
            .and_then(|v| v.trim().replace(['D', 'd'], "E").parse().ok())
    }

    /// A non-empty string keyword.
    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
    }
}

impl Header {
    /// A header from its 80-byte cards up to END, as a file holds them.
    pub fn parse(cards: &[u8]) -> Result<Self> {
        let mut padded = cards.to_vec();
        padded.resize(padded.len().div_ceil(BLOCK) * BLOCK, b' ');
        let here = Path::new("<header>");
        read_header(&mut std::io::Cursor::new(padded), here)?
            .ok_or_else(|| Error::format(here, "empty FITS header"))
    }
}

/// Parses one card into (keyword, value, comment); string values are unquoted.
fn parse_card(card: &[u8]) -> (String, String, String) {
    let text = String::from_utf8_lossy(card);
    let key = text.get(..8).unwrap_or(&text).trim().to_string();
    if text.get(8..10) != Some("= ") {
        return (key, String::new(), String::new());
    }
    let rest = text[10..].trim_start();
    if let Some(body) = rest.strip_prefix('\'') {
        // A quoted string: '' is an escaped quote.
        let mut value = String::new();
        let mut chars = body.char_indices().peekable();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, c)| *c) == Some('\'') {
                    value.push('\'');
                    chars.next();
                } else {
                    end = i + 1;
                    break;
                }
            } else {
                value.push(c);
            }
        }
        let comment = body[end..]
            .trim_start()
            .strip_prefix('/')
            .unwrap_or("")
            .trim()
            .to_string();
        (key, value.trim_end().to_string(), comment)
    } else {
        let (v, c) = rest.split_once('/').unwrap_or((rest, ""));
        (key, v.trim().to_string(), c.trim().to_string())
    }
}

fn read_header(stream: &mut dyn Read, path: &Path) -> Result<Option<Header>> {
    Ok(read_header_blocks(stream, path)?.map(|(h, _)| h))
}

/// The next header and the number of 2880-byte blocks it took.
fn read_header_blocks(stream: &mut dyn Read, path: &Path) -> Result<Option<(Header, usize)>> {
    let mut cards = Vec::new();
    let mut images = Vec::new();
    let mut block = vec![0u8; BLOCK];
    let mut first = true;
    let mut blocks = 0;
    loop {
        blocks += 1;
        if blocks > MAX_HEADER_BLOCKS {
            return Err(Error::format(path, "FITS header has no END card"));
        }
        match read_full(stream, &mut block) {
            Ok(0) if first => return Ok(None),
            Ok(n) if n < BLOCK => {
                return Err(Error::format(
                    path,
                    "FITS file ends inside a header (truncated)",
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        first = false;
        for card in block.chunks(CARD) {
            let parsed = parse_card(card);
            if parsed.0 == "END" {
                return Ok(Some((Header::new(cards, images), blocks)));
            }
            if !parsed.0.is_empty() {
                cards.push(parsed);
                images.push(String::from_utf8_lossy(card).into_owned());
            }
        }
        if cards.len() > 100_000 {
            return Err(Error::format(path, "FITS header has no END card"));
        }
    }
}

/// One HDU of a FITS file: its header and where its data unit lies in the (decompressed)
/// file.
#[derive(Debug, Clone)]
pub struct HduHeader {
    /// The HDU's header.
    pub header: Header,
    /// Byte offset of its data unit from the start of the (decompressed) file.
    pub data_offset: u64,
    /// Bytes of its data unit, before padding.
    pub data_bytes: u64,
}

/// The headers of every HDU of the FITS file at `path` (plain, or gzip-compressed whatever
/// its name), checking each declared data unit against the file's length.
pub fn read_headers(path: &Path) -> Result<Vec<HduHeader>> {
    let mut magic = [0u8; 2];
    let gz = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(path, e))?
        == 2
        && magic == [0x1f, 0x8b];
    let compression = if gz {
        Compression::Gzip
    } else {
        Compression::None
    };
    let mut meter = Meter::new(&InputLimits::default());
    let mut stream = open_stream(path, compression, ByteCounter::default(), &mut meter)?;
    // A FITS file starts with its SIMPLE card; anything else is refused before more is read.
    let mut first = [0u8; CARD];
    let n = read_full(&mut stream, &mut first).map_err(|e| Error::io(path, e))?;
    if n < CARD || !first.starts_with(b"SIMPLE  =") {
        return Err(Error::format(
            path,
            "not a FITS file (it does not start with a SIMPLE card)",
        ));
    }
    let mut stream = std::io::Cursor::new(first).chain(stream);
    let mut out: Vec<HduHeader> = Vec::new();
    let mut offset = 0u64;
    while let Some((header, blocks)) = read_header_blocks(&mut stream, path)? {
        if out.is_empty() && header.get("SIMPLE") != Some("T") {
            return Err(Error::format(
                path,
                "not a standard FITS file (SIMPLE is not T)",
            ));
        }
        offset += (blocks * BLOCK) as u64;
        let data_bytes = data_bytes(&header, path)?;
        skip(&mut stream, padded(data_bytes), path)?;
        out.push(HduHeader {
            header,
            data_offset: offset,
            data_bytes,
        });
        offset += padded(data_bytes);
    }
    if out.is_empty() {
        return Err(Error::format(path, "empty FITS file"));
    }
    Ok(out)
}

fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn skip(stream: &mut dyn Read, n: u64, path: &Path) -> Result<()> {
    let copied =
        std::io::copy(&mut stream.take(n), &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
    if copied < n {
        return Err(Error::format(
            path,
            "FITS file ends inside a data unit (truncated)",
        ));
    }
    Ok(())
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Bytes of an HDU's data unit before padding.
fn data_bytes(h: &Header, path: &Path) -> Result<u64> {
    let bitpix = h.int("BITPIX", path)?.unsigned_abs();
    let naxis = h.count("NAXIS", MAX_FITS_INDEX, path)?;
    if naxis == 0 {
        return Ok(0);
    }
    let overflow = || Error::format(path, "FITS header declares a data unit too large to exist");
    let mut n: u64 = 1;
    for i in 1..=naxis {
        n = n
            .checked_mul(h.count(&format!("NAXIS{i}"), i64::MAX, path)?)
            .ok_or_else(overflow)?;
    }
    let pcount = h
        .get("PCOUNT")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let gcount = h
        .get("GCOUNT")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    pcount
        .checked_add(n)
        .and_then(|x| x.checked_mul(gcount))
        .and_then(|x| x.checked_mul(bitpix / 8))
        .ok_or_else(overflow)
}

/// How a column's bytes become an Arrow array.
#[derive(Debug, Clone)]
enum Decode {
    Bool,
    U8 {
        zero: i64,
    },
    I16 {
        zero: i64,
    },
    I32 {
        zero: i64,
    },
    I64 {
        zero: i128,
    },
    F32,
    F64,
    /// Integers with a general TSCAL/TZERO: physical = zero + scale * stored, as float64.
    Scaled {
        width: usize,
        scale: f64,
        zero: f64,
    },
    Str,
}

#[derive(Debug, Clone)]
struct Col {
    offset: usize,
    repeat: usize,
    decode: Decode,
    tnull: Option<i64>,
}

pub(crate) struct FitsReader {
    path: PathBuf,
    stream: Box<dyn Read + Send>,
    row_bytes: usize,
    rows_left: u64,
    row_index: u64,
    cols: Vec<Col>,
    file_schema: SchemaRef,
    schema: SchemaRef,
    batch_rows: usize,
    buf: Vec<u8>,
}

/// What follows the bytes read so far in a plain file, or `None` for a compressed one.
fn remaining(path: &Path, compression: Compression, read: u64) -> Option<u64> {
    match compression {
        Compression::None => std::fs::metadata(path)
            .ok()
            .map(|m| m.len().saturating_sub(read)),
        Compression::Gzip => None,
    }
}

impl BatchSource for FitsReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.read_batch()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl FitsReader {
    pub(crate) fn open(
        path: &Path,
        compression: Compression,
        options: &ReadOptions,
        counter: ByteCounter,
        mut meter: Meter,
    ) -> Result<Self> {
        let limits = meter.limits().clone();
        let mut stream = open_stream(path, compression, counter, &mut meter)?;
        let primary = read_header(&mut stream, path)?
            .ok_or_else(|| Error::format(path, "empty FITS file"))?;
        if primary.get("SIMPLE") != Some("T") {
            return Err(Error::format(
                path,
                "not a standard FITS file (SIMPLE is not T)",
            ));
        }
        // Skipping what a header declares reads no more than the file has.
        skip(&mut stream, padded(data_bytes(&primary, path)?), path)?;
        let header = loop {
            let Some(h) = read_header(&mut stream, path)? else {
                return Err(Error::format(
                    path,
                    "no binary table (XTENSION = 'BINTABLE') in this FITS file",
                ));
            };
            if h.get("XTENSION").map(str::trim) == Some("BINTABLE") {
                break h;
            }
            skip(&mut stream, padded(data_bytes(&h, path)?), path)?;
        };
        // Every size the header declares is checked against the file and the limits before
        // anything is allocated for it.
        let row_bytes = header.count("NAXIS1", i64::MAX, path)?;
        let rows = header.count("NAXIS2", i64::MAX, path)?;
        if row_bytes > limits.max_record_bytes {
            return Err(Error::limit(
                path,
                format!(
                    "FITS rows of {row_bytes} bytes (NAXIS1) are longer than the limit of {} bytes",
                    limits.max_record_bytes
                ),
            ));
        }
        let table_bytes = row_bytes.checked_mul(rows).ok_or_else(|| {
            Error::format(
                path,
                "FITS header declares a table (NAXIS1 x NAXIS2) too large to exist",
            )
        })?;
        if let Some(left) = remaining(path, compression, meter.total())
            && table_bytes > left
        {
            return Err(Error::format(
                path,
                format!(
                    "FITS header declares a table of {rows} rows of {row_bytes} bytes \
                     ({table_bytes} bytes) but only {left} bytes follow (truncated or corrupt)"
                ),
            ));
        }
        if let Some(max) = limits.max_data_bytes
            && table_bytes.saturating_add(meter.total()) > max
        {
            return Err(Error::limit(
                path,
                format!(
                    "FITS header declares a table of {table_bytes} bytes ({rows} rows of \
                     {row_bytes} bytes), over the limit of {max} bytes"
                ),
            ));
        }
        let row_bytes = row_bytes as usize;
        let tfields = header.count("TFIELDS", MAX_FITS_INDEX, path)? as usize;
        limits.check_column_count(tfields, path)?;
        let mut cols = Vec::new();
        let mut fields = Vec::new();
        let mut offset = 0usize;
        for i in 1..=tfields {
            let tform = header
                .string(&format!("TFORM{i}"))
                .ok_or_else(|| Error::format(path, format!("FITS column {i} has no TFORM{i}")))?;
            let name = header
                .string(&format!("TTYPE{i}"))
                .unwrap_or_else(|| format!("col{i}"));
            let (repeat, code) = parse_tform(&tform).ok_or_else(|| {
                Error::format(
                    path,
                    format!("column {i} '{name}': cannot parse TFORM{i} = '{tform}'"),
                )
            })?;
            let width = if code == b'X' {
                Some(repeat.div_ceil(8))
            } else {
                repeat.checked_mul(code_width(code))
            };
            let col_offset = offset;
            offset = match width.and_then(|w| offset.checked_add(w)) {
                Some(end) if end <= row_bytes => end,
                _ => {
                    return Err(Error::format(
                        path,
                        format!(
                            "column {i} '{name}' (TFORM{i} = '{tform}') does not fit in rows \
                             of {row_bytes} bytes (NAXIS1)"
                        ),
                    ));
                }
            };
            let scale = header.float(&format!("TSCAL{i}")).unwrap_or(1.0);
            let zero = header.float(&format!("TZERO{i}")).unwrap_or(0.0);
            let tnull = header
                .get(&format!("TNULL{i}"))
                .and_then(|v| v.trim().parse().ok());
            let decode = match (code, scale, zero) {
                (b'L', ..) if repeat == 1 => Decode::Bool,
                (b'A', ..) => Decode::Str,
                (b'E', ..) => Decode::F32,
                (b'D', ..) => Decode::F64,
                (b'B', s, z) if s == 1.0 && (z == 0.0 || z == -128.0) => {
                    Decode::U8 { zero: z as i64 }
                }
                (b'I', s, z) if s == 1.0 && (z == 0.0 || z == 32768.0) => {
                    Decode::I16 { zero: z as i64 }
                }
                (b'J', s, z) if s == 1.0 && (z == 0.0 || z == 2147483648.0) => {
                    Decode::I32 { zero: z as i64 }
                }
                (b'K', s, z) if s == 1.0 && (z == 0.0 || z == 9223372036854775808.0) => {
                    Decode::I64 { zero: z as i128 }
                }
                (b'B' | b'I' | b'J' | b'K', scale, zero) => Decode::Scaled {
                    width: code_width(code),
                    scale,
                    zero,
                },
                _ => {
                    tracing::warn!(file = %path.display(), column = %name, tform = %tform,
                        "skipping FITS column of unsupported type");
                    continue;
                }
            };
            if repeat == 0 {
                continue;
            }
            let scalar = element_type(&decode);
            let data_type = if repeat > 1 && !matches!(decode, Decode::Str) {
                DataType::FixedSizeList(Arc::new(Field::new("item", scalar, true)), repeat as i32)
            } else {
                scalar
            };
            let meta = ColumnMeta {
                unit: header.string(&format!("TUNIT{i}")),
                ucd: header.string(&format!("TUCD{i}")),
                utype: header.string(&format!("TUTYP{i}")),
                description: header
                    .string(&format!("TCOMM{i}"))
                    .or_else(|| header.comment(&format!("TTYPE{i}")).map(str::to_string)),
            };
            fields.push(meta.merge_into(&Field::new(&name, data_type, true)));
            cols.push(Col {
                offset: col_offset,
                repeat,
                decode,
                tnull,
            });
        }
        if offset != row_bytes {
            return Err(Error::format(
                path,
                format!("column widths add up to {offset} bytes but NAXIS1 says {row_bytes}"),
            ));
        }
        let file_schema = Arc::new(Schema::new(fields));
        let schema = apply_override(file_schema.clone(), options.schema.as_ref(), path)?;
        Ok(Self {
            path: path.to_path_buf(),
            stream,
            row_bytes,
            rows_left: rows,
            row_index: 0,
            cols,
            file_schema,
            schema,
            batch_rows: batch_rows_for(options.batch_rows, row_bytes as u64, tfields),
            buf: Vec::new(),
        })
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows_left == 0 {
            return Ok(None);
        }
        let n = (self.batch_rows as u64).min(self.rows_left) as usize;
        // Memory follows the bytes that are there, not what the header promised.
        let want = n * self.row_bytes;
        self.buf.clear();
        let got = (&mut self.stream)
            .take(want as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if got < want {
            return Err(Error::format(
                &self.path,
                format!(
                    "FITS table ends at row {} of {} (truncated)",
                    self.row_index + (got / self.row_bytes.max(1)) as u64 + 1,
                    self.row_index + self.rows_left
                ),
            ));
        }
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter()
            .map(|c| decode_column(c, &self.buf, self.row_bytes, n))
            .collect();
        self.rows_left -= n as u64;
        self.row_index += n as u64;
        let batch = RecordBatch::try_new(self.file_schema.clone(), arrays)?;
        cast_batch(batch, &self.schema, &self.path).map(Some)
    }
}

fn parse_tform(t: &str) -> Option<(usize, u8)> {
    let t = t.trim();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    let code = *t.as_bytes().get(digits.len())?;
    let repeat = if digits.is_empty() {
        1
    } else {
        digits.parse().ok()?
    };
    b"LXBIJKAEDCMPQ".contains(&code).then_some((repeat, code))
}

/// Bytes per element of a TFORM code (X, bits, is handled by the caller).
fn code_width(code: u8) -> usize {
    match code {
        b'L' | b'B' | b'A' => 1,
        b'I' => 2,
        b'J' | b'E' => 4,
        b'K' | b'D' | b'C' | b'P' => 8,
        b'M' | b'Q' => 16,
        _ => 0,
    }
}

fn element_type(d: &Decode) -> DataType {
    match d {
        Decode::Bool => DataType::Boolean,
        Decode::U8 { zero: 0 } => DataType::UInt8,
        Decode::U8 { .. } => DataType::Int8,
        Decode::I16 { zero: 0 } => DataType::Int16,
        Decode::I16 { .. } => DataType::UInt16,
        Decode::I32 { zero: 0 } => DataType::Int32,
        Decode::I32 { .. } => DataType::UInt32,
        Decode::I64 { zero: 0 } => DataType::Int64,
        Decode::I64 { .. } => DataType::UInt64,
        Decode::F32 => DataType::Float32,
        Decode::F64 | Decode::Scaled { .. } => DataType::Float64,
        Decode::Str => DataType::Utf8,
    }
}

fn decode_column(c: &Col, buf: &[u8], row_bytes: usize, rows: usize) -> ArrayRef {
    let elems = if matches!(c.decode, Decode::Str) {
        1
    } else {
        c.repeat
    };
    let n = rows * elems;
    // Byte slice of element k (row r, element e) of this column.
    let at = |k: usize, w: usize| {
        let (r, e) = (k / elems, k % elems);
        let start = r * row_bytes + c.offset + e * w;
        &buf[start..start + w]
    };
    let nulls_from = |raw: &dyn Fn(usize) -> i64| -> Option<NullBuffer> {
        c.tnull
            .map(|t| NullBuffer::from((0..n).map(|k| raw(k) != t).collect::<Vec<bool>>()))
    };
    let values: ArrayRef = match &c.decode {
        Decode::Bool => {
            let valid: Vec<bool> = (0..n).map(|k| at(k, 1)[0] != 0).collect();
            let vals: Vec<bool> = (0..n).map(|k| at(k, 1)[0] == b'T').collect();
            Arc::new(BooleanArray::new(
                vals.into(),
                Some(NullBuffer::from(valid)),
            ))
        }
        Decode::U8 { zero } => {
            let nulls = nulls_from(&|k| at(k, 1)[0] as i64);
            if *zero == 0 {
                Arc::new(UInt8Array::new(
                    (0..n).map(|k| at(k, 1)[0]).collect(),
                    nulls,
                ))
            } else {
                Arc::new(Int8Array::new(
                    (0..n).map(|k| (at(k, 1)[0] ^ 0x80) as i8).collect(),
                    nulls,
                ))
            }
        }
        Decode::I16 { zero } => {
            let raw = |k| i16::from_be_bytes(at(k, 2).try_into().unwrap());
            let nulls = nulls_from(&|k| raw(k) as i64);
            if *zero == 0 {
                Arc::new(Int16Array::new((0..n).map(raw).collect(), nulls))
            } else {
                Arc::new(UInt16Array::new(
                    (0..n).map(|k| (raw(k) as u16) ^ 0x8000).collect(),
                    nulls,
                ))
            }
        }
        Decode::I32 { zero } => {
            let raw = |k| i32::from_be_bytes(at(k, 4).try_into().unwrap());
            let nulls = nulls_from(&|k| raw(k) as i64);
            if *zero == 0 {
                Arc::new(Int32Array::new((0..n).map(raw).collect(), nulls))
            } else {
                Arc::new(UInt32Array::new(
                    (0..n).map(|k| (raw(k) as u32) ^ 0x8000_0000).collect(),
                    nulls,
                ))
            }
        }
        Decode::I64 { zero } => {
            let raw = |k| i64::from_be_bytes(at(k, 8).try_into().unwrap());
            let nulls = nulls_from(&raw);
            if *zero == 0 {
                Arc::new(Int64Array::new((0..n).map(raw).collect(), nulls))
            } else {
                Arc::new(UInt64Array::new(
                    (0..n)
                        .map(|k| (raw(k) as u64) ^ 0x8000_0000_0000_0000)
                        .collect(),
                    nulls,
                ))
            }
        }
        Decode::F32 => Arc::new(Float32Array::from(
            (0..n)
                .map(|k| f32::from_be_bytes(at(k, 4).try_into().unwrap()))
                .collect::<Vec<_>>(),
        )),
        Decode::F64 => Arc::new(Float64Array::from(
            (0..n)
                .map(|k| f64::from_be_bytes(at(k, 8).try_into().unwrap()))
                .collect::<Vec<_>>(),
        )),
        Decode::Scaled { width, scale, zero } => {
            let raw = |k: usize| -> i64 {
                let b = at(k, *width);
                match width {
                    1 => b[0] as i64,
                    2 => i16::from_be_bytes(b.try_into().unwrap()) as i64,
                    4 => i32::from_be_bytes(b.try_into().unwrap()) as i64,
                    _ => i64::from_be_bytes(b.try_into().unwrap()),
                }
            };
            let nulls = nulls_from(&raw);
            Arc::new(Float64Array::new(
                (0..n).map(|k| zero + scale * raw(k) as f64).collect(),
                nulls,
            ))
        }
        Decode::Str => {
            let strings: Vec<Option<String>> = (0..rows)
                .map(|r| {
                    let start = r * row_bytes + c.offset;
                    let bytes = &buf[start..start + c.repeat];
                    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                    Some(
                        String::from_utf8_lossy(&bytes[..end])
                            .trim_end()
                            .to_string(),
                    )
                })
                .collect();
            return Arc::new(StringArray::from(strings));
        }
    };
    if elems > 1 {
        let field = Arc::new(Field::new("item", values.data_type().clone(), true));
        Arc::new(FixedSizeListArray::new(field, elems as i32, values, None))
    } else {
        values
    }
}
