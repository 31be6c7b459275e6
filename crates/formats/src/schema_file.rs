//! Schema override files: column types and metadata given by the data manager.
//!
//! ```toml
//! [[column]]
//! name = "source_id"
//! type = "int64"
//! ucd = "meta.id;meta.main"
//! description = "Gaia DR3 source identifier"
//!
//! [[column]]
//! name = "ra"
//! type = "float64"
//! unit = "deg"
//! ```

use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, Field};

use crate::{ColumnMeta, Error, Result};

/// One column of a schema file.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name as in the input file.
    pub name: String,
    /// Type: bool, int8..int64, uint8..uint64, float32, float64, string.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// VOUnit.
    pub unit: Option<String>,
    /// UCD.
    pub ucd: Option<String>,
    /// utype.
    pub utype: Option<String>,
    /// Description.
    pub description: Option<String>,
}

impl ColumnSpec {
    /// The Arrow type named by `type`, if any.
    pub fn data_type(&self) -> Option<DataType> {
        self.type_name.as_deref().and_then(parse_type)
    }

    fn meta(&self) -> ColumnMeta {
        ColumnMeta {
            unit: self.unit.clone(),
            ucd: self.ucd.clone(),
            utype: self.utype.clone(),
            description: self.description.clone(),
        }
    }

    /// `field` with this spec's type (if given) and metadata.
    pub fn apply(&self, field: &Field) -> Field {
        let f = match self.data_type() {
            Some(t) => field.clone().with_data_type(t),
            None => field.clone(),
        };
        self.meta().merge_into(&f)
    }
}

/// A parsed schema file.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaOverride {
    /// Columns, by name.
    #[serde(rename = "column", default)]
    pub columns: Vec<ColumnSpec>,
    #[serde(skip)]
    source: PathBuf,
}

/// The Arrow type a schema file's type name means (`float64`, `int32`, `string`, ...).
pub fn parse_type(s: &str) -> Option<DataType> {
    Some(match s.to_ascii_lowercase().as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" | "short" => DataType::Int16,
        "int32" | "int" => DataType::Int32,
        "int64" | "long" => DataType::Int64,
        "uint8" | "byte" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" | "real" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "string" | "utf8" | "text" | "char" => DataType::Utf8,
        _ => return None,
    })
}

/// The schema file's name of an Arrow type, when it has one (the inverse of
/// [`parse_type`]).
pub fn type_name(t: &DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Boolean => "bool",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::UInt8 => "uint8",
        DataType::UInt16 => "uint16",
        DataType::UInt32 => "uint32",
        DataType::UInt64 => "uint64",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        _ => return None,
    })
}

impl SchemaOverride {
    /// An override built in code (`origin` names it in error messages).
    pub fn new(columns: Vec<ColumnSpec>, origin: &Path) -> Self {
        Self {
            columns,
            source: origin.to_path_buf(),
        }
    }

    /// Sets the type of `name` unless the override already gives one.
    pub fn force_type(&mut self, name: &str, type_name: &str) {
        match self.columns.iter_mut().find(|c| c.name == name) {
            Some(c) if c.type_name.is_some() => {}
            Some(c) => c.type_name = Some(type_name.into()),
            None => self.columns.push(ColumnSpec {
                name: name.into(),
                type_name: Some(type_name.into()),
                unit: None,
                ucd: None,
                utype: None,
                description: None,
            }),
        }
    }

    /// Reads and validates a TOML schema file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Schema {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut s: SchemaOverride = toml::from_str(&text).map_err(|e| Error::Schema {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        s.source = path.to_path_buf();
        for c in &s.columns {
            if let Some(t) = &c.type_name
                && parse_type(t).is_none()
            {
                return Err(Error::Schema {
                    file: path.to_path_buf(),
                    message: format!(
                        "column '{}': unknown type '{t}' (expected bool, int8..int64, \
                         uint8..uint64, float32, float64 or string)",
                        c.name
                    ),
                });
            }
        }
        Ok(s)
    }

    /// The spec of a column, by exact name.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Fails if the schema file names a column that the input does not have.
    pub fn check_columns<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        input: &Path,
    ) -> Result<()> {
        let names: Vec<&str> = names.collect();
        for c in &self.columns {
            if !names.contains(&c.name.as_str()) {
                return Err(Error::Schema {
                    file: self.source.clone(),
                    message: format!(
                        "column '{}' is not in {} (columns: {})",
                        c.name,
                        input.display(),
                        names.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}
