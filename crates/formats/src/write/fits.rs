//! FITS binary table output. A FITS header states the row count and every string column's
//! width before the first row, so rows are spooled to a file on disk (memory stays
//! constant) and written out after the header at the end. When every column's width is
//! known from the schema (numbers, booleans, fixed-size arrays), rows are encoded as they
//! come and spooled as FITS bytes; otherwise batches are spooled as Arrow IPC while the
//! widths are measured, and encoded at the end. Rows are encoded column by column into a
//! row-major buffer, one typed loop per column.
//!
//! Columns: L (logical), B, I, J, K (with TNULLn for NULL), E, D (NaN for NULL), nA (text
//! and ISO 8601 times; NULL as blanks). TUNITn carries units; TUCDn and TCOMMn carry UCDs
//! and descriptions, as STILTS writes them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema, SchemaRef,
    UInt8Type,
};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use super::columns::{OutColumn, VoType, doubles, normalise, null_sentinel, out_columns};
use crate::Result;

const BLOCK: usize = 2880;

/// A FITS file being spooled.
pub(crate) struct FitsWriter {
    out: Box<dyn Write + Send>,
    columns: Vec<OutColumn>,
    /// Widths of the variable-width columns (characters, values or bytes), measured.
    widths: Vec<usize>,
    spool: Spool,
    spool_file: tempfile::NamedTempFile,
    /// A batch's rows, encoded (reused).
    rows_buf: Vec<u8>,
    rows: u64,
}

enum Spool {
    /// Every width known from the schema (`bytes`, per column): rows spooled as FITS bytes.
    Rows {
        file: BufWriter<File>,
        bytes: Vec<usize>,
    },
    /// Some widths measured from the values: batches spooled as Arrow IPC.
    Batches(Box<FileWriter<BufWriter<File>>>),
}

/// A column's TFORMn and its width in bytes; `width` is the measured width of a
/// variable-width column (characters, values or bytes), unused for the others.
fn tform(vo: VoType, width: usize) -> (String, usize) {
    match vo {
        VoType::Boolean => ("L".into(), 1),
        VoType::UnsignedByte => ("B".into(), 1),
        VoType::Short => ("I".into(), 2),
        VoType::Int => ("J".into(), 4),
        VoType::Long => ("K".into(), 8),
        VoType::Float => ("E".into(), 4),
        VoType::Double => ("D".into(), 8),
        VoType::Char => (format!("{width}A"), width),
        VoType::Doubles(Some(n)) => (format!("{n}D"), 8 * n as usize),
        VoType::Doubles(None) => (format!("{width}D"), 8 * width),
        VoType::Bytes => (format!("{width}B"), width),
    }
}

/// Whether a column's width in bytes follows from its type alone.
fn fixed_width(vo: VoType) -> bool {
    !matches!(vo, VoType::Char | VoType::Doubles(None) | VoType::Bytes)
}

/// One 80-character header card.
fn card(key: &str, value: &str, comment: &str) -> String {
    let mut c = if value.is_empty() {
        format!("{key:<8}")
    } else {
        format!("{key:<8}= {value:>20}")
    };
    if !comment.is_empty() {
        c.push_str(" / ");
        c.push_str(comment);
    }
    let mut c: String = c
        .chars()
        .filter(|ch| ch.is_ascii() && !ch.is_ascii_control())
        .collect();
    c.truncate(80);
    format!("{c:<80}")
}

/// A FITS string value: quoted, quotes doubled, at most 68 characters.
fn string(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(60)
        .collect();
    format!("'{:<8}'", clean.replace('\'', "''"))
}

fn string_card(key: &str, s: &str) -> String {
    // String values start in column 11 and are left-aligned.
    let mut c = format!("{key:<8}= {}", string(s));
    c.truncate(80);
    format!("{c:<80}")
}

impl FitsWriter {
    pub(crate) fn new(out: Box<dyn Write + Send>, schema: &SchemaRef) -> Result<Self> {
        let columns = out_columns(schema);
        let spool_schema = Schema::new(
            columns
                .iter()
                .map(|c| {
                    arrow::datatypes::Field::new(&c.name, super::columns::arrow_type(c.vo), true)
                })
                .collect::<Vec<_>>(),
        );
        let spool_file = tempfile::NamedTempFile::new()?;
        let file = BufWriter::with_capacity(1 << 20, spool_file.reopen()?);
        let spool = if columns.iter().all(|c| fixed_width(c.vo)) {
            Spool::Rows {
                file,
                bytes: columns.iter().map(|c| tform(c.vo, 0).1).collect(),
            }
        } else {
            Spool::Batches(Box::new(FileWriter::try_new(file, &spool_schema)?))
        };
        Ok(Self {
            out,
            widths: vec![1; columns.len()],
            columns,
            spool,
            spool_file,
            rows_buf: Vec::new(),
            rows: 0,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let arrays = normalise(batch, &self.columns)?;
        self.rows += batch.num_rows() as u64;
        if let Spool::Rows { file, bytes } = &mut self.spool {
            encode_rows(&arrays, &self.widths, bytes, &mut self.rows_buf);
            file.write_all(&self.rows_buf)?;
            return Ok(());
        }
        for (k, a) in arrays.iter().enumerate() {
            let widest = match self.columns[k].vo {
                VoType::Char => a.as_string::<i32>().iter().flatten().map(str::len).max(),
                VoType::Doubles(None) => {
                    let l = a.as_list::<i32>();
                    (0..l.len()).map(|i| l.value_length(i) as usize).max()
                }
                VoType::Bytes => a.as_binary::<i32>().iter().flatten().map(<[u8]>::len).max(),
                _ => None,
            };
            self.widths[k] = self.widths[k].max(widest.unwrap_or(0));
        }
        if let Spool::Batches(spool) = &mut self.spool {
            let b = RecordBatch::try_new(spool.schema().clone(), arrays)?;
            spool.write(&b)?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        let spooled_rows = match &mut self.spool {
            Spool::Rows { file, .. } => {
                file.flush()?;
                true
            }
            Spool::Batches(spool) => {
                spool.finish()?;
                false
            }
        };
        let h = [
            card("SIMPLE", "T", "conforms to FITS"),
            card("BITPIX", "8", ""),
            card("NAXIS", "0", ""),
            card("EXTEND", "T", ""),
            card("END", "", ""),
        ];
        write_header(&mut self.out, &h)?;
        let forms: Vec<(String, usize)> = (self.columns.iter().zip(&self.widths))
            .map(|(c, &w)| tform(c.vo, w))
            .collect();
        let row_bytes: usize = forms.iter().map(|f| f.1).sum();
        let mut h = vec![
            string_card("XTENSION", "BINTABLE"),
            card("BITPIX", "8", ""),
            card("NAXIS", "2", ""),
            card("NAXIS1", &row_bytes.to_string(), "bytes per row"),
            card("NAXIS2", &self.rows.to_string(), "rows"),
            card("PCOUNT", "0", ""),
            card("GCOUNT", "1", ""),
            card("TFIELDS", &self.columns.len().to_string(), ""),
        ];
        for (k, c) in self.columns.iter().enumerate() {
            let n = k + 1;
            h.push(string_card(&format!("TTYPE{n}"), &c.name));
            h.push(string_card(&format!("TFORM{n}"), &forms[k].0));
            if let Some(u) = &c.meta.unit {
                h.push(string_card(&format!("TUNIT{n}"), u));
            }
            if let Some(t) = null_sentinel(c.vo) {
                h.push(card(&format!("TNULL{n}"), &t.to_string(), ""));
            }
            if let Some(x) = &c.xtype {
                h.push(string_card(&format!("TXTYP{n}"), x));
            }
            if let Some(u) = &c.meta.ucd {
                h.push(string_card(&format!("TUCD{n}"), u));
            }
            if let Some(d) = &c.meta.description {
                h.push(string_card(&format!("TCOMM{n}"), d));
            }
        }
        h.push(card("END", "", ""));
        write_header(&mut self.out, &h)?;
        let written = if spooled_rows {
            std::io::copy(&mut self.spool_file.reopen()?, &mut self.out)? as usize
        } else {
            let reader = FileReader::try_new(BufReader::new(self.spool_file.reopen()?), None)?;
            let widths: Vec<usize> = forms.iter().map(|f| f.1).collect();
            let mut written = 0usize;
            for batch in reader {
                encode_rows(batch?.columns(), &self.widths, &widths, &mut self.rows_buf);
                self.out.write_all(&self.rows_buf)?;
                written += self.rows_buf.len();
            }
            written
        };
        let pad = (BLOCK - written % BLOCK) % BLOCK;
        self.out.write_all(&vec![0u8; pad])?;
        self.out.flush()?;
        Ok(())
    }
}

fn write_header(out: &mut dyn Write, cards: &[String]) -> Result<()> {
    let mut bytes: Vec<u8> = cards.concat().into_bytes();
    bytes.resize(bytes.len().div_ceil(BLOCK) * BLOCK, b' ');
    out.write_all(&bytes)?;
    Ok(())
}

/// Encodes the rows of `arrays` into `buf`, row-major, column by column: `widths` are the
/// measured widths of the variable-width columns, `bytes` every column's width in bytes.
fn encode_rows(arrays: &[ArrayRef], widths: &[usize], bytes: &[usize], buf: &mut Vec<u8>) {
    let row_bytes: usize = bytes.iter().sum();
    let n = arrays.first().map_or(0, |a| a.len());
    buf.clear();
    buf.resize(n * row_bytes, 0);
    if row_bytes == 0 {
        return;
    }
    let mut offset = 0;
    let mut cell_buf = Vec::new();
    for (k, a) in arrays.iter().enumerate() {
        let rows = buf.chunks_exact_mut(row_bytes);
        match a.data_type() {
            DataType::UInt8 => column::<UInt8Type, 1>(a, u8::MAX, offset, rows, u8::to_be_bytes),
            DataType::Int16 => column::<Int16Type, 2>(a, i16::MIN, offset, rows, i16::to_be_bytes),
            DataType::Int32 => column::<Int32Type, 4>(a, i32::MIN, offset, rows, i32::to_be_bytes),
            DataType::Int64 => column::<Int64Type, 8>(a, i64::MIN, offset, rows, i64::to_be_bytes),
            DataType::Float32 => {
                column::<Float32Type, 4>(a, f32::NAN, offset, rows, f32::to_be_bytes)
            }
            DataType::Float64 => {
                column::<Float64Type, 8>(a, f64::NAN, offset, rows, f64::to_be_bytes)
            }
            _ => {
                for (i, row) in rows.enumerate() {
                    cell_buf.clear();
                    cell(a, i, widths[k], &mut cell_buf);
                    row[offset..offset + bytes[k]].copy_from_slice(&cell_buf);
                }
            }
        }
        offset += bytes[k];
    }
}

/// One numeric column into its place in every row (`null`: the value standing for NULL).
fn column<'a, T: ArrowPrimitiveType, const N: usize>(
    a: &ArrayRef,
    null: T::Native,
    offset: usize,
    rows: impl Iterator<Item = &'a mut [u8]>,
    be: fn(T::Native) -> [u8; N],
) {
    let v = a.as_primitive::<T>();
    let values = v.values();
    if v.null_count() == 0 {
        for (row, x) in rows.zip(values.iter()) {
            row[offset..offset + N].copy_from_slice(&be(*x));
        }
    } else {
        for (i, (row, x)) in rows.zip(values.iter()).enumerate() {
            let x = if v.is_null(i) { null } else { *x };
            row[offset..offset + N].copy_from_slice(&be(x));
        }
    }
}

/// Row `i` of a column that is not a number (numbers go through [`column`]).
fn cell(a: &ArrayRef, i: usize, width: usize, out: &mut Vec<u8>) {
    let null = a.is_null(i);
    match a.data_type() {
        DataType::Boolean => out.push(if null {
            0
        } else if a.as_boolean().value(i) {
            b'T'
        } else {
            b'F'
        }),
        DataType::FixedSizeList(..) | DataType::List(_) => {
            // Variable-length arrays are padded with NaN to the column's widest row.
            let v = if null { Vec::new() } else { doubles(a, i) };
            let n = match a.data_type() {
                DataType::FixedSizeList(_, n) => *n as usize,
                _ => width,
            };
            for k in 0..n {
                out.extend_from_slice(&v.get(k).copied().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        // Bytes padded with zeros to the column's widest row.
        DataType::Binary => {
            let s = if null {
                &[][..]
            } else {
                a.as_binary::<i32>().value(i)
            };
            out.extend_from_slice(s);
            out.extend(std::iter::repeat_n(0u8, width - s.len()));
        }
        _ => {
            let s = if null {
                &[][..]
            } else {
                a.as_string::<i32>().value(i).as_bytes()
            };
            out.extend_from_slice(s);
            out.extend(std::iter::repeat_n(b' ', width - s.len()));
        }
    }
}
