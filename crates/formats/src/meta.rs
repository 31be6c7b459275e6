//! Column metadata kept in Arrow field metadata.

use std::collections::HashMap;

use arrow::datatypes::Field;

/// Field metadata key of the physical unit (VOUnit string, e.g. "deg", "mag").
pub const UNIT: &str = "unit";
/// Field metadata key of the IVOA UCD (e.g. "pos.eq.ra;meta.main").
pub const UCD: &str = "ucd";
/// Field metadata key of the utype.
pub const UTYPE: &str = "utype";
/// Field metadata key of the free-text description.
pub const DESCRIPTION: &str = "description";
/// Field metadata key of the VOTable FIELD's XML `ID`, which a PARAM's `ref` may name (as
/// DataLink service descriptors do).
pub const XML_ID: &str = "votable_id";

/// Descriptive metadata of one column.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnMeta {
    /// VOUnit string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// IVOA UCD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ucd: Option<String>,
    /// utype.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utype: Option<String>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ColumnMeta {
    /// Reads the metadata of an Arrow field.
    pub fn of(field: &Field) -> Self {
        let m = field.metadata();
        let get = |k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            unit: get(UNIT),
            ucd: get(UCD),
            utype: get(UTYPE),
            description: get(DESCRIPTION),
        }
    }

    /// This metadata as an Arrow field metadata map (empty entries left out).
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        for (k, v) in [
            (UNIT, &self.unit),
            (UCD, &self.ucd),
            (UTYPE, &self.utype),
            (DESCRIPTION, &self.description),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.trim().is_empty()) {
                m.insert(k.to_string(), v.trim().to_string());
            }
        }
        m
    }

    /// `field` with this metadata merged over its own (non-empty entries win).
    pub fn merge_into(&self, field: &Field) -> Field {
        let mut m = field.metadata().clone();
        m.extend(self.to_map());
        field.clone().with_metadata(m)
    }
}
