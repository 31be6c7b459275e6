//! Streaming VOTable 1.4 output: TABLEDATA, BINARY or BINARY2 (base64), with FIELD
//! datatype, arraysize, unit, UCD, utype, xtype and description from the Arrow schema, and
//! DALI's QUERY_STATUS INFO elements (OK before the table, OVERFLOW after it when a row
//! limit cut the result).

use std::io::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, SchemaRef, UInt8Type,
};
use base64::engine::general_purpose::STANDARD;
use base64::write::EncoderWriter;

use super::columns::{
    OutColumn, VoType, doubles, normalise, null_sentinel, out_columns, push_number_be,
};
use crate::Result;

/// VOTable serializations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serialization {
    /// XML rows and cells.
    TableData,
    /// Base64 binary without NULL flags (NULL integers written as their minimum value,
    /// declared as the FIELD's null value).
    Binary,
    /// Base64 binary with a NULL bit per cell (VOTable 1.3+).
    Binary2,
}

enum Body {
    Xml(Box<dyn Write + Send>),
    Base64(Box<EncoderWriter<'static, base64::engine::GeneralPurpose, Box<dyn Write + Send>>>),
}

/// A VOTable document being written.
pub(crate) struct VotableWriter {
    body: Option<Body>,
    columns: Vec<OutColumn>,
    serialization: Serialization,
    row: Vec<u8>,
    text: String,
}

/// XML-escapes text for content and attribute values.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    // Characters XML 1.0 cannot hold at all (controls other than tab and line ends, U+FFFE,
    // U+FFFF) become U+FFFD, so that the document stays well-formed.
    let invalid = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    if s.chars().any(invalid) {
        let clean: String = s
            .chars()
            .map(|c| if invalid(c) { '\u{FFFD}' } else { c })
            .collect();
        return std::borrow::Cow::Owned(quick_xml::escape::escape(&clean).into_owned());
    }
    quick_xml::escape::escape(s)
}

/// The FIELD elements of `columns` (with null sentinels where BINARY needs them).
fn fields_xml(columns: &[OutColumn], serialization: Serialization) -> String {
    let mut h = String::new();
    for c in columns {
        h.push_str(&format!(
            "<FIELD name=\"{}\" datatype=\"{}\"",
            escape(&c.name),
            c.vo.votable()
        ));
        if let Some(id) = &c.xml_id {
            h.push_str(&format!(" ID=\"{}\"", escape(id)));
        }
        match c.vo {
            VoType::Char | VoType::Doubles(None) | VoType::Bytes => h.push_str(" arraysize=\"*\""),
            VoType::Doubles(Some(n)) => h.push_str(&format!(" arraysize=\"{n}\"")),
            _ => {}
        }
        if let Some(x) = &c.xtype {
            h.push_str(&format!(" xtype=\"{x}\""));
        }
        for (k, v) in [
            ("unit", &c.meta.unit),
            ("ucd", &c.meta.ucd),
            ("utype", &c.meta.utype),
        ] {
            if let Some(v) = v {
                h.push_str(&format!(" {k}=\"{}\"", escape(v)));
            }
        }
        h.push('>');
        if let Some(d) = &c.meta.description {
            h.push_str(&format!("<DESCRIPTION>{}</DESCRIPTION>", escape(d)));
        }
        if serialization == Serialization::Binary
            && let Some(n) = null_sentinel(c.vo)
        {
            h.push_str(&format!("<VALUES null=\"{n}\"/>"));
        }
        h.push_str("</FIELD>\n");
    }
    h
}

/// The VOTable that VO-Parquet keeps in the file's `IVOA.VOTable-Parquet.content` key:
/// the table's FIELDs (units, UCDs, descriptions, xtypes) with a PARQUET element in place
/// of DATA.
pub(crate) fn vo_parquet_content(schema: &SchemaRef) -> String {
    let columns = out_columns(schema);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.5\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\">\n\
         <RESOURCE type=\"results\">\n<TABLE>\n{}<PARQUET type=\"Parquet-local-XML\"/>\n\
         </TABLE>\n</RESOURCE>\n</VOTABLE>\n",
        fields_xml(&columns, Serialization::TableData)
    )
}

impl VotableWriter {
    pub(crate) fn new(
        mut out: Box<dyn Write + Send>,
        schema: &SchemaRef,
        serialization: Serialization,
        version: &str,
    ) -> Result<Self> {
        let columns = out_columns(schema);
        let mut h = String::new();
        h.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        // VOTable 1.4 and 1.5 share the v1.3 namespace; what is written here is valid in both.
        h.push_str(&format!(
            "<VOTABLE version=\"{version}\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
        ));
        h.push_str(
            "<RESOURCE type=\"results\">\n<INFO name=\"QUERY_STATUS\" value=\"OK\"/>\n<TABLE>\n",
        );
        h.push_str(&fields_xml(&columns, serialization));
        h.push_str("<DATA>");
        h.push_str(match serialization {
            Serialization::TableData => "<TABLEDATA>\n",
            Serialization::Binary => "<BINARY><STREAM encoding=\"base64\">",
            Serialization::Binary2 => "<BINARY2><STREAM encoding=\"base64\">",
        });
        out.write_all(h.as_bytes())?;
        let body = match serialization {
            Serialization::TableData => Body::Xml(out),
            _ => Body::Base64(Box::new(EncoderWriter::new(out, &STANDARD))),
        };
        Ok(Self {
            body: Some(body),
            columns,
            serialization,
            row: Vec::new(),
            text: String::new(),
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let arrays = normalise(batch, &self.columns)?;
        for i in 0..batch.num_rows() {
            match self.serialization {
                Serialization::TableData => {
                    self.text.clear();
                    self.text.push_str("<TR>");
                    for a in &arrays {
                        text_cell(a, i, &mut self.text);
                    }
                    self.text.push_str("</TR>\n");
                    let text = std::mem::take(&mut self.text);
                    self.writer().write_all(text.as_bytes())?;
                    self.text = text;
                }
                Serialization::Binary | Serialization::Binary2 => {
                    self.row.clear();
                    if self.serialization == Serialization::Binary2 {
                        let mut mask = vec![0u8; arrays.len().div_ceil(8)];
                        for (k, a) in arrays.iter().enumerate() {
                            if a.is_null(i) {
                                mask[k / 8] |= 0x80 >> (k % 8);
                            }
                        }
                        self.row.extend_from_slice(&mask);
                    }
                    for a in &arrays {
                        binary_cell(a, i, &mut self.row);
                    }
                    let row = std::mem::take(&mut self.row);
                    self.writer().write_all(&row)?;
                    self.row = row;
                }
            }
        }
        Ok(())
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self.body.as_mut().expect("writer used after finish") {
            Body::Xml(w) => w,
            Body::Base64(w) => w,
        }
    }

    /// Closes the document; `overflow` adds DALI's OVERFLOW status after the table, and
    /// `resources` (whole RESOURCE elements, such as DataLink service descriptors) follows
    /// the results.
    pub(crate) fn finish(mut self, overflow: bool, resources: &str) -> Result<()> {
        let (mut out, close) = match self.body.take().expect("finished once") {
            Body::Xml(w) => (w, "</TABLEDATA>"),
            Body::Base64(mut w) => (
                w.finish()?,
                if self.serialization == Serialization::Binary {
                    "</STREAM></BINARY>"
                } else {
                    "</STREAM></BINARY2>"
                },
            ),
        };
        out.write_all(close.as_bytes())?;
        out.write_all(b"</DATA>\n</TABLE>\n")?;
        if overflow {
            out.write_all(b"<INFO name=\"QUERY_STATUS\" value=\"OVERFLOW\"/>\n")?;
        }
        out.write_all(b"</RESOURCE>\n")?;
        out.write_all(resources.as_bytes())?;
        out.write_all(b"</VOTABLE>\n")?;
        out.flush()?;
        Ok(())
    }
}

/// A floating value as VOTable text: shortest round-trip digits, NaN, +Inf, -Inf.
pub(crate) fn float_text(x: f64, out: &mut String) {
    use std::fmt::Write as _;
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else if x == 0.0 || (1e-5..1e15).contains(&x.abs()) {
        let _ = write!(out, "{x}");
    } else {
        let _ = write!(out, "{x:e}");
    }
}

fn text_cell(a: &ArrayRef, i: usize, out: &mut String) {
    use std::fmt::Write as _;
    if a.is_null(i) {
        out.push_str("<TD/>");
        return;
    }
    out.push_str("<TD>");
    match a.data_type() {
        arrow::datatypes::DataType::Boolean => {
            out.push(if a.as_boolean().value(i) { 'T' } else { 'F' })
        }
        arrow::datatypes::DataType::UInt8 => {
            let _ = write!(out, "{}", a.as_primitive::<UInt8Type>().value(i));
        }
        arrow::datatypes::DataType::Int16 => {
            let _ = write!(out, "{}", a.as_primitive::<Int16Type>().value(i));
        }
        arrow::datatypes::DataType::Int32 => {
            let _ = write!(out, "{}", a.as_primitive::<Int32Type>().value(i));
        }
        arrow::datatypes::DataType::Int64 => {
            let _ = write!(out, "{}", a.as_primitive::<Int64Type>().value(i));
        }
        arrow::datatypes::DataType::Float32 => {
            let v = a.as_primitive::<Float32Type>().value(i);
            if v.is_finite() && v != 0.0 && !(1e-5..1e15).contains(&v.abs()) {
                let _ = write!(out, "{v:e}");
            } else if v.is_finite() {
                let _ = write!(out, "{v}");
            } else {
                float_text(v as f64, out);
            }
        }
        arrow::datatypes::DataType::Float64 => {
            float_text(a.as_primitive::<Float64Type>().value(i), out)
        }
        arrow::datatypes::DataType::FixedSizeList(..) | arrow::datatypes::DataType::List(_) => {
            for (k, x) in doubles(a, i).iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                float_text(*x, out);
            }
        }
        // An unsignedByte array: its values separated by spaces.
        arrow::datatypes::DataType::Binary => {
            for (k, x) in a.as_binary::<i32>().value(i).iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{x}");
            }
        }
        _ => out.push_str(&escape(a.as_string::<i32>().value(i))),
    }
    out.push_str("</TD>");
}

fn binary_cell(a: &ArrayRef, i: usize, out: &mut Vec<u8>) {
    if push_number_be(a, i, out) {
        return;
    }
    let null = a.is_null(i);
    match a.data_type() {
        arrow::datatypes::DataType::Boolean => out.push(if null {
            b'?'
        } else if a.as_boolean().value(i) {
            b'T'
        } else {
            b'F'
        }),
        arrow::datatypes::DataType::FixedSizeList(_, n) => {
            let v = doubles(a, i);
            for x in v.iter().take(*n as usize) {
                let x = if null { f64::NAN } else { *x };
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
        arrow::datatypes::DataType::List(_) => {
            let v = if null { Vec::new() } else { doubles(a, i) };
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            for x in v {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
        arrow::datatypes::DataType::Binary => {
            let v = if null {
                &[][..]
            } else {
                a.as_binary::<i32>().value(i)
            };
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        _ => {
            let s = if null {
                ""
            } else {
                a.as_string::<i32>().value(i)
            };
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn characters_xml_cannot_hold_are_replaced() {
        assert_eq!(escape("a\u{0}b<\u{1b}"), "a\u{FFFD}b&lt;\u{FFFD}");
        assert_eq!(escape("tab\there\n"), "tab\there\n");
        assert_eq!(escape("plain"), "plain");
    }
}
