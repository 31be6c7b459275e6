//! The service's table metadata, built once from the catalogs: the one model behind the
//! VOSI table set and the queryable `TAP_SCHEMA` (which describes itself too), so the two
//! never disagree.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use meridian_engine::{Engine, adql_identifier};
use meridian_formats::meta::{DESCRIPTION, UCD};
use meridian_formats::write::vo_fields;

use crate::error::Result;

/// The schema catalogs are listed in. Catalog tables are reached by their bare names (a
/// qualifying `public.` is accepted too).
pub const CATALOG_SCHEMA: &str = "public";

/// One column as TAP_SCHEMA.columns and VOSI describe it.
#[derive(Debug, Clone)]
pub struct ColumnMeta {
    /// Name as written in ADQL (delimited when not a regular identifier).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// VOUnit.
    pub unit: Option<String>,
    /// UCD 1+.
    pub ucd: Option<String>,
    /// Data model utype (ObsCore's, say).
    pub utype: Option<String>,
    /// VOTable datatype.
    pub datatype: String,
    /// VOTable arraysize.
    pub arraysize: Option<String>,
    /// DALI xtype.
    pub xtype: Option<String>,
    /// Shown by default in clients' column pickers.
    pub principal: bool,
    /// Queries constraining it use an index (the HEALPix-sorted position columns).
    pub indexed: bool,
    /// Defined by a standard (the TAP_SCHEMA columns).
    pub std: bool,
}

/// One table.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// Schema it belongs to.
    pub schema: String,
    /// Name as written in ADQL: bare for catalogs, schema-qualified otherwise.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Rows, where known (a catalog's `hats_nrows`): clients use it to warn before a
    /// query reads a whole large table.
    pub nrows: Option<u64>,
    /// Columns in order.
    pub columns: Vec<ColumnMeta>,
    /// Foreign keys: (key id, target table, [(from column, target column)]).
    pub foreign_keys: Vec<ForeignKey>,
}

/// A foreign key of a table.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    /// Identifier in TAP_SCHEMA.keys.
    pub id: String,
    /// The table referred to.
    pub target_table: String,
    /// (column of this table, column of the target).
    pub columns: Vec<(String, String)>,
}

/// TAP_SCHEMA's own foreign keys: (key id, from table, target table, from column, target
/// column).
const TAP_SCHEMA_KEYS: [(&str, &str, &str, &str, &str); 5] = [
    (
        "tables_schema",
        "tables",
        "schemas",
        "schema_name",
        "schema_name",
    ),
    (
        "columns_table",
        "columns",
        "tables",
        "table_name",
        "table_name",
    ),
    ("keys_from", "keys", "tables", "from_table", "table_name"),
    (
        "keys_target",
        "keys",
        "tables",
        "target_table",
        "table_name",
    ),
    ("key_columns_key", "key_columns", "keys", "key_id", "key_id"),
];

/// One schema.
#[derive(Debug, Clone)]
pub struct SchemaMeta {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Its tables.
    pub tables: Vec<TableMeta>,
}

fn columns_of(
    schema: &SchemaRef,
    principal: &dyn Fn(&str) -> bool,
    indexed: &[&str],
) -> Vec<ColumnMeta> {
    vo_fields(schema)
        .into_iter()
        .map(|f| ColumnMeta {
            name: adql_identifier(&f.name),
            principal: principal(&f.name),
            indexed: indexed.contains(&f.name.as_str()),
            std: false,
            description: f.meta.description,
            unit: f.meta.unit,
            ucd: f.meta.ucd,
            utype: f.meta.utype,
            datatype: f.datatype.to_string(),
            arraysize: f.arraysize,
            xtype: f.xtype,
        })
        .collect()
}

fn string(name: &str, description: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
        .with_metadata([(DESCRIPTION.to_string(), description.to_string())].into())
}

fn int(name: &str, description: &str) -> Field {
    Field::new(name, DataType::Int32, true)
        .with_metadata([(DESCRIPTION.to_string(), description.to_string())].into())
}

/// The TAP 1.1 TAP_SCHEMA tables: (name, description, schema).
fn tap_schema_tables() -> Vec<(&'static str, &'static str, SchemaRef)> {
    let s = |fields: Vec<Field>| Arc::new(Schema::new(fields));
    vec![
        (
            "schemas",
            "schemas in this service",
            s(vec![
                string(
                    "schema_name",
                    "schema name for reference to TAP_SCHEMA.schemas",
                    false,
                ),
                string("utype", "lists the utypes of schemas in the tableset", true),
                string("description", "describes schemas in the tableset", true),
                int(
                    "schema_index",
                    "recommended sort order when listing schemas",
                ),
            ]),
        ),
        (
            "tables",
            "tables in this service",
            s(vec![
                string("schema_name", "the schema this table belongs to", false),
                string("table_name", "the fully qualified table name", false),
                string("table_type", "one of: table view", false),
                string("utype", "lists the utype of tables in the tableset", true),
                string("description", "describes tables in the tableset", true),
                int("table_index", "recommended sort order when listing tables"),
                Field::new("nrows", DataType::Int64, true).with_metadata(
                    [(
                        DESCRIPTION.to_string(),
                        "rows in the table, where known (VODataService nrows)".to_string(),
                    )]
                    .into(),
                ),
            ]),
        ),
        (
            "columns",
            "columns in this service",
            s(vec![
                string("table_name", "the table this column belongs to", false),
                string("column_name", "the column name", false),
                string("utype", "lists the utypes of columns in the tableset", true),
                string("ucd", "the UCD of column values", true),
                string("unit", "the unit of column values in VOUnit format", true),
                string("description", "describes the columns in the tableset", true),
                string("datatype", "the ADQL datatype of the column", false),
                string("arraysize", "the VOTable arraysize of the column", true),
                string("xtype", "a DALI or custom extended type annotation", true),
                int("size", "deprecated: use arraysize"),
                int("principal", "a principal column; 1 means 1, 0 means 0"),
                int("indexed", "an indexed column; 1 means 1, 0 means 0"),
                int("std", "a standard column; 1 means 1, 0 means 0"),
                int(
                    "column_index",
                    "recommended sort order when listing columns of a table",
                ),
            ]),
        ),
        (
            "keys",
            "foreign key relationships between tables",
            s(vec![
                string(
                    "key_id",
                    "unique key to join to TAP_SCHEMA.key_columns",
                    false,
                ),
                string("from_table", "the table with the foreign key", false),
                string("target_table", "the table with the primary key", false),
                string("utype", "lists the utype of keys in the tableset", true),
                string("description", "describes keys in the tableset", true),
            ]),
        ),
        (
            "key_columns",
            "columns of the foreign key relationships",
            s(vec![
                string("key_id", "key to join to TAP_SCHEMA.keys", false),
                string("from_column", "column in the from_table", false),
                string("target_column", "column in the target_table", false),
            ]),
        ),
    ]
}

/// The model of `engine`'s catalogs and of TAP_SCHEMA itself.
pub fn model(engine: &Engine) -> Vec<SchemaMeta> {
    let mut catalogs = Vec::new();
    for (name, t) in engine.tables() {
        let c = t.catalog();
        let schema = c.schema();
        let id = meridian_engine::id_column(&schema);
        let (ra, dec) = (c.ra_column().to_string(), c.dec_column().to_string());
        let principal = |col: &str| {
            col == ra
                || col == dec
                || id.as_deref() == Some(col)
                || schema
                    .field_with_name(col)
                    .ok()
                    .and_then(|f| f.metadata().get(UCD))
                    .is_some_and(|u| u.contains("meta.main"))
        };
        let mut indexed = vec![ra.as_str(), dec.as_str()];
        if let Some(h) = c.healpix_column() {
            indexed.push(h);
        }
        catalogs.push(TableMeta {
            schema: CATALOG_SCHEMA.to_string(),
            name: name.to_string(),
            description: c.properties().get("obs_title").map(str::to_string),
            nrows: c
                .properties()
                .get("hats_nrows")
                .and_then(|n| n.parse().ok()),
            columns: columns_of(&schema, &principal, &indexed),
            foreign_keys: match_table_keys(engine, name, c.properties()),
        });
    }
    let tap_schema = tap_schema_tables()
        .into_iter()
        .map(|(name, description, schema)| TableMeta {
            schema: "TAP_SCHEMA".to_string(),
            name: format!("TAP_SCHEMA.{name}"),
            description: Some(description.to_string()),
            nrows: None,
            columns: columns_of(&schema, &|_| true, &[])
                .into_iter()
                // `tables.nrows` is this service's addition to TAP 1.1.
                .map(|c| ColumnMeta {
                    std: c.name != "nrows",
                    ..c
                })
                .collect(),
            foreign_keys: TAP_SCHEMA_KEYS
                .iter()
                .filter(|k| k.1 == name)
                .map(|(id, _, target, from_col, target_col)| ForeignKey {
                    id: format!("TAP_SCHEMA.{id}"),
                    target_table: format!("TAP_SCHEMA.{target}"),
                    columns: vec![(from_col.to_string(), target_col.to_string())],
                })
                .collect(),
        })
        .collect();
    // Tables added to the engine in schemas of their own (ivoa.obscore), TAP_SCHEMA aside.
    let mut extra: std::collections::BTreeMap<String, Vec<TableMeta>> = Default::default();
    for (schema_name, name, provider) in engine.extra_tables() {
        if schema_name.eq_ignore_ascii_case("TAP_SCHEMA") {
            continue;
        }
        let schema = provider.schema();
        extra
            .entry(schema_name.to_string())
            .or_default()
            .push(TableMeta {
                schema: schema_name.to_string(),
                name: format!("{schema_name}.{name}"),
                description: (schema_name == "ivoa" && name == "obscore")
                    .then(|| "ObsCore 1.1: the registered images".to_string()),
                nrows: None,
                columns: columns_of(&schema, &|_| true, &[])
                    .into_iter()
                    .map(|c| ColumnMeta { std: true, ..c })
                    .collect(),
                foreign_keys: Vec::new(),
            });
    }
    let mut schemas = vec![SchemaMeta {
        name: CATALOG_SCHEMA.to_string(),
        description: "Meridian catalogs".to_string(),
        tables: catalogs,
    }];
    for (name, tables) in extra {
        schemas.push(SchemaMeta {
            description: if name == "ivoa" {
                "IVOA data models (ObsCore)".to_string()
            } else {
                String::new()
            },
            name,
            tables,
        });
    }
    schemas.push(SchemaMeta {
        name: "TAP_SCHEMA".to_string(),
        description: "the TAP metadata of this service".to_string(),
        tables: tap_schema,
    });
    schemas
}

/// A precomputed match table's foreign keys: `id1` to its catalog's identifier, `id2` to
/// its reference's, so that clients (TOPCAT, the portal) offer the joins.
fn match_table_keys(
    engine: &Engine,
    name: &str,
    p: &meridian_catalog::properties::Properties,
) -> Vec<ForeignKey> {
    use meridian_engine::match_tables::{CATALOG, CATALOG_ID, REFERENCE, REFERENCE_ID};
    let mut keys = Vec::new();
    for (from, table, column, role) in [
        ("id1", CATALOG, CATALOG_ID, "catalog"),
        ("id2", REFERENCE, REFERENCE_ID, "reference"),
    ] {
        if let (Some(target), Some(column)) = (p.get(table), p.get(column))
            && engine.table(target).is_some()
        {
            keys.push(ForeignKey {
                id: format!("{name}_{role}"),
                target_table: target.to_string(),
                columns: vec![(from.to_string(), column.to_string())],
            });
        }
    }
    keys
}

fn text<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn ints(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<Int32Array>())
}

/// Registers the TAP_SCHEMA tables, filled from `model`, on `engine`.
pub fn register_tap_schema(engine: &mut Engine, model: &[SchemaMeta]) -> Result<()> {
    let tables: Vec<&TableMeta> = model.iter().flat_map(|s| &s.tables).collect();
    let columns: Vec<(&TableMeta, usize, &ColumnMeta)> = tables
        .iter()
        .flat_map(|t| t.columns.iter().enumerate().map(move |(i, c)| (*t, i, c)))
        .collect();
    let keys: Vec<(&TableMeta, &ForeignKey)> = tables
        .iter()
        .flat_map(|t| t.foreign_keys.iter().map(move |k| (*t, k)))
        .collect();
    let key_columns: Vec<(&str, &str, &str)> = keys
        .iter()
        .flat_map(|(_, k)| {
            k.columns
                .iter()
                .map(|(f, t)| (k.id.as_str(), f.as_str(), t.as_str()))
        })
        .collect();
    let data: Vec<(&str, Vec<ArrayRef>)> = vec![
        (
            "schemas",
            vec![
                text(model.iter().map(|s| Some(s.name.as_str()))),
                text(model.iter().map(|_| None)),
                text(model.iter().map(|s| Some(s.description.as_str()))),
                ints(0..model.len() as i32),
            ],
        ),
        (
            "tables",
            vec![
                text(tables.iter().map(|t| Some(t.schema.as_str()))),
                text(tables.iter().map(|t| Some(t.name.as_str()))),
                text(tables.iter().map(|_| Some("table"))),
                text(tables.iter().map(|_| None)),
                text(tables.iter().map(|t| t.description.as_deref())),
                ints(0..tables.len() as i32),
                Arc::new(
                    tables
                        .iter()
                        .map(|t| t.nrows.and_then(|n| i64::try_from(n).ok()))
                        .collect::<arrow::array::Int64Array>(),
                ),
            ],
        ),
        (
            "columns",
            vec![
                text(columns.iter().map(|(t, _, _)| Some(t.name.as_str()))),
                text(columns.iter().map(|(_, _, c)| Some(c.name.as_str()))),
                text(columns.iter().map(|(_, _, c)| c.utype.as_deref())),
                text(columns.iter().map(|(_, _, c)| c.ucd.as_deref())),
                text(columns.iter().map(|(_, _, c)| c.unit.as_deref())),
                text(columns.iter().map(|(_, _, c)| c.description.as_deref())),
                text(columns.iter().map(|(_, _, c)| Some(c.datatype.as_str()))),
                text(columns.iter().map(|(_, _, c)| c.arraysize.as_deref())),
                text(columns.iter().map(|(_, _, c)| c.xtype.as_deref())),
                Arc::new(
                    columns
                        .iter()
                        .map(|(_, _, c)| c.arraysize.as_deref().and_then(|a| a.parse::<i32>().ok()))
                        .collect::<Int32Array>(),
                ),
                ints(columns.iter().map(|(_, _, c)| c.principal as i32)),
                ints(columns.iter().map(|(_, _, c)| c.indexed as i32)),
                ints(columns.iter().map(|(_, _, c)| c.std as i32)),
                ints(columns.iter().map(|(_, i, _)| *i as i32)),
            ],
        ),
        (
            "keys",
            vec![
                text(keys.iter().map(|(_, k)| Some(k.id.as_str()))),
                text(keys.iter().map(|(t, _)| Some(t.name.as_str()))),
                text(keys.iter().map(|(_, k)| Some(k.target_table.as_str()))),
                text(keys.iter().map(|_| None)),
                text(keys.iter().map(|_| None)),
            ],
        ),
        (
            "key_columns",
            vec![
                text(key_columns.iter().map(|(id, _, _)| Some(*id))),
                text(key_columns.iter().map(|(_, f, _)| Some(*f))),
                text(key_columns.iter().map(|(_, _, t)| Some(*t))),
            ],
        ),
    ];
    for ((name, _, schema), (_, arrays)) in tap_schema_tables().into_iter().zip(data) {
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| meridian_engine::Error::Invalid(format!("TAP_SCHEMA.{name}: {e}")))?;
        let table =
            MemTable::try_new(schema, vec![vec![batch]]).map_err(meridian_engine::Error::from)?;
        engine.add_table("TAP_SCHEMA", name, Arc::new(table))?;
    }
    Ok(())
}
