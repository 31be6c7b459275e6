//! How Arrow columns map onto the primitive types VOTable and FITS share: each output
//! column has one [`VoType`], and batches are cast to the Arrow type that holds it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};

use crate::Result;
use crate::meta::ColumnMeta;

/// Column types of the VO formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoType {
    Boolean,
    UnsignedByte,
    Short,
    Int,
    Long,
    Float,
    Double,
    /// Text (UTF-8 bytes); timestamps are ISO 8601 text with xtype "timestamp".
    Char,
    /// Array of doubles, of fixed length or variable (`None`): DALI geometry values.
    Doubles(Option<i32>),
    /// Bytes (a variable-length array of unsignedByte): a FITS cutout, an image stamp.
    Bytes,
}

impl VoType {
    /// The VOTable `datatype`.
    pub(crate) fn votable(self) -> &'static str {
        match self {
            VoType::Boolean => "boolean",
            VoType::UnsignedByte => "unsignedByte",
            VoType::Short => "short",
            VoType::Int => "int",
            VoType::Long => "long",
            VoType::Float => "float",
            VoType::Double => "double",
            VoType::Char => "char",
            VoType::Doubles(_) => "double",
            VoType::Bytes => "unsignedByte",
        }
    }
}

/// The Arrow type a column is cast to before it is written.
pub(crate) fn arrow_type(vo: VoType) -> DataType {
    match vo {
        VoType::Boolean => DataType::Boolean,
        VoType::UnsignedByte => DataType::UInt8,
        VoType::Short => DataType::Int16,
        VoType::Int => DataType::Int32,
        VoType::Long => DataType::Int64,
        VoType::Float => DataType::Float32,
        VoType::Double => DataType::Float64,
        VoType::Char => DataType::Utf8,
        VoType::Bytes => DataType::Binary,
        VoType::Doubles(n) => {
            let item = Arc::new(Field::new("item", DataType::Float64, true));
            match n {
                Some(n) => DataType::FixedSizeList(item, n),
                None => DataType::List(item),
            }
        }
    }
}

/// One output column.
#[derive(Debug, Clone)]
pub(crate) struct OutColumn {
    pub name: String,
    pub vo: VoType,
    /// DALI xtype ("timestamp" for times, "point", "circle", "polygon" from the field).
    pub xtype: Option<String>,
    pub meta: ColumnMeta,
    /// The FIELD's XML ID, if the field's metadata gives one.
    pub xml_id: Option<String>,
}

fn vo_type(t: &DataType) -> (VoType, Option<&'static str>) {
    match t {
        DataType::Boolean => (VoType::Boolean, None),
        DataType::UInt8 => (VoType::UnsignedByte, None),
        DataType::Int8 | DataType::Int16 => (VoType::Short, None),
        DataType::UInt16 | DataType::Int32 => (VoType::Int, None),
        // Unsigned 64-bit values above i64::MAX fail the cast with a clear error.
        DataType::UInt32 | DataType::Int64 | DataType::UInt64 => (VoType::Long, None),
        DataType::Float16 | DataType::Float32 => (VoType::Float, None),
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            (VoType::Double, None)
        }
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            (VoType::Char, Some("timestamp"))
        }
        DataType::FixedSizeList(f, n) if f.data_type().is_numeric() => {
            (VoType::Doubles(Some(*n)), None)
        }
        DataType::List(f) | DataType::LargeList(f) if f.data_type().is_numeric() => {
            (VoType::Doubles(None), None)
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => (VoType::Bytes, None),
        _ => (VoType::Char, None),
    }
}

/// The output columns of a schema.
pub(crate) fn out_columns(schema: &SchemaRef) -> Vec<OutColumn> {
    schema
        .fields()
        .iter()
        .map(|f: &Arc<Field>| {
            let (vo, xtype) = vo_type(f.data_type());
            OutColumn {
                name: f.name().clone(),
                vo,
                xtype: f
                    .metadata()
                    .get("xtype")
                    .cloned()
                    .or(xtype.map(str::to_string)),
                meta: ColumnMeta::of(f),
                xml_id: f.metadata().get(crate::meta::XML_ID).cloned(),
            }
        })
        .collect()
}

/// A batch's columns cast to their output types.
pub(crate) fn normalise(batch: &RecordBatch, columns: &[OutColumn]) -> Result<Vec<ArrayRef>> {
    batch
        .columns()
        .iter()
        .zip(columns)
        .map(|(a, c)| {
            let a = match a.data_type() {
                // Times as ISO 8601 in UTC, without a zone suffix (DALI timestamp).
                DataType::Timestamp(unit, Some(_)) => {
                    arrow::compute::cast(a, &DataType::Timestamp(*unit, None))?
                }
                DataType::Date64 => {
                    arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?
                }
                _ => a.clone(),
            };
            if a.data_type() == &arrow_type(c.vo) {
                Ok(a)
            } else {
                Ok(arrow::compute::cast_with_options(
                    &a,
                    &arrow_type(c.vo),
                    &arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )?)
            }
        })
        .collect()
}

/// The value standing for NULL in integer columns, the same in both binary formats
/// (VOTable BINARY's `VALUES null`, FITS `TNULLn`); BINARY2 writes it under its NULL bit.
pub(crate) fn null_sentinel(vo: VoType) -> Option<i64> {
    match vo {
        VoType::UnsignedByte => Some(255),
        VoType::Short => Some(i16::MIN as i64),
        VoType::Int => Some(i32::MIN as i64),
        VoType::Long => Some(i64::MIN),
        _ => None,
    }
}

/// Appends cell `i` of a numeric column (as normalised) big-endian, as VOTable's binary
/// serializations and FITS both store numbers: NULL integers as [`null_sentinel`], NULL
/// floats as NaN. Returns false, writing nothing, for other types.
pub(crate) fn push_number_be(a: &ArrayRef, i: usize, out: &mut Vec<u8>) -> bool {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, UInt8Type};
    let null = a.is_null(i);
    match a.data_type() {
        DataType::UInt8 => out.push(if null {
            255
        } else {
            a.as_primitive::<UInt8Type>().value(i)
        }),
        DataType::Int16 => {
            let v = a.as_primitive::<Int16Type>();
            out.extend_from_slice(&(if null { i16::MIN } else { v.value(i) }).to_be_bytes())
        }
        DataType::Int32 => {
            let v = a.as_primitive::<Int32Type>();
            out.extend_from_slice(&(if null { i32::MIN } else { v.value(i) }).to_be_bytes())
        }
        DataType::Int64 => {
            let v = a.as_primitive::<Int64Type>();
            out.extend_from_slice(&(if null { i64::MIN } else { v.value(i) }).to_be_bytes())
        }
        DataType::Float32 => {
            let v = a.as_primitive::<Float32Type>();
            out.extend_from_slice(&(if null { f32::NAN } else { v.value(i) }).to_be_bytes())
        }
        DataType::Float64 => {
            let v = a.as_primitive::<Float64Type>();
            out.extend_from_slice(&(if null { f64::NAN } else { v.value(i) }).to_be_bytes())
        }
        _ => return false,
    }
    true
}

/// The values of row `i` of a (fixed-size) list of doubles, as normalised.
pub(crate) fn doubles(a: &ArrayRef, i: usize) -> Vec<f64> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    let values = match a.data_type() {
        DataType::FixedSizeList(..) => a.as_fixed_size_list().value(i),
        _ => a.as_list::<i32>().value(i),
    };
    let v = values.as_primitive::<Float64Type>();
    (0..v.len())
        .map(|k| if v.is_null(k) { f64::NAN } else { v.value(k) })
        .collect()
}

/// The list-of-Float64 type with the same shape as list type `t`.
pub(crate) fn list_of_doubles(t: &DataType) -> DataType {
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    match t {
        DataType::FixedSizeList(_, n) => DataType::FixedSizeList(item, *n),
        _ => DataType::List(item),
    }
}

/// A (fixed-size) list of doubles as DALI text: the values separated by spaces.
pub(crate) fn doubles_as_text(a: &ArrayRef) -> Result<ArrayRef> {
    use arrow::array::{Array, StringArray};
    let s: StringArray = (0..a.len())
        .map(|i| {
            (!a.is_null(i)).then(|| {
                doubles(a, i)
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .collect();
    Ok(Arc::new(s))
}

/// Binary values as lowercase hexadecimal text (for the text formats).
pub(crate) fn bytes_as_hex(a: &ArrayRef) -> Result<ArrayRef> {
    use arrow::array::{Array, AsArray, StringArray};
    use std::fmt::Write as _;
    let a = arrow::compute::cast(a, &DataType::Binary)?;
    let b = a.as_binary::<i32>();
    let s: StringArray = (0..b.len())
        .map(|i| {
            (!b.is_null(i)).then(|| {
                let mut s = String::with_capacity(2 * b.value(i).len());
                for x in b.value(i) {
                    let _ = write!(s, "{x:02x}");
                }
                s
            })
        })
        .collect();
    Ok(Arc::new(s))
}

/// How a column is declared in VOTable (and so in VOSI tables and TAP_SCHEMA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoField {
    /// Column name.
    pub name: String,
    /// VOTable `datatype`.
    pub datatype: &'static str,
    /// VOTable `arraysize` ("*" for text and variable arrays, "2" for a point...).
    pub arraysize: Option<String>,
    /// DALI xtype.
    pub xtype: Option<String>,
    /// Unit, UCD, description.
    pub meta: ColumnMeta,
}

/// The VOTable declaration of every column of `schema`.
pub fn vo_fields(schema: &SchemaRef) -> Vec<VoField> {
    out_columns(schema)
        .into_iter()
        .map(|c| VoField {
            arraysize: match c.vo {
                VoType::Char => Some("*".to_string()),
                VoType::Doubles(Some(n)) => Some(n.to_string()),
                VoType::Doubles(None) | VoType::Bytes => Some("*".to_string()),
                _ => None,
            },
            datatype: c.vo.votable(),
            name: c.name,
            xtype: c.xtype,
            meta: c.meta,
        })
        .collect()
}
