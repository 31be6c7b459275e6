//! The plan codecs of a Meridian cluster. Ballista ships logical plans from the client to
//! the scheduler and physical plans from the scheduler to the executors in DataFusion's
//! protobuf form; these codecs add what that form cannot know, and hand everything else
//! to Ballista's own codecs (its shuffle operators above all):
//! - logical: a HATS catalog table ([`HatsTable`]) as the directories of its catalog and
//!   margin, opened again where the plan lands; the cross-match node ([`XMatchNode`]) as
//!   its position expressions, radius and mode;
//! - physical: the cross-match operator through the engine's [`MeridianCodec`].
//!
//! Each message of ours starts with a tag, so a decoder knows what it holds.

use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::logical_plan::from_proto::parse_expr;
use datafusion_proto::logical_plan::to_proto::serialize_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::LogicalExprNode;
use meridian_catalog::{Catalog, Location};
use meridian_engine::MeridianCodec;
use meridian_engine::hats_table::HatsTable;
use meridian_engine::xmatch::{Mode, XMatchNode};
use prost::Message;

const HATS_TAG: &[u8] = b"meridian.HatsTable.v1\0";
const XMATCH_NODE_TAG: &[u8] = b"meridian.XMatchNode.v1\0";
/// Marks the operators of Meridian's own codec (the cross-match and its zones).
const MERIDIAN_EXEC_TAG: &[u8] = b"meridian.exec.v1\0";

fn codec_err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(format!("Meridian cluster codec: {}", msg.into()))
}

/// A HATS table on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct HatsProto {
    /// The main catalog's directory, absolute, or its object-store URL.
    #[prost(string, tag = "1")]
    dir: String,
    /// The margin catalog's directory, absolute, or its object-store URL.
    #[prost(string, optional, tag = "2")]
    margin: Option<String>,
}

/// A cross-match node on the wire (its two inputs travel as the extension's inputs).
#[derive(Clone, PartialEq, prost::Message)]
struct XMatchNodeProto {
    #[prost(message, repeated, tag = "1")]
    left_pos: Vec<LogicalExprNode>,
    #[prost(message, repeated, tag = "2")]
    right_pos: Vec<LogicalExprNode>,
    #[prost(double, tag = "3")]
    radius_deg: f64,
    #[prost(bool, tag = "4")]
    nearest: bool,
    /// Whether the node ends with the pairs' distance ([`XMatchNode::with_distance`]).
    #[prost(bool, tag = "5")]
    distance: bool,
}

/// How another process names a catalog's location: its canonical directory, or the
/// object-store URL (which every process resolves with its own store configuration).
fn absolute(location: &Location) -> Result<String> {
    let Some(p) = location.as_local() else {
        return Ok(location.to_string());
    };
    let p: PathBuf = std::fs::canonicalize(p)
        .map_err(|e| codec_err(format!("catalog directory {}: {e}", p.display())))?;
    p.into_os_string()
        .into_string()
        .map_err(|p| codec_err(format!("catalog directory {p:?} is not UTF-8")))
}

/// Catalog tables a decoding process keeps open (beyond this, it starts afresh).
const OPENED_TABLES: usize = 256;

/// The catalog tables this process has decoded, by location.
fn opened() -> &'static std::sync::Mutex<std::collections::HashMap<String, Arc<HatsTable>>> {
    static OPENED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<HatsTable>>>,
    > = std::sync::OnceLock::new();
    OPENED.get_or_init(Default::default)
}

/// The logical codec of Meridian's clients and scheduler.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        let Some(body) = buf.strip_prefix(XMATCH_NODE_TAG) else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let msg = XMatchNodeProto::decode(body).map_err(|e| codec_err(e.to_string()))?;
        let [left, right] = inputs else {
            return Err(codec_err(format!(
                "a cross-match takes 2 inputs, got {}",
                inputs.len()
            )));
        };
        let pos = |nodes: &[LogicalExprNode]| -> Result<[Expr; 2]> {
            let exprs = nodes
                .iter()
                .map(|n| parse_expr(n, ctx, self).map_err(|e| codec_err(e.to_string())))
                .collect::<Result<Vec<_>>>()?;
            exprs
                .try_into()
                .map_err(|_| codec_err("a position takes 2 expressions"))
        };
        let mode = if msg.nearest {
            Mode::Nearest
        } else {
            Mode::All
        };
        let mut node = XMatchNode::try_new(
            left.clone(),
            right.clone(),
            pos(&msg.left_pos)?,
            pos(&msg.right_pos)?,
            msg.radius_deg,
            mode,
        )?;
        if msg.distance {
            node = node.with_distance()?;
        }
        Ok(Extension {
            node: Arc::new(node),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let Some(x) = node.node.as_any().downcast_ref::<XMatchNode>() else {
            return self.inner.try_encode(node, buf);
        };
        let (left, right, radius_deg, mode) = x.parts();
        let exprs = |pos: &[Expr; 2]| {
            pos.iter()
                .map(|e| serialize_expr(e, self).map_err(|e| codec_err(e.to_string())))
                .collect::<Result<Vec<_>>>()
        };
        let msg = XMatchNodeProto {
            left_pos: exprs(left)?,
            right_pos: exprs(right)?,
            radius_deg,
            nearest: mode == Mode::Nearest,
            distance: x.has_distance(),
        };
        buf.extend_from_slice(XMATCH_NODE_TAG);
        msg.encode(buf).map_err(|e| codec_err(e.to_string()))
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let Some(body) = buf.strip_prefix(HATS_TAG) else {
            return self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let msg = HatsProto::decode(body).map_err(|e| codec_err(e.to_string()))?;
        // A catalog version never changes where it is (a re-ingest writes a new one), so the
        // table, with the partition statistics its first scan read, serves every later
        // query that names it: no footer is read again per query (from an object store,
        // each would be a request).
        let key = format!("{}\n{}", msg.dir, msg.margin.as_deref().unwrap_or(""));
        if let Some(t) = opened().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(t.clone());
        }
        let open = || -> meridian_catalog::Result<Catalog> {
            let margin = msg.margin.as_deref().map(Location::parse).transpose()?;
            Catalog::open_with_margin(&Location::parse(&msg.dir)?, margin.as_ref())
        };
        let catalog = open().map_err(|e| {
            codec_err(format!(
                "table {table_ref}: this process cannot open the catalog at {} ({e}); every \
                 cluster process must reach the catalogs at the same path or object-store URL",
                msg.dir
            ))
        })?;
        let table = Arc::new(HatsTable::new(catalog));
        let mut tables = opened().lock().unwrap_or_else(|p| p.into_inner());
        if tables.len() >= OPENED_TABLES {
            tables.clear();
        }
        tables.insert(key, table.clone());
        Ok(table)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let any: &dyn std::any::Any = node.as_ref();
        let Some(t) = any.downcast_ref::<HatsTable>() else {
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        let catalog = t.catalog();
        let msg = HatsProto {
            dir: absolute(catalog.location())?,
            margin: catalog
                .margin()
                .map(|m| absolute(m.location()))
                .transpose()?,
        };
        buf.extend_from_slice(HATS_TAG);
        msg.encode(buf).map_err(|e| codec_err(e.to_string()))
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// The physical codec of Meridian's scheduler and executors.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.strip_prefix(MERIDIAN_EXEC_TAG) {
            Some(body) => MeridianCodec.try_decode(body, inputs, ctx, proto_converter),
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if meridian_engine::codec::is_meridian_operator(node.as_ref()) {
            buf.extend_from_slice(MERIDIAN_EXEC_TAG);
            return MeridianCodec.try_encode(node, buf, proto_converter);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}

/// Why `plan` cannot be sent to a cluster, if it cannot: it reads a table that only this
/// process holds (an upload, a table of the service's metadata, a user's table in memory).
pub fn check_plan(plan: &LogicalPlan) -> std::result::Result<(), String> {
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        // The plan shown, and what its scans read, are those of this process.
        return Err("EXPLAIN describes the plan of this process".into());
    }
    datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(
        plan,
        &LogicalCodec::default(),
    )
    .map(|_| ())
    .map_err(|e| {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        let mut tables = Vec::new();
        let _ = plan.apply(|p| {
            if let LogicalPlan::TableScan(s) = p {
                tables.push(s.table_name.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        format!(
            "its plan cannot be sent to the cluster ({}; tables read: {})",
            e.strip_backtrace(),
            tables.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{UserDefinedLogicalNodeCore, col, table_scan};

    /// A cross-match node crosses the wire whole: with and without its distance column.
    #[test]
    fn cross_match_nodes_keep_their_distance_column_on_the_wire() {
        let side = |name: &str| {
            let schema = Schema::new(vec![
                Field::new("ra", DataType::Float64, false),
                Field::new("dec", DataType::Float64, false),
            ]);
            table_scan(Some(name), &schema, None)
                .unwrap()
                .build()
                .unwrap()
        };
        let (l, r) = (side("l"), side("r"));
        let pos = |t: &str| [col(format!("{t}.ra")), col(format!("{t}.dec"))];
        let (codec, ctx) = (LogicalCodec::default(), TaskContext::default());
        for distance in [false, true] {
            let mut node = XMatchNode::try_new(
                l.clone(),
                r.clone(),
                pos("l"),
                pos("r"),
                1.0 / 3600.0,
                Mode::All,
            )
            .unwrap();
            if distance {
                node = node.with_distance().unwrap();
            }
            let mut buf = Vec::new();
            let ext = Extension {
                node: Arc::new(node.clone()),
            };
            codec.try_encode(&ext, &mut buf).unwrap();
            let back = codec
                .try_decode(&buf, &[l.clone(), r.clone()], &ctx)
                .unwrap();
            let back = back.node.as_any().downcast_ref::<XMatchNode>().unwrap();
            assert_eq!(back, &node);
            assert_eq!(back.has_distance(), distance);
            assert_eq!(back.schema().fields().len(), 4 + usize::from(distance));
        }
    }
}
